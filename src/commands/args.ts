/*
 * Command-line words -> our own flags, positional words, and the setting flags handed to convict.
 * A flag that is neither ours nor a setting is an error: a typo must not be silently ignored.
 */
import { describeSettings } from '../config/schema.js';
import { readBoolean } from '../config/formats.js';

export interface ParsedArgs {
  positional: string[];
  /** Our own flags (--config, --stdio, --size, --json, --help, --version): name -> value or true. */
  flags: Map<string, string | true>;
  /** Words for convict: --setting.path value pairs. */
  settingArgs: string[];
}

export class UsageError extends Error {}

/** --NAME alone is on; --NAME=VALUE reads VALUE as a boolean setting does; anything else a usage error. */
export function booleanValue(name: string, inline: string | undefined): boolean {
  const value = inline === undefined ? true : readBoolean(inline);
  if (value === null) throw new UsageError(`--${name}=${inline}: expected true or false (also yes/no, on/off, 1/0)`);
  return value;
}

/** Whether a boolean flag is on in these words, before (and whatever) the full parse says. */
export function flagIsOn(words: string[], name: string): boolean {
  const on = words.filter((w) => w === `--${name}` || w.startsWith(`--${name}=`)).map((w) => {
    const eq = w.indexOf('=');
    return eq === -1 || readBoolean(w.slice(eq + 1)) === true;
  });
  return on.length > 0 && on[on.length - 1]!;
}

export function parseArgs(words: string[], own: { boolean: string[]; valued: string[] }): ParsedArgs {
  const settings = new Set(describeSettings().map((s) => s.path));
  const out: ParsedArgs = { positional: [], flags: new Map(), settingArgs: [] };
  /** A setting given twice: the last one wins, as in most commands (lists are comma-separated). */
  const given = new Map<string, string>();
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (!word.startsWith('--') || word === '--') {
      if (word === '-h') out.flags.set('help', true);
      else out.positional.push(word);
      continue;
    }
    const eq = word.indexOf('=');
    const name = word.slice(2, eq === -1 ? undefined : eq);
    const inline = eq === -1 ? undefined : word.slice(eq + 1);
    const takeValue = (): string => {
      if (inline !== undefined) return inline;
      const next = words[++i];
      if (next === undefined) throw new UsageError(`--${name} needs a value`);
      return next;
    };
    if (own.boolean.includes(name)) {
      if (booleanValue(name, inline)) out.flags.set(name, true);
      else out.flags.delete(name);
    }
    else if (own.valued.includes(name)) out.flags.set(name, takeValue());
    else if (settings.has(name)) given.set(name, takeValue());
    else throw new UsageError(`unknown option --${name} (settings are --path.of.setting VALUE; see --help)`);
  }
  for (const [name, value] of given) out.settingArgs.push(`--${name}`, value);
  return out;
}
