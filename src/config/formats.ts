/*
 * The formats of the settings, registered with convict once: durations, sizes, booleans and
 * counts read strictly, listeners, reply texts, URL templates, the backend table. Each says what it
 * accepts in words an operator can act on; junk never becomes a value by being cut or guessed.
 * It holds the one parser of each spelling (parseBytes also reads the limits file's sizes).
 */
import convict from 'convict';
import { groupId, parseListenAddress } from './listen.js';
import { replyProblem } from './reply-text.js';

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const UNIT_SHIFT: Record<string, bigint> = { '': 0n, K: 10n, M: 20n, G: 30n, T: 40n };
const SIZE = /^(\d{1,20})\s*([KMGT]?)(?:(?<=[KMGT])i?B|B)?$/i;

/** "2s", "500ms", "5m"; a bare number is milliseconds. */
export function parseDuration(v: unknown): number | null {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : null;
  const m = /^\s*(\d+)\s*(ms|s|m|h|d)?\s*$/.exec(String(v));
  return m ? Number(m[1]) * UNITS_MS[m[2] ?? 'ms']! : null;
}

/**
 * Bytes for "1024", "200K", "200M", "200MiB", "200MB", "1G", "2T": binary multiples, any case, as
 * Dovecot and Courier count them; null for fractions, negatives, unknown units and anything past
 * 2^53. The one size parser: settings and the limits file (stores/limits.ts) read sizes alike.
 */
export function parseBytes(v: unknown): number | null {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : null;
  const m = SIZE.exec(String(v).trim());
  if (!m) return null;
  const value = BigInt(m[1]!) << UNIT_SHIFT[m[2]!.toUpperCase()]!;
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(value);
}

/*
 * Operators' spellings, read strictly. convict's own Boolean reads everything but "false" as true
 * (OVERQUOTA_DRY_RUN=0 turned dry run ON) and its 'nat' and 'int' use parseInt, which cuts "10k"
 * to 10, "1e3" to 1 and "12.7" to 12. The three formats below replace them under the same names,
 * so every setting of those formats (also one added later) reads strictly; junk stays a string
 * and fails validation, naming the setting. Counts are plain whole numbers; sizes and durations
 * have their own formats with suffixes (bytes, duration).
 */
const TRUE_WORDS = ['true', 'yes', 'on', '1'];
const FALSE_WORDS = ['false', 'no', 'off', '0'];
const BOOLEAN_RULE = 'must be true or false (also yes/no, on/off, 1/0)';

/** true/yes/on/1 and false/no/off/0, any case; anything else is null. */
export function readBoolean(text: string): boolean | null {
  const word = text.trim().toLowerCase();
  if (TRUE_WORDS.includes(word)) return true;
  if (FALSE_WORDS.includes(word)) return false;
  return null;
}

convict.addFormat({
  // Also the coercion of schema entries declared `format: Boolean` (convict looks it up by this name).
  name: 'boolean',
  coerce: (v: string) => readBoolean(v) ?? v,
  validate(v: unknown) {
    if (typeof v !== 'boolean') throw new Error(BOOLEAN_RULE);
  },
});
for (const [name, signed] of [['nat', false], ['int', true]] as const) {
  const digits = signed ? /^\s*-?\d+\s*$/ : /^\s*\d+\s*$/;
  convict.addFormat({
    name,
    coerce: (v: string) => (digits.test(v) ? Number(v) : v),
    validate(v: unknown) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || (!signed && v < 0)) {
        throw new Error(`must be a whole number such as 100000 (digits only: no suffix, ${signed ? '' : 'sign, '}decimals or exponent)`);
      }
    },
  });
}

convict.addFormat({
  name: 'duration',
  coerce: (v: string) => parseDuration(v) ?? v,
  validate(v: unknown) {
    if (typeof v !== 'number' || parseDuration(v) === null) throw new Error('must be a duration such as 500ms, 2s, 5m (a bare number is milliseconds)');
  },
});
convict.addFormat({
  name: 'bytes',
  coerce: (v: string) => parseBytes(v) ?? v,
  validate(v: unknown) {
    if (typeof v !== 'number' || parseBytes(v) === null) throw new Error('must be a size such as 1048576, 200M or 2G (binary multiples)');
  },
});
convict.addFormat({
  name: 'listeners',
  coerce: (v: string) => v.split(',').map((s) => s.trim()).filter(Boolean),
  validate(v: unknown) {
    if (!Array.isArray(v)) throw new Error('must be a list of listeners');
    for (const item of v) {
      if (!/^(inet6?|unix|local):/.test(String(item))) throw new Error(`must be inet:HOST:PORT, inet:[IPV6]:PORT or unix:/PATH, but "${String(item)}" names no inet: or unix: type`);
      const parsed = parseListenAddress(String(item));
      if (typeof parsed === 'string') throw new Error(`must be inet:HOST:PORT, inet:[IPV6]:PORT or unix:/PATH, but ${parsed}`);
    }
  },
});
convict.addFormat({
  name: 'listener',
  validate(v: unknown) {
    const parsed = parseListenAddress(String(v));
    if (typeof parsed === 'string') throw new Error(`must be HOST:PORT or inet:HOST:PORT: ${parsed}`);
    if (parsed.kind !== 'inet') throw new Error('must be an inet listener');
  },
});
convict.addFormat({
  name: 'ratio',
  coerce: (v: string) => (/^\s*[\d.]+\s*$/.test(v) ? Number(v) : v),
  validate(v: unknown) {
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw new Error('must be a number from 0 to 1');
  },
});
convict.addFormat({
  name: 'optional-listener',
  validate(v: unknown) {
    if (v === '') return;
    const parsed = parseListenAddress(String(v));
    if (typeof parsed === 'string' || parsed.kind !== 'inet') throw new Error(`must be empty or HOST:PORT`);
  },
});
convict.addFormat({
  name: 'temporary-reply',
  validate(v: unknown) {
    const text = String(v);
    const problem = replyProblem(text);
    if (problem) throw new Error(`must be a Postfix access(5) reply such as "DUNNO" or "451 4.3.0 Try again later"; this one ${problem}`);
    if (/^(5\d\d|REJECT)(\s|$)/i.test(text) || /^\S+\s+5\.\d{1,3}\.\d{1,3}(\s|$)/.test(text)) {
      throw new Error('must not refuse mail for good: our own trouble gets DUNNO or a 4XX (a 5XX would bounce mail that a retry would deliver)');
    }
  },
});
convict.addFormat({
  name: 'reply',
  validate(v: unknown) {
    const problem = replyProblem(String(v));
    if (problem) throw new Error(`must be a Postfix access(5) reply such as "452 4.2.2 Mailbox full, try again later" or "DUNNO"; this one ${problem}`);
  },
});
/** What a mailbox key template may use (recipient.mailbox_key; core/recipient.ts fills them in). */
export const KEY_PLACEHOLDERS = ['{local}', '{domain}', '{address}'];

convict.addFormat({
  name: 'key-template',
  validate(v: unknown) {
    if (typeof v !== 'string' || !KEY_PLACEHOLDERS.some((p) => v.includes(p))) {
      throw new Error(`must use at least one of ${KEY_PLACEHOLDERS.join(' ')}`);
    }
  },
});
convict.addFormat({
  name: 'octal-mode',
  coerce: (v: string) => v,
  validate(v: unknown) {
    if (!/^0?[0-7]{3}$/.test(String(v))) throw new Error('must be an octal file mode such as 0660');
  },
});
convict.addFormat({
  name: 'group',
  validate(v: unknown) {
    if (v === '') return;
    try {
      groupId(String(v));
    } catch (err) {
      throw new Error(`must be empty (the process's own group) or a group name or number: ${(err as Error).message}`);
    }
  },
});

export interface Backend {
  /** Recipient domains this backend holds; ".example.com" also matches its subdomains. */
  domains: string[];
  type: 'local' | 'http' | 'doveadm';
  url?: string;
  token?: string;
  /** doveadm: doveadm_password or doveadm_api_key of that Dovecot. */
  password?: string;
  api_key?: string;
}

const BACKEND_KEYS = ['domains', 'type', 'url', 'token', 'password', 'api_key'];

/*
 * A list, not an object keyed by domain: convict splits setting paths at dots, so a domain name
 * cannot be a key.
 */
convict.addFormat({
  name: 'backend-table',
  coerce(v: string) {
    try {
      return JSON.parse(v);
    } catch {
      return v;
    }
  },
  validate(v: unknown) {
    if (!Array.isArray(v)) {
      throw new Error('must be a JSON list such as [{"domains":["example.com"],"type":"http","url":"http://mx1:10035/quota?u={key}"}]');
    }
    const seen = new Set<string>();
    v.forEach((entry: Partial<Backend> | null, i) => {
      if (typeof entry !== 'object' || entry === null) throw new Error(`has entry ${i}, which is not an object`);
      const unknown = Object.keys(entry).filter((k) => !BACKEND_KEYS.includes(k));
      if (unknown.length > 0) throw new Error(`has the unknown key ${JSON.stringify(unknown[0])} in entry ${i} (known: ${BACKEND_KEYS.join(', ')})`);
      if (!Array.isArray(entry.domains) || entry.domains.length === 0) throw new Error(`has entry ${i} without a "domains" list`);
      for (const domain of entry.domains) {
        if (typeof domain !== 'string' || domain !== domain.toLowerCase() || !/^\.?[^\s@/]+$/.test(domain)) {
          throw new Error(`has the domain ${JSON.stringify(domain)} in entry ${i}: use lower case, no @ or spaces (".example.com" also matches subdomains)`);
        }
        if (seen.has(domain)) throw new Error(`names the domain ${domain} twice`);
        seen.add(domain);
      }
      if (entry.type !== 'http' && entry.type !== 'local' && entry.type !== 'doveadm') {
        throw new Error(`has the type ${JSON.stringify(entry.type)} in entry ${i}: use "http", "doveadm" or "local"`);
      }
      if (entry.type === 'http') checkUrlTemplate(String(entry.url ?? ''), `entry ${i} url`);
      if (entry.type === 'doveadm') checkHttpUrl(String(entry.url ?? ''), `entry ${i} url`);
    });
  },
});

function checkHttpUrl(url: string, what: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`${what} "${url}" is not a URL`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`${what} must be http:// or https://`);
}

convict.addFormat({
  name: 'http-url',
  validate(v: unknown) {
    checkHttpUrl(String(v), 'the URL');
  },
});

function checkUrlTemplate(url: string, what: string): void {
  if (!url.includes('{key}')) throw new Error(`${what} must contain {key}, where the mailbox key goes`);
  let parsed: URL;
  try {
    parsed = new URL(url.replaceAll('{key}', 'k'));
  } catch {
    throw new Error(`${what} "${url}" is not a URL`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`${what} must be http:// or https://`);
}

convict.addFormat({
  name: 'url-template',
  validate(v: unknown) {
    checkUrlTemplate(String(v), 'the URL');
  },
});
