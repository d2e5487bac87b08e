// Test helper: a private, throw-away Dovecot 2.3 instance (real /usr/sbin/dovecot) for one test:
// passwd-file users with a maildir quota each, the doveadm HTTP API on a free loopback port, and
// optionally the quota-status policy service, an LMTP listener and quota_warning scripts.
// See shared/references/test-env.md ("Dovecot, private instance") and mail-stores.md (Dovecot).
//
// Layout: DIR/dovecot.conf, DIR/users (passwd-file), DIR/run (base_dir), DIR/state (state_dir),
// DIR/dovecot.log (log_path), DIR/dovecot.stderr, DIR/mail/NAME (home, uid/gid 5000),
// DIR/mail/NAME/Maildir. instance_name is DIR's basename, so every Dovecot process title
// ("dovecot-<instance>/auth", ...) names it. Needs root (Dovecot drops to uid 5000 for mail).
//
// `dovecot -F` (foreground) runs under the perl supervisor of supervised.ts (see SUPERVISOR there)
// that reaps every Dovecot process and removes DIR on stop(), and also when the test process dies
// without stop(), even by SIGKILL.
//
// What triggers quota_warning on 2.3.19 (seen): only quota transactions that change usage, i.e.
// saves (LMTP delivery, doveadm save/import) and expunges (doveadm expunge, IMAP). Upward: a
// delivery that takes usage from < 100% to >= 100%; it is only accepted within quota_grace (default
// 10% of the limit), so the message must end between 100% and 110%. Downward: `doveadm expunge`
// that takes usage from >= 100% to < 100%. `doveadm quota recalc` never fires a warning, so fill()
// and empty() (files + recalc) never do. %u is what the caller named: `u1@example.com` for LMTP,
// `u1` for doveadm -u u1.
import { chmod, chown, mkdir, readFile, rm, writeFile, rename, readdir } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { run, startSupervised, stopSupervised, supervisedStop, waitReady, withPortRetry, type Supervised } from './supervised.js';

export const DOVECOT = '/usr/sbin/dovecot';
export const DOVEADM = existsSync('/usr/bin/doveadm') ? '/usr/bin/doveadm' : '/usr/sbin/doveadm';
const LMTP_BINARY = '/usr/lib/dovecot/lmtp';
/** uid and gid of every mail user (no such account needs to exist). */
export const VMAIL_UID = 5000;

/**
 * Why a private Dovecot cannot run here, or false: a test file throws it, it never skips.
 * Install the packages with scripts/install-deps.sh (dovecot-core dovecot-lmtpd).
 */
export function dovecotUnavailable(opts: { lmtp?: boolean } = {}): string | false {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root to run a private Dovecot';
  if (!existsSync(DOVECOT)) return `${DOVECOT} missing: run scripts/install-deps.sh (Debian package dovecot-core)`;
  if (!existsSync(DOVEADM)) return `${DOVEADM} missing: run scripts/install-deps.sh (Debian package dovecot-core)`;
  if (opts.lmtp && !existsSync(LMTP_BINARY)) return `${LMTP_BINARY} missing: run scripts/install-deps.sh (Debian package dovecot-lmtpd)`;
  return false;
}

export interface DovecotUser {
  /** Login name (no domain); LMTP / quota-status accept NAME@any.domain (username_format=%n). */
  name: string;
  /** Storage limit as Dovecot writes it: '1M' (default), '100K', '2G', '0' = unlimited. */
  quota?: string;
  /** Optional message-count limit (quota rule `messages=N`). */
  messages?: number;
}

export interface StartDovecotOptions {
  users: DovecotUser[];
  /** doveadm_password (Basic auth user `doveadm`); default random. */
  doveadmPassword?: string;
  /** doveadm_api_key (`Authorization: X-Dovecot-API base64(key)`); off unless given. */
  doveadmApiKey?: string;
  /** Run the quota-status policy service (`-p postfix`) on a free 127.0.0.1 port. */
  quotaStatusPort?: boolean;
  /** Enable LMTP (protocols = lmtp) with an inet listener on a free 127.0.0.1 port. */
  lmtp?: boolean;
  /**
   * quota_warning = storage=100%% quota-warning +100 %u and
   * quota_warning2 = -storage=100%% quota-warning -100 %u, run by `service quota-warning`
   * (as root) with this executable: it is called as `PATH +100 USER` / `PATH -100 USER`.
   */
  quotaWarningScript?: { path: string };
  /** More `plugin {}` settings (e.g. quota_grace, quota_full_tempfail, quota_status_nouser). */
  pluginSettings?: Record<string, string>;
  /** Raw dovecot.conf text appended last (e.g. `lmtp_rcpt_check_quota = yes`). */
  extraConfig?: string;
}

export interface QuotaInfo {
  /** STORAGE value (Dovecot counts KiB) × 1024. */
  storageBytes: number;
  /** STORAGE limit × 1024; null when unlimited ('-'). */
  storageLimitBytes: number | null;
  messages: number;
  messageLimit: number | null;
}

export interface DovecotInstance {
  /** The instance directory (removed by stop()). */
  dir: string;
  /** instance_name (DIR's basename): every Dovecot process title contains it. */
  instanceName: string;
  /** pid of the dovecot master process. */
  pid: number;
  /** doveadm HTTP API port on 127.0.0.1. */
  httpPort: number;
  /** http://127.0.0.1:PORT/doveadm/v1 */
  doveadmUrl: string;
  /** doveadm_password (Basic auth as `doveadm:PASSWORD`). */
  password: string;
  apiKey?: string;
  /** quota-status (postfix policy protocol) port on 127.0.0.1, when asked for. */
  quotaStatusPort?: number;
  /** LMTP port on 127.0.0.1, when asked for. */
  lmtpPort?: number;
  /** DIR/mail: homes are DIR/mail/NAME. */
  mailRoot: string;
  /** DIR/dovecot.conf */
  configPath: string;
  /** The user's Maildir (DIR/mail/NAME/Maildir). */
  maildir(user: string): string;
  /** Run `doveadm -c DIR/dovecot.conf ...args`; resolves to stdout, rejects (err.exitCode) on a non-zero exit. */
  doveadm(...args: string[]): Promise<string>;
  /** Parsed `doveadm -f tab quota get -u USER`. */
  quotaGet(user: string): Promise<QuotaInfo>;
  /**
   * Write `bytes` bytes of mail (split into `messages` files, default 1) into Maildir/cur (or
   * Maildir/.FOLDER/cur), owned by uid 5000, named `<time>.M<usec>P<pid>Q<n>.overquota,S=<size>,W=<vsize>:2,`,
   * then `doveadm quota recalc -u USER`. Never fires quota_warning.
   */
  fill(user: string, bytes: number, opts?: { folder?: string; messages?: number }): Promise<void>;
  /** Remove every message, folder and index of the user's Maildir, then recalc. Never fires quota_warning. */
  empty(user: string): Promise<void>;
  /** `doveadm expunge -u USER mailbox MAILBOX all` (default INBOX): fires a downward quota_warning when crossing. */
  expunge(user: string, mailbox?: string): Promise<void>;
  /**
   * Deliver one message of about `bytes` bytes (before Dovecot adds Return-Path, Delivered-To
   * and Received, ~250 bytes) over LMTP to USER@example.com; resolves to the reply to DATA
   * (e.g. `250 2.0.0 <u1@example.com> ... Saved` or `552 5.2.2 <u1@example.com> Quota exceeded ...`),
   * or to the RCPT reply when RCPT is refused (e.g. with lmtp_rcpt_check_quota = yes).
   * Dovecot accepts a delivery only if usage is below the limit before it and at most
   * limit + quota_grace (default 10%) after it. Needs `lmtp: true`.
   */
  deliver(user: string, bytes: number): Promise<string>;
  /** POST one JSON body to the doveadm HTTP API (Basic auth with `password` unless `authorization` is given). */
  http(body: unknown, authorization?: string): Promise<{ status: number; body: string }>;
  /** Current DIR/dovecot.log ('' if not written yet). */
  log(): Promise<string>;
  /** SIGTERM the master (it takes ~1 s), SIGKILL after 5 s, reap everything, remove DIR. Idempotent. */
  stop(): Promise<void>;
}

const USER_RE = /^[a-z0-9][a-z0-9._-]*$/i;
const QUOTA_RE = /^[0-9]+[BKMGT%]?$/i;
const FOLDER_RE = /^[^./\s][^/\s]*$/;

function checkUser(name: string): void {
  if (!USER_RE.test(name)) throw new Error(`startDovecot: bad user name ${JSON.stringify(name)} (letters, digits, . _ -)`);
}

/** Dovecot config string: "..." with \ and " escaped; refuses newlines. */
function q(value: string): string {
  if (/[\r\n]/.test(value)) throw new Error(`startDovecot: config values must be single-line: ${JSON.stringify(value)}`);
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

interface Ports {
  http: number;
  quotaStatus?: number;
  lmtp?: number;
}

function dovecotConf(dir: string, instanceName: string, opts: StartDovecotOptions, password: string, ports: Ports): string {
  const users = join(dir, 'users');
  const plugin: Record<string, string> = {
    quota: 'maildir:User quota',
    quota_rule: '*:storage=1M',
  };
  if (ports.quotaStatus !== undefined) {
    plugin.quota_status_success = 'DUNNO';
    plugin.quota_status_overquota = '452 4.2.2 Mailbox full';
  }
  if (opts.quotaWarningScript) {
    plugin.quota_warning = 'storage=100%% quota-warning +100 %u';
    plugin.quota_warning2 = '-storage=100%% quota-warning -100 %u';
  }
  Object.assign(plugin, opts.pluginSettings);
  const lines = [
    '# Generated by test/helpers/dovecot.ts',
    `base_dir = ${join(dir, 'run')}`,
    `state_dir = ${join(dir, 'state')}`,
    `instance_name = ${instanceName}`,
    `log_path = ${join(dir, 'dovecot.log')}`,
    // 'none' works: doveadm, quota-status and script services are not protocols.
    `protocols = ${opts.lmtp ? 'lmtp' : 'none'}`,
    'listen = 127.0.0.1',
    'ssl = no',
    'first_valid_uid = 5000',
    'mail_location = maildir:~/Maildir',
    'mail_plugins = $mail_plugins quota',
    'passdb {',
    '  driver = passwd-file',
    `  args = username_format=%n ${users}`,
    '}',
    'userdb {',
    '  driver = passwd-file',
    `  args = username_format=%n ${users}`,
    '}',
    'plugin {',
    ...Object.entries(plugin).map(([k, v]) => `  ${k} = ${q(v)}`),
    '}',
    `doveadm_password = ${q(password)}`,
    ...(opts.doveadmApiKey !== undefined ? [`doveadm_api_key = ${q(opts.doveadmApiKey)}`] : []),
    'service doveadm {',
    '  inet_listener http {',
    '    address = 127.0.0.1',
    `    port = ${ports.http}`,
    '  }',
    '}',
  ];
  if (ports.quotaStatus !== undefined) {
    lines.push(
      'service quota-status {',
      '  executable = quota-status -p postfix',
      '  inet_listener {',
      '    address = 127.0.0.1',
      `    port = ${ports.quotaStatus}`,
      '  }',
      '  client_limit = 1',
      '}',
    );
  }
  if (ports.lmtp !== undefined) {
    lines.push('service lmtp {', '  inet_listener lmtp {', '    address = 127.0.0.1', `    port = ${ports.lmtp}`, '  }', '}');
  }
  if (opts.quotaWarningScript) {
    const path = opts.quotaWarningScript.path;
    if (/\s/.test(path)) throw new Error(`startDovecot: quotaWarningScript.path must not contain whitespace: ${path}`);
    lines.push(
      'service quota-warning {',
      `  executable = script ${path}`,
      '  user = root',
      '  unix_listener quota-warning {',
      '    user = root',
      // The client is the mail process (lmtp, doveadm) running as uid 5000.
      '    mode = 0666',
      '  }',
      '}',
    );
  }
  if (opts.extraConfig) lines.push(opts.extraConfig);
  return `${lines.join('\n')}\n`;
}

function usersFile(mailRoot: string, users: DovecotUser[]): string {
  return users
    .map((u) => {
      checkUser(u.name);
      const quota = u.quota ?? '1M';
      if (!QUOTA_RE.test(quota)) throw new Error(`startDovecot: bad quota ${JSON.stringify(quota)} for ${u.name} (e.g. 1M, 100K, 0)`);
      let rule = `*:storage=${quota}`;
      if (u.messages !== undefined) {
        if (!Number.isInteger(u.messages) || u.messages < 0) throw new Error(`startDovecot: bad messages limit for ${u.name}`);
        rule += `:messages=${u.messages}`;
      }
      return `${u.name}:{PLAIN}x:${VMAIL_UID}:${VMAIL_UID}::${join(mailRoot, u.name)}::userdb_quota_rule=${rule}\n`;
    })
    .join('');
}

/** mkdir (mode 0700 unless given) owned by uid/gid 5000; no-op when it exists. */
async function vmailDir(path: string, mode = 0o700): Promise<void> {
  await mkdir(path, { recursive: true, mode });
  await chown(path, VMAIL_UID, VMAIL_UID);
}

/**
 * POST a body on a fresh connection, destroyed once the answer is read. Not `Connection: close`:
 * Dovecot 2.3.19 never answers a request carrying it when authentication fails (no 401, the
 * connection just hangs; seen with curl -H 'Connection: close' too).
 */
function post(url: string, body: string, authorization: string | undefined, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      Connection: 'keep-alive',
    };
    if (authorization !== undefined) headers.Authorization = authorization;
    const req = httpRequest(url, { method: 'POST', headers, agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
        req.destroy();
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`POST ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export const basicAuth = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
export const apiKeyAuth = (key: string): string => `X-Dovecot-API ${Buffer.from(key).toString('base64')}`;

/** Parse `doveadm -f tab quota get` output (header line, then one line per root and type). */
export function parseQuotaTab(out: string): QuotaInfo {
  const lines = out.split('\n').filter((l) => l.trim() !== '');
  const header = lines.shift()?.split('\t') ?? [];
  const col = (name: string): number => {
    const i = header.indexOf(name);
    if (i < 0) throw new Error(`quotaGet: no column ${name} in ${JSON.stringify(out)}`);
    return i;
  };
  const [iType, iValue, iLimit] = [col('Type'), col('Value'), col('Limit')];
  const info: Partial<QuotaInfo> = {};
  const limit = (s: string | undefined): number | null => (s === undefined || s === '-' ? null : Number(s));
  for (const line of lines) {
    const f = line.split('\t');
    const value = Number(f[iValue]);
    if (f[iType] === 'STORAGE') {
      const l = limit(f[iLimit]);
      info.storageBytes = value * 1024;
      info.storageLimitBytes = l === null ? null : l * 1024;
    } else if (f[iType] === 'MESSAGE') {
      info.messages = value;
      info.messageLimit = limit(f[iLimit]);
    }
  }
  if (info.storageBytes === undefined || info.messages === undefined) throw new Error(`quotaGet: no STORAGE/MESSAGE lines in ${JSON.stringify(out)}`);
  return info as QuotaInfo;
}

/** A message of exactly `size` bytes with LF line endings (headers when there is room). */
function messageText(user: string, size: number, n: number): Buffer {
  const header =
    `From: fill@example.org\nTo: ${user}@example.com\nSubject: overquota fill ${n}\n` +
    `Message-ID: <${Date.now()}.${n}.${randomBytes(4).toString('hex')}@overquota.test>\n\n`;
  const buf = Buffer.alloc(size, 'x');
  let start = 0;
  if (size > header.length) {
    buf.write(header, 0, 'utf8');
    start = header.length;
  }
  // Body lines of 76 bytes (75 x + LF); the last byte is a LF when there is a body.
  for (let i = start + 75; i < size; i += 76) buf[i] = 0x0a;
  if (size > start) buf[size - 1] = 0x0a;
  return buf;
}

function countLf(buf: Buffer): number {
  let n = 0;
  for (let i = buf.indexOf(0x0a); i !== -1; i = buf.indexOf(0x0a, i + 1)) n++;
  return n;
}

/** Read one SMTP/LMTP reply (possibly multi-line) from a line queue. */
class ReplyReader {
  private buf = '';
  private lines: string[] = [];
  private waiter: (() => void) | null = null;
  private error: Error | null = null;
  constructor(sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) !== -1) {
        this.lines.push(this.buf.slice(0, i).replace(/\r$/, ''));
        this.buf = this.buf.slice(i + 1);
      }
      this.wake();
    });
    sock.on('error', (e) => {
      this.error = e;
      this.wake();
    });
    sock.on('close', () => {
      this.error ??= new Error('LMTP connection closed');
      this.wake();
    });
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
  async reply(): Promise<string> {
    const out: string[] = [];
    for (;;) {
      const line = this.lines.shift();
      if (line === undefined) {
        if (this.error) throw new Error(`${this.error.message} (after ${JSON.stringify(out)})`);
        await new Promise<void>((r) => (this.waiter = r));
        continue;
      }
      out.push(line);
      if (!/^\d{3}-/.test(line)) return out.join('\n');
    }
  }
}

async function lmtpDeliver(port: number, user: string, bytes: number): Promise<string> {
  const sock = connect({ host: '127.0.0.1', port });
  const timer = setTimeout(() => sock.destroy(new Error('LMTP: no answer within 10 s')), 10000);
  const r = new ReplyReader(sock);
  const expect = async (code: RegExp, what: string): Promise<string> => {
    const reply = await r.reply();
    if (!code.test(reply)) throw new Error(`LMTP ${what}: ${reply}`);
    return reply;
  };
  try {
    await expect(/^220/, 'greeting');
    sock.write('LHLO overquota.test\r\n');
    await expect(/^250/, 'LHLO');
    sock.write('MAIL FROM:<sender@example.org>\r\n');
    await expect(/^250/, 'MAIL FROM');
    sock.write(`RCPT TO:<${user}@example.com>\r\n`);
    const rcpt = await r.reply();
    if (!/^250/.test(rcpt)) return rcpt;
    sock.write('DATA\r\n');
    await expect(/^354/, 'DATA');
    const text = messageText(user, Math.max(bytes, 1), 0).toString('latin1');
    const wire = text.replace(/\n/g, '\r\n').replace(/^\./gm, '..');
    sock.write(`${wire}${wire.endsWith('\r\n') ? '' : '\r\n'}.\r\n`);
    const result = await r.reply();
    sock.write('QUIT\r\n');
    return result;
  } finally {
    clearTimeout(timer);
    sock.end();
    sock.destroy();
  }
}

/** Start a private Dovecot for one test. Requires root and dovecot-core (+ dovecot-lmtpd for lmtp). */
export async function startDovecot(opts: StartDovecotOptions): Promise<DovecotInstance> {
  // A free port can be taken between freePort() and Dovecot's bind(): retry then.
  return withPortRetry(
    () => startOnce(opts),
    (err) => err instanceof Error && /Address already in use/.test(err.message),
  );
}

async function startOnce(opts: StartDovecotOptions): Promise<DovecotInstance> {
  const why = dovecotUnavailable({ lmtp: opts.lmtp });
  if (why) throw new Error(`startDovecot: ${why}`);
  const names = new Set<string>();
  for (const u of opts.users) {
    checkUser(u.name);
    if (names.has(u.name)) throw new Error(`startDovecot: user ${u.name} given twice`);
    names.add(u.name);
  }
  const tmp = await tempDir('overquota-dovecot-');
  const dir = tmp.path;
  const instanceName = basename(dir);
  const mailRoot = join(dir, 'mail');
  const configPath = join(dir, 'dovecot.conf');
  const logPath = join(dir, 'dovecot.log');
  const stderrPath = join(dir, 'dovecot.stderr');
  let entry: Supervised | undefined;
  try {
    // uid 5000 must traverse DIR to reach its home.
    await chmod(dir, 0o755);
    await vmailDir(mailRoot, 0o755);
    for (const u of opts.users) {
      await vmailDir(join(mailRoot, u.name));
      for (const sub of ['', 'cur', 'new', 'tmp']) await vmailDir(join(mailRoot, u.name, 'Maildir', sub));
    }
    const password = opts.doveadmPassword ?? randomBytes(12).toString('hex');
    const ports: Ports = {
      http: await freePort(),
      ...(opts.quotaStatusPort ? { quotaStatus: await freePort() } : {}),
      ...(opts.lmtp ? { lmtp: await freePort() } : {}),
    };
    // Read by the auth process, which runs as user dovecot.
    await writeFile(join(dir, 'users'), usersFile(mailRoot, opts.users), { mode: 0o644 });
    await writeFile(configPath, dovecotConf(dir, instanceName, opts, password, ports), { mode: 0o644 });

    entry = await startSupervised({
      name: 'dovecot',
      dir,
      command: [DOVECOT, '-c', configPath, '-F'],
      outputFile: stderrPath,
      cwd: dir,
    });
    const sup = entry.supervisor;

    const log = (): Promise<string> => readFile(logPath, 'utf8').catch(() => '');
    const describe = async (): Promise<string> =>
      `--- dovecot.stderr ---\n${existsSync(stderrPath) ? readFileSync(stderrPath, 'utf8') : ''}\n--- dovecot.log ---\n${await log()}`;

    const doveadmUrl = `http://127.0.0.1:${ports.http}/doveadm/v1`;
    const auth = basicAuth('doveadm', password);
    const http = (body: unknown, authorization: string = auth): Promise<{ status: number; body: string }> =>
      post(doveadmUrl, typeof body === 'string' ? body : JSON.stringify(body), authorization);

    // Ready when the HTTP API answers a command (Dovecot binds every listener before that).
    const probe = JSON.stringify([['quotaGet', { user: opts.users[0]?.name ?? 'overquota-nobody' }, 'ready']]);
    let res: { status: number; body: string } | undefined;
    await waitReady(sup, {
      timeoutMs: 10000,
      intervalMs: 20,
      probe: async () => {
        res = await post(doveadmUrl, probe, auth, 2000).catch(() => undefined);
        return res?.status === 200 && res.body.startsWith('[[');
      },
      onExit: async (status) => new Error(`startDovecot: dovecot exited (${status}) during startup\n${await describe()}`),
      onTimeout: async () =>
        new Error(`startDovecot: doveadm HTTP API on 127.0.0.1:${ports.http} not answering within 10 s (last: ${JSON.stringify(res)})\n${await describe()}`),
    });
    const pid = Number.parseInt(await readFile(join(dir, 'run', 'master.pid'), 'utf8'), 10);

    const doveadm = async (...args: string[]): Promise<string> => {
      const r = await run(DOVEADM, ['-c', configPath, ...args]);
      if (r.code !== 0) {
        const err = new Error(`doveadm ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`) as Error & { exitCode: number; stderr: string };
        err.exitCode = r.code;
        err.stderr = r.stderr;
        throw err;
      }
      return r.stdout;
    };
    const userHome = (user: string): string => {
      if (!names.has(user)) throw new Error(`dovecot: unknown user ${user} (users: ${[...names].join(', ')})`);
      return join(mailRoot, user);
    };
    const maildir = (user: string): string => join(userHome(user), 'Maildir');
    const recalc = async (user: string): Promise<void> => {
      await doveadm('quota', 'recalc', '-u', user);
    };
    let seq = 0;

    // The supervisor passes SIGTERM to the master; Dovecot stops its services, then sleeps
    // 1 s for its log process; the supervisor then kills the group and reaps everything.
    const stop = supervisedStop(entry, { label: 'startDovecot', graceMs: 5000, killGraceMs: 2000, groupPid: pid, cleanup: tmp.cleanup });

    return {
      dir,
      instanceName,
      pid,
      httpPort: ports.http,
      doveadmUrl,
      password,
      ...(opts.doveadmApiKey !== undefined ? { apiKey: opts.doveadmApiKey } : {}),
      ...(ports.quotaStatus !== undefined ? { quotaStatusPort: ports.quotaStatus } : {}),
      ...(ports.lmtp !== undefined ? { lmtpPort: ports.lmtp } : {}),
      mailRoot,
      configPath,
      maildir,
      doveadm,
      async quotaGet(user) {
        return parseQuotaTab(await doveadm('-f', 'tab', 'quota', 'get', '-u', user));
      },
      async fill(user, bytes, fillOpts = {}) {
        if (!Number.isInteger(bytes) || bytes < 0) throw new Error(`fill: bytes must be a non-negative integer, got ${bytes}`);
        const count = fillOpts.messages ?? 1;
        if (!Number.isInteger(count) || count < 1) throw new Error(`fill: messages must be a positive integer, got ${count}`);
        let box = maildir(user);
        if (fillOpts.folder !== undefined && fillOpts.folder !== 'INBOX') {
          if (!FOLDER_RE.test(fillOpts.folder)) throw new Error(`fill: bad folder name ${JSON.stringify(fillOpts.folder)}`);
          box = join(box, `.${fillOpts.folder}`);
          for (const sub of ['', 'cur', 'new', 'tmp']) await vmailDir(join(box, sub));
          const marker = join(box, 'maildirfolder');
          await writeFile(marker, '', { mode: 0o600 });
          await chown(marker, VMAIL_UID, VMAIL_UID);
        } else {
          for (const sub of ['cur', 'new', 'tmp']) await vmailDir(join(box, sub));
        }
        const base = Math.floor(bytes / count);
        for (let i = 0; i < count; i++) {
          const size = base + (i === 0 ? bytes - base * count : 0);
          if (size === 0) continue;
          const n = ++seq;
          const text = messageText(user, size, n);
          const now = Date.now();
          const name = `${Math.floor(now / 1000)}.M${(now % 1000) * 1000 + (n % 1000)}P${process.pid}Q${n}.overquota,S=${size},W=${size + countLf(text)}:2,`;
          const tmpPath = join(box, 'tmp', name);
          await writeFile(tmpPath, text, { mode: 0o600 });
          await chown(tmpPath, VMAIL_UID, VMAIL_UID);
          await rename(tmpPath, join(box, 'cur', name));
        }
        await recalc(user);
      },
      async empty(user) {
        // Indexes go too: otherwise Dovecot's next sync of the old index would see the vanished
        // files as expunges and subtract them from the recalculated usage a second time.
        const md = maildir(user);
        for (const entry of await readdir(md)) await rm(join(md, entry), { recursive: true, force: true });
        for (const sub of ['cur', 'new', 'tmp']) await vmailDir(join(md, sub));
        await recalc(user);
      },
      async expunge(user, mailbox = 'INBOX') {
        userHome(user);
        await doveadm('expunge', '-u', user, 'mailbox', mailbox, 'all');
      },
      async deliver(user, bytes) {
        if (ports.lmtp === undefined) throw new Error('deliver: start Dovecot with lmtp: true');
        userHome(user);
        return lmtpDeliver(ports.lmtp, user, bytes);
      },
      http,
      log,
      stop,
    };
  } catch (err) {
    if (entry) await stopSupervised(entry, { graceMs: 5000 });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}
