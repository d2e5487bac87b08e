/*
 * Loading the settings: defaults, then the config file, the environment and the flags, validated
 * whole. Every problem names the setting, the value (secrets redacted) and what is allowed, and
 * stops start-up (exit 78, EX_CONFIG): a wrong reply text or listener found at start-up costs
 * nothing, found in production it costs mail.
 */
import fs from 'node:fs';
import convict from 'convict';
import './formats.js';
import { describeSettings, fullSchema, type Settings } from './schema.js';
import { redactText } from './redact.js';

export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  /** log.file and log.level as far as they could be read: a daemon logs there why it did not start. */
  constructor(message: string, readonly log?: { file: string; level: string }) {
    super(message);
  }
}

/*
 * OVERQUOTA_ variables that are legitimate without naming a setting: the config file, and those of
 * the project's own scripts (bench/, test/helpers/sendmail.ts, scripts/install-deps.sh), which
 * reach the daemons they start. Any other is refused: a misspelt variable must not be ignored.
 */
const OTHER_VARIABLES = new Set(['OVERQUOTA_CONFIG', 'OVERQUOTA_BENCH_RESULTS', 'OVERQUOTA_SENDMAIL_CACHE', 'OVERQUOTA_POLICY_RC_D']);

/**
 * Loads defaults, then the file, env and flags, and validates. Throws ConfigError with every problem.
 * @param args setting flags as --path.of.setting VALUE pairs (what parseArgs hands over).
 */
export function loadSettings(opts: { file?: string; env?: NodeJS.ProcessEnv; args?: string[] } = {}): Settings {
  const env = opts.env ?? process.env;
  const variables = new Set(describeSettings().map((s) => s.env));
  const unknown = Object.keys(env).filter((name) => name.startsWith('OVERQUOTA_') && !variables.has(name) && !OTHER_VARIABLES.has(name));
  if (unknown.length > 0) {
    throw new ConfigError(unknown.map((name) => `${name}: names no setting (overquota frontend --help lists every setting's variable)`).join('\n'));
  }
  // The few calls used, typed plainly (convict's own types for a schema this size exceed tsc's depth).
  let config: { load(values: object): void; set(path: string, value: string): void; validate(o: { allowed: 'strict' }): void; getProperties(): unknown } | undefined;
  try {
    config = convict(fullSchema as any, { env, args: [] }) as unknown as NonNullable<typeof config>;
    const file = opts.file ?? env.OVERQUOTA_CONFIG;
    // load() applies the environment again over the file, as loadFile() would.
    if (file) config.load(readConfigFile(file));
    // Set here rather than handed to convict as args: its argument parser turns "1e3" into 1000
    // and "0x10" into 16 before any format sees them.
    for (const [path, value] of settingPairs(opts.args ?? [])) config.set(path, value);
    config.validate({ allowed: 'strict' });
  } catch (err) {
    const read = config?.getProperties() as { log?: { file?: unknown; level?: unknown } } | undefined;
    const log = read?.log ? { file: String(read.log.file ?? ''), level: String(read.log.level ?? 'info') } : undefined;
    throw new ConfigError(redactText((err as Error).message), log);
  }
  return config.getProperties() as Settings;
}

function settingPairs(words: string[]): [string, string][] {
  const paths = new Set(describeSettings().map((s) => s.path));
  const pairs: [string, string][] = [];
  for (let i = 0; i < words.length; i += 2) {
    const path = words[i]!.replace(/^--/, '');
    const value = words[i + 1];
    if (!paths.has(path) || value === undefined) throw new Error(`"${words[i]}": not a --path.of.setting VALUE pair`);
    pairs.push([path, value]);
  }
  return pairs;
}

/** The config file as an object; a syntax error named by file, line and column. */
function readConfigFile(file: string): object {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`config file ${file}: cannot be read: ${(err as Error).message}`);
  }
  text = blankComments(text);
  if (text.trim() === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // V8's message is not repeated: it quotes the text around the error, secrets included.
    const { line, column, found } = whereJsonFails(text);
    throw new Error(`config file ${file}, line ${line}, column ${column}: not valid JSON (unexpected ${found})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error(`config file ${file}: must hold one JSON object, such as {"log": {"level": "info"}}`);
  }
  return parsed;
}

/**
 * JSON with comments, as the packaged /etc/overquota files are written (every setting commented
 * with its doc): `// ...` to the end of the line and `/* ... *\/` outside strings become spaces, so
 * a syntax error's line and column stay those of the file. An unclosed block comment runs to the end.
 */
export function blankComments(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"' && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === '/' && text[i + 1] === '/') {
      const end = text.indexOf('\n', i);
      const stop = end === -1 ? text.length : end;
      out += ' '.repeat(stop - i);
      i = stop;
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      const stop = end === -1 ? text.length : end + 2;
      out += text.slice(i, stop).replace(/[^\n]/g, ' ');
      i = stop;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/**
 * Where JSON.parse first gives up on text. V8 names a position for most errors but not all
 * ("Unexpected token 'x', ... is not valid JSON"), so: the shortest prefix that fails before
 * its own end ends at the culprit (a prefix of good JSON fails only at its end), found by halving.
 */
function whereJsonFails(text: string): { line: number; column: number; found: string } {
  const failsBeforeEnd = (length: number): boolean => {
    try {
      JSON.parse(text.slice(0, length));
      return false;
    } catch (err) {
      const message = (err as Error).message;
      const position = /at position (\d+)/.exec(message);
      if (position) return Number(position[1]) < length;
      return !message.includes('Unexpected end of JSON input');
    }
  };
  let low = 1;
  let high = text.length + 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (failsBeforeEnd(middle)) high = middle;
    else low = middle + 1;
  }
  const offset = low - 1;
  const before = text.slice(0, offset).split('\n');
  return {
    line: before.length,
    column: before[before.length - 1]!.length + 1,
    found: offset < text.length ? JSON.stringify(text[offset]) : 'end of file',
  };
}
