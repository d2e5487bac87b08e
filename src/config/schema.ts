/*
 * The one configuration schema: every setting with its default, doc string, env var and flag,
 * and the Settings type derived from it (so the two cannot drift).
 *
 * Precedence (convict's): embedded default < JSON file (--config FILE or OVERQUOTA_CONFIG) <
 * environment (OVERQUOTA_ + the path in upper snake case) < flags (--path.to.setting VALUE).
 * The defaults alone run the seed's single-host setup: /var/mail read as mbox, 200 MiB each.
 * One table, a setting per line; the policy wire bounds (policy.max_line_length, max_attributes,
 * max_request_size) have their values here, and faces/policy/codec.ts enforces them.
 */
import type { Backend } from './formats.js';

export type Leaf = { doc: string; format: unknown; default: unknown; sensitive?: boolean; env?: string; arg?: string };
export type Tree = { [k: string]: Leaf | Tree };

const schema = {
  log: {
    level: { doc: 'Log level: fatal, error, warn, info (one line per decision), debug, trace or silent.', format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    file: { doc: 'Write logs to this file instead of stdout. In --stdio (spawn) mode stdout is the policy channel: without a file nothing is logged. Reopened on SIGUSR1 (log rotation).', format: String, default: '' },
    decisions: { doc: 'Which decisions get a log line: refusals (deferred and rejected recipients, dry-run warnings and our own trouble: what an operator reads), all (every recipient checked), or none. The counts of all of them are in /metrics.', format: ['refusals', 'all', 'none'], default: 'refusals' },
    format: { doc: 'json (one JSON object per line) or text (one line per event in the style of Postfix\'s own mail log, for logs that go to syslog mail beside Postfix\'s).', format: ['json', 'text'], default: 'json' },
  },
  policy: {
    listen: { doc: 'Policy delegation listeners: inet:HOST:PORT, inet:[IPV6]:PORT, unix:/PATH; comma-separated in env and flags. Empty: no policy service (a milter-only frontend).', format: 'listeners', default: ['inet:127.0.0.1:10033'] },
    socket_mode: { doc: 'File mode of unix-domain policy sockets, set as they are created (0660: owner and socket_group only; any local user could ask a 0666 one).', format: 'octal-mode', default: '0660' },
    socket_group: { doc: 'Group of unix-domain policy sockets, name or number: postfix (Postfix smtpd runs as user postfix, group postfix). Empty: the process\'s own group.', format: 'group', default: '' },
    idle_timeout: { doc: 'Close a policy connection idle this long (0: never). Keep it above smtpd_policy_service_max_idle (300s): Postfix must close first.', format: 'duration', default: '330s' },
    max_line_length: { doc: 'Longest attribute line, in bytes (or 4k, binary multiples); a longer one drops the connection without a reply.', format: 'bytes', default: 4096 },
    max_attributes: { doc: 'Most attributes in one request (Postfix 3.x sends about 40).', format: 'nat', default: 100 },
    max_request_size: { doc: 'Most bytes in one request (or 64k, binary multiples).', format: 'bytes', default: 65536 },
    check_end_of_message: { doc: 'Also check at END-OF-MESSAGE (real size known) when the request names a recipient, i.e. when the message has exactly one recipient.', format: 'boolean', default: false },
  },
  milter: {
    listen: { doc: 'Milter listeners for Sendmail (INPUT_MAIL_FILTER) and Postfix (smtpd_milters): inet:HOST:PORT, inet:PORT@HOST (Sendmail spelling), unix:/PATH; comma-separated. Empty: no milter.', format: 'listeners', default: [] },
    socket_mode: { doc: 'File mode of unix-domain milter sockets, set as they are created.', format: 'octal-mode', default: '0660' },
    socket_group: { doc: 'Group of unix-domain milter sockets, name or number: postfix for Postfix (smtpd runs as user postfix); for Sendmail the group of its RunAsUser, e.g. smmsp (running as root, Sendmail connects anyway). Empty: the process\'s own group.', format: 'group', default: '' },
    idle_timeout: { doc: 'Close a milter connection idle this long (0: never; MTAs keep one per SMTP session and time out their own side first).', format: 'duration', default: '1h' },
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
    listen: { doc: 'Admin HTTP listener of the frontend, HOST:PORT: GET /metrics (Prometheus), GET /health, GET /ready, POST /invalidate?address=ADDRESS; overquota status asks it. Empty: off (and no metrics).', format: 'optional-listener', default: '127.0.0.1:10036' },
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
} as const satisfies Tree;

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

export const fullSchema = withEnvAndArgs(schema);


/** A setting's value as loaded, from its format (see formats.ts): what convict hands back. */
type ValueOf<F> = F extends 'duration' | 'bytes' | 'nat' | 'ratio'
  ? number
  : F extends 'boolean'
    ? boolean
    : F extends 'listeners' | ArrayConstructor
      ? string[]
      : F extends 'backend-table'
        ? Backend[]
        : F extends readonly (infer Choice extends string)[]
          ? Choice
          : string;

type SettingsOf<T> = { -readonly [K in keyof T]: T[K] extends { doc: string; format: infer F } ? ValueOf<F> : SettingsOf<T[K]> };

/** The loaded settings, derived from the schema. */
export type Settings = SettingsOf<typeof schema>;

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
