/*
 * The one configuration schema: every setting with its default, doc string, env var and flag.
 *
 * Precedence (convict's): embedded default < JSON file (--config FILE or OVERQUOTA_CONFIG) <
 * environment (OVERQUOTA_ + the path in upper snake case) < flags (--path.to.setting VALUE).
 * The defaults alone run the seed's single-host setup: /var/mail read as mbox, 200 MiB each.
 * Loading must fail loudly, naming the setting, the value and what is allowed: a wrong reply text
 * or listener found at start-up costs nothing, found in production it costs mail.
 */
import convict from 'convict';
import { parseListenAddress } from './listen.js';
import { replyProblem } from './core/replies.js';
import { KEY_PLACEHOLDERS } from './core/address.js';

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
    if (!/^0?[0-7]{3}$/.test(String(v))) throw new Error('must be an octal file mode such as 0666');
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
    socket_mode: { doc: 'File mode of unix-domain policy sockets (Postfix smtpd runs as the postfix user).', format: 'octal-mode', default: '0666' },
    idle_timeout: { doc: 'Close a policy connection idle this long. Keep it above smtpd_policy_service_max_idle (300s): Postfix must close first.', format: 'duration', default: '330s' },
    max_line_length: { doc: 'Longest attribute line, in bytes; a longer one drops the connection without a reply.', format: 'nat', default: 4096 },
    max_attributes: { doc: 'Most attributes in one request (Postfix 3.x sends about 40).', format: 'nat', default: 100 },
    max_request_size: { doc: 'Most bytes in one request.', format: 'nat', default: 65536 },
    check_end_of_message: { doc: 'Also check at END-OF-MESSAGE (real size known) when the request names a recipient, i.e. when the message has exactly one recipient.', format: Boolean, default: false },
  },
  milter: {
    listen: { doc: 'Milter listeners for Sendmail (INPUT_MAIL_FILTER) and Postfix (smtpd_milters): inet:HOST:PORT, inet:PORT@HOST (Sendmail spelling), unix:/PATH; comma-separated. Empty: no milter.', format: 'listeners', default: [] },
    socket_mode: { doc: 'File mode of unix-domain milter sockets.', format: 'octal-mode', default: '0666' },
    idle_timeout: { doc: 'Close a milter connection idle this long (MTAs keep one per SMTP session and time out their own side first).', format: 'duration', default: '1h' },
  },
  recipient: {
    delimiter: { doc: 'Characters that start an address extension, as Postfix recipient_delimiter (user+tag@ -> user@). Empty: none.', format: String, default: '+' },
    lowercase_local_part: { doc: 'Fold the local part to lower case before building the mailbox key.', format: Boolean, default: true },
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
  },
  replies: {
    under_quota: { doc: 'Reply for a mailbox with room. Never OK: OK skips the later restrictions.', format: 'reply', default: 'DUNNO' },
    over_quota: { doc: 'Reply for a full mailbox, or one the message does not fit. Placeholders: {usage} {limit} {percent} {size}.', format: 'reply', default: '452 4.2.2 Mailbox full, try again later' },
    too_large: { doc: 'Reply for a message larger than the whole quota (it can never be delivered).', format: 'reply', default: '552 5.2.3 Message is larger than the mailbox quota' },
    unknown: { doc: 'Reply for a mailbox the source does not know (aliases arrive unexpanded: keep DUNNO).', format: 'reply', default: 'DUNNO' },
    on_error: { doc: 'Reply when the source fails or the latency budget is spent. Our trouble must not refuse mail: DUNNO, or a 4XX.', format: 'temporary-reply', default: 'DUNNO' },
  },
  dry_run: { doc: 'Answer WARN (Postfix logs it, the mail passes) instead of deferring or rejecting: for a safe roll-out.', format: Boolean, default: false },
  latency_budget: { doc: 'Longest time from request to answer; past it the on_error reply is sent.', format: 'duration', default: '2s' },
  quota_service: {
    listen: { doc: 'Quota service HTTP listener, HOST:PORT. Keep it on loopback or a private network.', format: 'listener', default: '127.0.0.1:10035' },
    token: { doc: 'Bearer token the quota service requires (empty: none).', format: String, default: '', sensitive: true },
    max_concurrent_scans: { doc: 'Most mailbox scans at once; more are answered 503.', format: 'nat', default: 8 },
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
  policy: { listen: string[]; socket_mode: string; idle_timeout: number; max_line_length: number; max_attributes: number; max_request_size: number; check_end_of_message: boolean };
  milter: { listen: string[]; socket_mode: string; idle_timeout: number };
  recipient: { delimiter: string; lowercase_local_part: boolean; mailbox_key: string };
  doveadm: { url: string; password: string; api_key: string };
  aliases: { file: string; defer_when: 'any' | 'all' };
  source: { type: 'local' | 'http' | 'doveadm'; url: string; token: string; timeout: number; max_connections: number };
  backends: Backend[];
  store: { type: 'mbox' | 'maildir' | 'doveadm'; path: string; mailbox: string; limit: number; limits_file: string; trash_folders: string[]; scan_cache_mailboxes: number };
  cache: { max_entries: number; memory_ttl: number; ttl: { under_quota: number; over_quota: number; unknown: number; near_limit: number; near_limit_ratio: number } };
  redis: { url: string; mode: 'standalone' | 'sentinel' | 'cluster'; sentinel_master: string; username: string; password: string; tls_ca: string; prefix: string; command_timeout: number };
  admin: { listen: string };
  replies: { under_quota: string; over_quota: string; too_large: string; unknown: string; on_error: string };
  dry_run: boolean;
  latency_budget: number;
  quota_service: { listen: string; token: string; max_concurrent_scans: number };
}

export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
}

/**
 * Loads defaults, then the file, env and flags, and validates. Throws ConfigError with every problem.
 * @param args command-line words (flags such as --log.level debug); other words are ignored here.
 */
export function loadSettings(opts: { file?: string; env?: NodeJS.ProcessEnv; args?: string[] } = {}): Settings {
  const env = opts.env ?? process.env;
  let config: convict.Config<any>;
  try {
    config = convict(fullSchema as any, { env, args: opts.args ?? [] });
    const file = opts.file ?? env.OVERQUOTA_CONFIG;
    if (file) config.loadFile(file);
    config.validate({ allowed: 'strict' });
  } catch (err) {
    throw new ConfigError(redactText((err as Error).message));
  }
  return config.getProperties() as Settings;
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
