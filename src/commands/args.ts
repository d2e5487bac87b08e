/*
 * Command-line words -> our own flags, positional words, and the setting flags handed to the
 * loader, with Node's util.parseArgs. A flag that is neither ours nor a setting is an error: a
 * typo must not be silently ignored.
 *
 * Two things util.parseArgs does not do, done here first: our boolean flags take the same
 * spellings as boolean settings (--stdio=false, --json=no; the last one given wins), and a value
 * may start with a dash (--recipient.delimiter -), which util.parseArgs refuses as ambiguous
 * unless it is written --name=value: pairs are joined that way before it reads them. And a word
 * that is not a --flag is a positional word, whatever it starts with: `overquota notify -100 alice`
 * (Dovecot's quota_warning passes -100) is not a cluster of short options.
 */
import { parseArgs as parseWords } from 'node:util';
import { describeSettings } from '../config/schema.js';
import { readBoolean } from '../config/formats.js';

export interface ParsedArgs {
  positional: string[];
  /** Our own flags (--config, --stdio, --size, --json, --help, --version): name -> value or true. */
  flags: Map<string, string | true>;
  /** Words for the loader: --setting.path value pairs. */
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
  const settings = describeSettings().map((s) => s.path);
  const flags = new Map<string, string | true>();
  const rest: string[] = [];
  const positional: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    const eq = word.indexOf('=');
    const name = word.startsWith('--') ? word.slice(2, eq === -1 ? undefined : eq) : '';
    if (word === '-h') flags.set('help', true);
    else if (own.boolean.includes(name)) {
      if (booleanValue(name, eq === -1 ? undefined : word.slice(eq + 1))) flags.set(name, true);
      else flags.delete(name);
    } else if (eq === -1 && name !== '' && i + 1 < words.length && (own.valued.includes(name) || settings.includes(name))) {
      rest.push(`${word}=${words[++i]}`);
    } else if (word.startsWith('--') && word !== '--') rest.push(word);
    else positional.push(word);
  }
  const options = Object.fromEntries([...own.valued, ...settings].map((n) => [n, { type: 'string' as const }]));
  let parsed;
  try {
    parsed = parseWords({ args: rest, options, strict: true, allowPositionals: false });
  } catch (err) {
    const code = (err as { code?: string }).code;
    const unknown = /'(-{1,2}[^' ]+)/.exec((err as Error).message)?.[1];
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown option ${unknown} (settings are --path.of.setting VALUE; see --help)`);
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(`${unknown ?? 'an option'} needs a value`);
    throw new UsageError((err as Error).message);
  }
  const settingArgs: string[] = [];
  for (const [name, value] of Object.entries(parsed.values)) {
    if (typeof value !== 'string') continue;
    if (own.valued.includes(name)) flags.set(name, value);
    else settingArgs.push(`--${name}`, value);
  }
  return { positional, flags, settingArgs };
}
