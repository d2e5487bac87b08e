/*
 * The one configuration schema: every setting with its default, doc string, env var and flag.
 *
 * Precedence (convict's): embedded default < JSON file (--config FILE or OVERQUOTA_CONFIG) <
 * environment (OVERQUOTA_ + the path in upper snake case) < flags (--path.to.setting VALUE).
 * The defaults alone run the seed's single-host setup: /var/mail read as mbox, 200 MiB each.
 * Loading must fail loudly, naming the setting, the value and what is allowed: a wrong reply text
 * or listener found at start-up costs nothing, found in production it costs mail.
 */
import fs from 'node:fs';
import convict from 'convict';
import { parseListenAddress } from './listen.js';
import { groupId } from '../runtime/listeners.js';
import { replyProblem } from '../core/replies.js';
import { KEY_PLACEHOLDERS } from '../core/recipient.js';

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const UNITS_BYTES: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "2s", "500ms", "5m"; a bare number is milliseconds. */
export function parseDuration(v: unknown): number | null {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : null;
  const m = /^\s*(\d+)\s*(ms|s|m|h|d)?\s*$/.exec(String(v));
  return m ? Number(m[1]) * UNITS_MS[m[2] ?? 'ms']! : null;
}

/** "200M", "200MiB", "1G", "1024"; binary multiples as Dovecot and Courier count them. */
export function parseBytes(v: unknown): number | null {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : null;
  const m = /^\s*(\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*$/i.exec(String(v));
  return m ? Number(m[1]) * UNITS_BYTES[(m[2] ?? '').toLowerCase()]! : null;
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

type Leaf = { doc: string; format: unknown; default: unknown; sensitive?: boolean; env?: string; arg?: string };
type Tree = { [k: string]: Leaf | Tree };

const schema = {
  log: {
    level: { doc: 'Log level: fatal, error, warn, info (one line per decision), debug, trace or silent.', format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    file: { doc: 'Write logs to this file instead of stdout. In --stdio (spawn) mode stdout is the policy channel: without a file nothing is logged.', format: String, default: '' },
  },
  policy: {
    listen: { doc: 'Policy delegation listeners: inet:HOST:PORT, inet:[IPV6]:PORT, unix:/PATH; comma-separated in env and flags. Empty: no policy service (a milter-only frontend).', format: 'listeners', default: ['inet:127.0.0.1:10033'] },
    socket_mode: { doc: 'File mode of unix-domain policy sockets, set as they are created (0660: owner and socket_group only; any local user could ask a 0666 one).', format: 'octal-mode', default: '0660' },
    socket_group: { doc: 'Group of unix-domain policy sockets, name or number: postfix (Postfix smtpd runs as user postfix, group postfix). Empty: the process\'s own group.', format: 'group', default: '' },
    idle_timeout: { doc: 'Close a policy connection idle this long. Keep it above smtpd_policy_service_max_idle (300s): Postfix must close first.', format: 'duration', default: '330s' },
    max_line_length: { doc: 'Longest attribute line, in bytes (or 4k, binary multiples); a longer one drops the connection without a reply.', format: 'bytes', default: 4096 },
    max_attributes: { doc: 'Most attributes in one request (Postfix 3.x sends about 40).', format: 'nat', default: 100 },
    max_request_size: { doc: 'Most bytes in one request (or 64k, binary multiples).', format: 'bytes', default: 65536 },
    check_end_of_message: { doc: 'Also check at END-OF-MESSAGE (real size known) when the request names a recipient, i.e. when the message has exactly one recipient.', format: 'boolean', default: false },
  },
  milter: {
    listen: { doc: 'Milter listeners for Sendmail (INPUT_MAIL_FILTER) and Postfix (smtpd_milters): inet:HOST:PORT, inet:PORT@HOST (Sendmail spelling), unix:/PATH; comma-separated. Empty: no milter.', format: 'listeners', default: [] },
    socket_mode: { doc: 'File mode of unix-domain milter sockets, set as they are created.', format: 'octal-mode', default: '0660' },
    socket_group: { doc: 'Group of unix-domain milter sockets, name or number: postfix for Postfix (smtpd runs as user postfix); for Sendmail the group of its RunAsUser, e.g. smmsp (running as root, Sendmail connects anyway). Empty: the process\'s own group.', format: 'group', default: '' },
    idle_timeout: { doc: 'Close a milter connection idle this long (MTAs keep one per SMTP session and time out their own side first).', format: 'duration', default: '1h' },
  },
  recipient: {
    delimiter: { doc: 'Characters that start an address extension, as Postfix recipient_delimiter (user+tag@ -> user@). Empty: none.', format: String, default: '+' },
    lowercase_local_part: { doc: 'Fold the local part to lower case before building the mailbox key.', format: 'boolean', default: true },
    mailbox_key: { doc: 'Mailbox key sent to the quota source: {local} (the seed quota.cgi), {address} (local@domain) or any mix with {domain}.', format: 'key-template', default: '{local}' },
  },
  aliases: {
    file: { doc: 'Alias map in Postfix virtual(5) format (e.g. the file behind virtual_alias_maps): an address is resolved to its mailboxes before the check, since Postfix asks before expanding aliases. Reloaded on SIGHUP. Empty: none.', format: String, default: '' },
    defer_when: { doc: 'For an alias with several mailboxes: defer when "any" of them is full, or only when "all" are.', format: ['any', 'all'], default: 'any' },
  },
  source: {
    type: { doc: 'Default quota source: "local" reads the mail store described under store; "http" asks a quota service or quota.cgi; "doveadm" asks Dovecot (see doveadm.*).', format: ['local', 'http', 'doveadm'], default: 'local' },
    url: { doc: 'HTTP source URL template; {key} is replaced by the URL-encoded mailbox key. Plain-text (quota.cgi) and JSON answers are understood.', format: 'url-template', default: 'http://127.0.0.1:10035/quota?u={key}' },
    token: { doc: 'Bearer token sent to HTTP sources (the quota service token).', format: String, default: '', sensitive: true },
    timeout: { doc: 'Give up on one source lookup after this long (the latency budget also bounds it).', format: 'duration', default: '1500ms' },
    max_connections: { doc: 'Most concurrent HTTP connections to one backend.', format: 'nat', default: 16 },
  },
  backends: {
    doc: 'Served domains and their quota sources, as a JSON list: [{"domains":["example.com"],"type":"http","url":"http://mx1:10035/quota?u={key}"}]. Empty: every domain uses the default source. A domain not listed gets DUNNO.',
    format: 'backend-table',
    default: [],
  },
  doveadm: {
    url: { doc: "Dovecot's doveadm HTTP API (doveadm_password and service doveadm { inet_listener http { ... } } in dovecot.conf).", format: 'http-url', default: 'http://127.0.0.1:8080/doveadm/v1' },
    password: { doc: 'doveadm_password (Basic auth as user doveadm).', format: String, default: '', sensitive: true },
    api_key: { doc: 'doveadm_api_key (X-Dovecot-API auth); used when no password is set.', format: String, default: '', sensitive: true },
  },
  store: {
    type: { doc: 'Mail store the quota service (and a "local" source) reads: mbox (one file per user), maildir (Maildir++ with maildirsize) or doveadm (ask Dovecot, see doveadm.*).', format: ['mbox', 'maildir', 'doveadm'], default: 'mbox' },
    path: { doc: 'Root of the mail store; no path outside it is ever opened.', format: String, default: '/var/mail' },
    mailbox: { doc: 'Mailbox path under the root: {user} (the key), {local}, {domain}; e.g. {user} for mbox, {domain}/{local}/Maildir for maildir.', format: String, default: '{user}' },
    limit: { doc: 'Quota of a mailbox with no other limit (0: unlimited). The seed used 200 MiB.', format: 'bytes', default: '200M' },
    limits_file: { doc: 'Per-user limits: lines "user size [messages]", e.g. "alice 1G". Empty: none.', format: String, default: '' },
    trash_folders: { doc: 'Maildir++ folders not counted (Courier excludes Trash).', format: Array, default: ['.Trash'] },
    scan_cache_mailboxes: { doc: 'Maildirs whose scan results are kept, reused while their directories are unchanged (about 5 KB each).', format: 'nat', default: 5000 },
  },
  cache: {
    max_entries: { doc: 'Most mailboxes kept in the process-local cache.', format: 'nat', default: 100_000 },
    memory_ttl: { doc: 'With Redis on: longest time the process-local tier reuses an answer before asking Redis again (keeps invalidation and other frontends\' findings visible).', format: 'duration', default: '2s' },
    ttl: {
      under_quota: { doc: 'How long an under-quota answer is reused (shortened near the limit, see near_limit_ratio).', format: 'duration', default: '30s' },
      over_quota: { doc: 'How long an over-quota answer is reused (short: freed space should be seen soon).', format: 'duration', default: '10s' },
      unknown: { doc: 'How long an unknown-mailbox answer is reused.', format: 'duration', default: '60s' },
      near_limit: { doc: 'Shortest reuse of an under-quota answer: for a mailbox almost full.', format: 'duration', default: '2s' },
      near_limit_ratio: { doc: 'Headroom below which the under-quota TTL shrinks in proportion to the room left, down to near_limit (0.1: the last 10% of the quota).', format: 'ratio', default: 0.1 },
    },
  },
  reservations: {
    enabled: {
      doc: 'Count the mail accepted for a mailbox until a reading shows it stored: usage + mail on its way + the message size decides, so a burst cannot fill a mailbox past its limit on one cached reading. With Redis every frontend counts every other\'s. Transactions are told apart by Postfix\'s instance attribute (the milter: the message).',
      format: 'boolean',
      default: true,
    },
    ttl: {
      doc: 'How long accepted mail counts at most while no reading shows it stored: covers a message held in a queue or a slow delivery; a transaction that failed after RCPT stops counting after this.',
      format: 'duration',
      default: '10m',
    },
  },
  redis: {
    url: { doc: 'Turns the shared Redis tier on. redis://[user:password@]host:port[/db], rediss:// for TLS, or a unix socket path. For sentinel and cluster: comma-separated addresses. Empty: process-local cache only.', format: String, default: '' },
    mode: { doc: 'standalone, sentinel (url lists the sentinels) or cluster (url lists some cluster nodes).', format: ['standalone', 'sentinel', 'cluster'], default: 'standalone' },
    sentinel_master: { doc: 'Master name the sentinels monitor.', format: String, default: 'mymaster' },
    username: { doc: 'ACL user (overrides the URL).', format: String, default: '' },
    password: { doc: 'Password (overrides the URL).', format: String, default: '', sensitive: true },
    tls_ca: { doc: 'CA certificate file for rediss:// (empty: the system CAs).', format: String, default: '' },
    prefix: { doc: 'Prefix of every key and channel, so several sites can share one Redis.', format: String, default: 'overquota:' },
    command_timeout: { doc: 'Give up on one Redis command after this long and go on without Redis.', format: 'duration', default: '250ms' },
  },
  admin: {
    listen: { doc: 'Admin HTTP listener of the frontend (POST /invalidate?address=ADDRESS, GET /health), HOST:PORT. Empty: off.', format: 'optional-listener', default: '' },
    token: { doc: 'Bearer token that POST requests to the admin listener must carry. Required when admin.listen is not on loopback (start-up refuses it without one).', format: String, default: '', sensitive: true },
  },
  replies: {
    under_quota: { doc: 'Reply for a mailbox with room. Never OK: OK skips the later restrictions.', format: 'reply', default: 'DUNNO' },
    over_quota: { doc: 'Reply for a full mailbox, or one the message does not fit. Placeholders: {usage} {limit} {percent} {size}.', format: 'reply', default: '452 4.2.2 Mailbox full, try again later' },
    too_large: { doc: 'Reply for a message larger than the whole quota (it can never be delivered).', format: 'reply', default: '552 5.2.3 Message is larger than the mailbox quota' },
    unknown: { doc: 'Reply for a mailbox the source does not know (aliases arrive unexpanded: keep DUNNO).', format: 'reply', default: 'DUNNO' },
    on_error: { doc: 'Reply when the source fails or the latency budget is spent. Our trouble must not refuse mail: DUNNO, or a 4XX.', format: 'temporary-reply', default: 'DUNNO' },
  },
  dry_run: { doc: 'Answer WARN (Postfix logs it, the mail passes) instead of deferring or rejecting: for a safe roll-out.', format: 'boolean', default: false },
  latency_budget: { doc: 'Longest time from request to answer; past it the on_error reply is sent.', format: 'duration', default: '2s' },
  quota_service: {
    listen: { doc: 'Quota service HTTP listener, HOST:PORT. Keep it on loopback or a private network.', format: 'listener', default: '127.0.0.1:10035' },
    token: { doc: 'Bearer token the quota service requires (empty: none).', format: String, default: '', sensitive: true },
    max_concurrent_scans: { doc: 'Most Maildir recounts (directory scans) at once; more wait for a free one within their deadline.', format: 'nat', default: 8 },
    max_lookups: { doc: 'Most lookups being answered at once, waiting ones included; more are answered 503 with Retry-After (frontends ask again within their budget).', format: 'nat', default: 1024 },
  },
} satisfies Tree;

/** Adds OVERQUOTA_PATH env vars and --path flags to every leaf. */
function withEnvAndArgs(tree: Tree, prefix: string[] = []): Tree {
  const out: Tree = {};
  for (const [name, node] of Object.entries(tree)) {
    const path = [...prefix, name];
    if ('doc' in node && 'default' in node) {
      out[name] = { ...(node as Leaf), env: `OVERQUOTA_${path.join('_').toUpperCase()}`, arg: path.join('.') };
    } else {
      out[name] = withEnvAndArgs(node as Tree, path);
    }
  }
  return out;
}

const fullSchema = withEnvAndArgs(schema);

/** What convict hands back for this schema. */
export type Config = convict.Config<any>;

export interface Settings {
  log: { level: string; file: string };
  policy: { listen: string[]; socket_mode: string; socket_group: string; idle_timeout: number; max_line_length: number; max_attributes: number; max_request_size: number; check_end_of_message: boolean };
  milter: { listen: string[]; socket_mode: string; socket_group: string; idle_timeout: number };
  recipient: { delimiter: string; lowercase_local_part: boolean; mailbox_key: string };
  doveadm: { url: string; password: string; api_key: string };
  aliases: { file: string; defer_when: 'any' | 'all' };
  source: { type: 'local' | 'http' | 'doveadm'; url: string; token: string; timeout: number; max_connections: number };
  backends: Backend[];
  store: { type: 'mbox' | 'maildir' | 'doveadm'; path: string; mailbox: string; limit: number; limits_file: string; trash_folders: string[]; scan_cache_mailboxes: number };
  cache: { max_entries: number; memory_ttl: number; ttl: { under_quota: number; over_quota: number; unknown: number; near_limit: number; near_limit_ratio: number } };
  reservations: { enabled: boolean; ttl: number };
  redis: { url: string; mode: 'standalone' | 'sentinel' | 'cluster'; sentinel_master: string; username: string; password: string; tls_ca: string; prefix: string; command_timeout: number };
  admin: { listen: string; token: string };
  replies: { under_quota: string; over_quota: string; too_large: string; unknown: string; on_error: string };
  dry_run: boolean;
  latency_budget: number;
  quota_service: { listen: string; token: string; max_concurrent_scans: number; max_lookups: number };
}

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

/** Secrets inside an error text (convict prints the offending value, e.g. a backends list). */
function redactText(text: string): string {
  return text
    .replace(/("[a-z_]*(?:token|password|secret|api_key)"\s*:\s*)"(?:[^"\\]|\\.)*"/gi, '$1"[redacted]"')
    .replace(/(\/\/[^/@\s:"]*:)[^/@\s"]*@/g, '$1[redacted]@');
}

/** The effective settings as JSON, secrets replaced, for `overquota config`. */
export function redactedSettings(settings: Settings): Settings {
  return JSON.parse(
    JSON.stringify(settings, (k, v) => {
      if (typeof v !== 'string' || v === '') return v;
      if (/(token|password|secret|api_key)$/i.test(k)) return '[redacted]';
      // Credentials inside URLs (redis://user:password@host).
      return v.replace(/(\/\/[^/@\s:]*:)[^/@\s]*@/g, '$1[redacted]@');
    }),
  ) as Settings;
}

/** Every setting with its env var, default and doc, for --help and the README reference. */
export function describeSettings(): { path: string; env: string; default: unknown; doc: string }[] {
  const rows: { path: string; env: string; default: unknown; doc: string }[] = [];
  const walk = (tree: Tree) => {
    for (const node of Object.values(tree)) {
      if ('doc' in node && 'default' in node) {
        const leaf = node as Leaf;
        rows.push({ path: leaf.arg!, env: leaf.env!, default: leaf.default, doc: leaf.doc });
      } else walk(node as Tree);
    }
  };
  walk(fullSchema);
  return rows;
}
