// Test helper: run a private, throw-away Exim 4.96 daemon (Debian's exim4-daemon-light) on a free
// loopback port, its RCPT ACL including postfix/exim/overquota.acl verbatim (only the policy
// service's port substituted) the way Debian's configuration does, and every recipient at
// example.com accepted (:blackhole: if it were delivered; it stays queued). No DNS, no syslog, nothing under /etc/exim4.
//
// Exim is never installed (exim4-daemon-light conflicts with postfix): scripts/exim-unpack.sh
// unpacks the Debian packages into a cache directory outside the repository, once per machine.
//
// Debian's binary looks up its compiled-in user "Debian-exim" before reading any configuration,
// and that user exists only where Exim is installed. Exim therefore runs in a private mount
// namespace (unshare) where /etc/passwd and /etc/group are bind-mounted copies with that user
// added on a free id: the host's files are never changed. Exim starts as root and its receiving
// processes drop to that user, so the instance DIR is 0755 and spool/ and log/ are the user's.
//
// Layout of an instance DIR: exim.conf, overquota.acl (the snippet, port substituted), etc/
// (passwd, group), spool/, log/ (mainlog, rejectlog, paniclog), output.log (the daemon's stdout
// and stderr). It runs under the perl supervisor of supervised.ts, which reaps every Exim process
// and removes DIR on stop(), and also when the test process dies without stop(). Needs root.
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { PERL, probeGreeting, startSupervised, stopSupervised, supervisedStop, waitReady, withPortRetry, type Supervised } from './supervised.js';

/** The unpack script; run by startExim() when the cached tree is missing. */
export const EXIM_UNPACK_SCRIPT = fileURLToPath(new URL('../../scripts/exim-unpack.sh', import.meta.url));
/** The operator's snippet, as README tells them to include it. */
export const EXIM_SNIPPET = fileURLToPath(new URL('../../postfix/exim/overquota.acl', import.meta.url));
/** The readsocket of the snippet, with overquota's default policy service address. */
export const SNIPPET_SOCKET = '${readsocket{inet:127.0.0.1:10033}';

/** $OVERQUOTA_EXIM_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/overquota/exim: the same default as the script. */
export function eximCacheDir(): string {
  const explicit = process.env.OVERQUOTA_EXIM_CACHE;
  if (explicit) return explicit;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overquota', 'exim');
}

/** The daemon and Debian's RCPT ACL inside an unpacked tree. */
export const eximTree = (root: string): { daemon: string; debianRcptAcl: string } => ({
  daemon: join(root, 'usr/sbin/exim4'),
  debianRcptAcl: join(root, 'etc/exim4/conf.d/acl/30_exim4-config_check_rcpt'),
});

const UNSHARE_CANDIDATES = ['/usr/bin/unshare', '/bin/unshare'];
const unsharePath = (): string | undefined => UNSHARE_CANDIDATES.find((p) => existsSync(p));

/** Debian's compiled-in Exim user (EXIM_USER in its build), looked up before the configuration is read. */
const EXIM_USER = 'Debian-exim';
/** Exim's host name: set in the configuration so that it never asks DNS or uname for one. */
const HOSTNAME = 'mta.example.com';
/** Bounds, in ms. */
const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const KILL_GRACE_MS = 2_000;
/** Ids tried for the private Exim user and group, from the top of the range Debian leaves unused. */
const FREE_ID_FROM = 64_000;
const FREE_ID_TO = 65_000;

/**
 * Why a private Exim cannot run here, or false: a test file throws it, it never skips.
 * A missing unpacked tree is not a reason (startExim() unpacks it) unless it cannot be fetched.
 */
export function eximUnavailable(): string | false {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    return 'needs root to run a private Exim (it starts as root, enters a mount namespace, mounts /etc/passwd)';
  }
  if (!unsharePath()) return 'unshare not found (Debian package util-linux): Exim needs a private mount namespace here';
  if (!existsSync(PERL)) return `${PERL} missing (Debian package perl-base): it supervises the Exim process`;
  const { daemon } = eximTree(join(eximCacheDir(), 'root'));
  if (!existsSync(daemon) && !existsSync('/usr/bin/apt-get')) {
    return `unpacked Exim missing (${daemon}) and no apt-get to fetch it: see ${EXIM_UNPACK_SCRIPT}`;
  }
  return false;
}

let ensured: Promise<string> | undefined;

/** Run scripts/exim-unpack.sh once per process; resolves to the unpacked tree (CACHE/root). */
export function ensureEximTree(): Promise<string> {
  ensured ??= new Promise<string>((resolve, reject) => {
    const cache = eximCacheDir();
    execFile('bash', [EXIM_UNPACK_SCRIPT, cache], { timeout: 330_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ensureEximTree: ${EXIM_UNPACK_SCRIPT} failed: ${(stderr || stdout || err.message).trim()}`));
      else resolve(join(cache, 'root'));
    });
  });
  ensured.catch(() => (ensured = undefined));
  return ensured;
}

/** postfix/exim/overquota.acl with its policy socket pointed at `policyPort`; nothing else changed. */
export function eximSnippet(policyPort: number): string {
  const text = readFileSync(EXIM_SNIPPET, 'utf8');
  const parts = text.split(SNIPPET_SOCKET);
  if (parts.length !== 2) throw new Error(`${EXIM_SNIPPET} must name ${SNIPPET_SOCKET} exactly once (found ${parts.length - 1})`);
  return parts.join(`\${readsocket{inet:127.0.0.1:${policyPort}}`);
}

export interface EximInstance {
  /** 127.0.0.1 port the daemon listens on. */
  smtpPort: number;
  /** The instance directory (removed by stop()). */
  dir: string;
  /** Exim's main log so far ('' if none yet): one line per accepted message, refusal and warning. */
  mainlog(): Promise<string>;
  /** SIGTERM (then SIGKILL), wait until every Exim process is reaped, remove DIR. Idempotent. */
  stop(): Promise<void>;
}

/**
 * The configuration: everything private, no DNS. The RCPT ACL has the shape of Debian's
 * (30_exim4-config_check_rcpt): relay refused, `require verify = recipient`, then the local ACL
 * file named by the macro CHECK_RCPT_LOCAL_ACL_FILE, then accept, as README tells operators.
 */
function eximConf(o: { dir: string; daemon: string; smtpPort: number }): string {
  const { dir } = o;
  return `# Generated by test/helpers/exim.ts for one test.
CHECK_RCPT_LOCAL_ACL_FILE = ${dir}/overquota.acl

primary_hostname = ${HOSTNAME}
qualify_domain = example.com
domainlist local_domains = example.com
exim_path = ${o.daemon}
spool_directory = ${dir}/spool
log_file_path = ${dir}/log/%slog
pid_file_path = ${dir}/exim.pid
daemon_smtp_ports = ${o.smtpPort}
local_interfaces = 127.0.0.1
# A port taken between freePort() and bind(): exit at once (the helper starts over on another).
daemon_startup_retries = 0
# Keep accepted messages in the spool (removed with DIR): delivery re-executes the daemon as the
# Exim user, which cannot reach a tree cached under /root.
queue_only = true
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
keep_environment =
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  require
    message = relay not permitted
    domains = +local_domains
  require
    verify = recipient
.ifdef CHECK_RCPT_LOCAL_ACL_FILE
.include CHECK_RCPT_LOCAL_ACL_FILE
.endif
  accept

begin routers

sink:
  driver = redirect
  domains = +local_domains
  data = :blackhole:
`;
}

/** The lowest id from FREE_ID_FROM used by no line of either passwd(5)/group(5) text. */
function freeId(passwd: string, group: string): number {
  const used = new Set<number>();
  for (const line of `${passwd}\n${group}`.split('\n')) {
    const id = Number(line.split(':')[2]);
    if (Number.isInteger(id)) used.add(id);
  }
  for (let id = FREE_ID_FROM; id <= FREE_ID_TO; id++) if (!used.has(id)) return id;
  throw new Error(`startExim: no free user and group id in ${FREE_ID_FROM}-${FREE_ID_TO}`);
}

/** Copies of the host's passwd and group with EXIM_USER added (or as they are, if the host has it). */
async function privateAccounts(dir: string): Promise<{ uid: number; gid: number }> {
  let passwd = await readFile('/etc/passwd', 'utf8');
  let group = await readFile('/etc/group', 'utf8');
  const known = passwd.split('\n').find((l) => l.startsWith(`${EXIM_USER}:`));
  let uid: number;
  let gid: number;
  if (known) {
    [uid, gid] = [Number(known.split(':')[2]), Number(known.split(':')[3])];
  } else {
    uid = gid = freeId(passwd, group);
    passwd = `${passwd.replace(/\n?$/, '\n')}${EXIM_USER}:x:${uid}:${gid}:Exim for overquota tests:/nonexistent:/usr/sbin/nologin\n`;
    if (!group.split('\n').some((l) => l.startsWith(`${EXIM_USER}:`))) group = `${group.replace(/\n?$/, '\n')}${EXIM_USER}:x:${gid}:\n`;
  }
  await writeFile(join(dir, 'etc/passwd'), passwd, { mode: 0o644 });
  await writeFile(join(dir, 'etc/group'), group, { mode: 0o644 });
  return { uid, gid };
}

const tail = (text: string, lines = 40): string => text.split('\n').slice(-lines).join('\n');

class PortInUse extends Error {}

/** Start a private Exim for one test file; its RCPT ACL asks overquota's policy service on `policyPort`. */
export async function startExim(opts: { policyPort: number }): Promise<EximInstance> {
  const why = eximUnavailable();
  if (why) throw new Error(`startExim: ${why}`);
  const root = await ensureEximTree();
  return withPortRetry(
    () => startOnce(root, opts.policyPort),
    (err) => err instanceof PortInUse,
  );
}

async function startOnce(root: string, policyPort: number): Promise<EximInstance> {
  const { daemon } = eximTree(root);
  const tmp = await tempDir('overquota-exim-');
  const dir = tmp.path;
  let entry: Supervised | undefined;
  try {
    // Exim's configuration reads a path up to white space; a quote would end an expansion.
    if (!/^[A-Za-z0-9/._-]+$/.test(dir)) throw new Error(`startExim: unusable instance directory ${dir} (set TMPDIR to a plain path)`);
    await chmod(dir, 0o755);
    await mkdir(join(dir, 'etc'), { mode: 0o755 });
    const { uid, gid } = await privateAccounts(dir);
    for (const sub of ['spool', 'log']) {
      await mkdir(join(dir, sub), { mode: 0o750 });
      await chown(join(dir, sub), uid, gid);
    }
    const smtpPort = await freePort();
    await writeFile(join(dir, 'overquota.acl'), eximSnippet(policyPort), { mode: 0o644 });
    await writeFile(join(dir, 'exim.conf'), eximConf({ dir, daemon, smtpPort }), { mode: 0o644 });

    const outputPath = join(dir, 'output.log');
    const readText = (p: string): Promise<string> => readFile(p, 'utf8').catch(() => '');
    const logs = async (): Promise<string> =>
      (await Promise.all(['output.log', 'log/paniclog', 'log/mainlog'].map(async (f) => `--- ${f} (last lines) ---\n${tail(await readText(join(dir, f)))}`))).join('\n');
    const script =
      `mount --bind '${dir}/etc/passwd' /etc/passwd && mount --bind '${dir}/etc/group' /etc/group && ` +
      `exec '${daemon}' -bdf -C '${dir}/exim.conf'`;
    const cmd = [unsharePath() ?? 'unshare', '--mount', '--propagation', 'private', '/bin/sh', '-c', script];
    entry = await startSupervised({ name: 'exim', dir, command: cmd, outputFile: outputPath });
    const sup = entry.supervisor;

    await waitReady(sup, {
      timeoutMs: READY_TIMEOUT_MS,
      intervalMs: 25,
      probe: () => probeGreeting(smtpPort, /^220 /),
      onExit: async (status) => {
        const text = await logs();
        if (/Address already in use/.test(text)) return new PortInUse(`startExim: 127.0.0.1:${smtpPort} already in use`);
        return new Error(`startExim: exim exited (${status}) during startup\n${text}`);
      },
      onTimeout: async () => new Error(`startExim: no SMTP greeting on 127.0.0.1:${smtpPort} within ${READY_TIMEOUT_MS} ms\n${await logs()}`),
    });
    const pid = Number.parseInt((await readText(join(dir, 'exim.pid'))).split('\n')[0] ?? '', 10);

    const stop = supervisedStop(entry, {
      label: 'startExim',
      graceMs: STOP_GRACE_MS,
      killGraceMs: KILL_GRACE_MS,
      ...(Number.isInteger(pid) ? { groupPid: pid } : {}),
      cleanup: tmp.cleanup,
    });
    return { smtpPort, dir, mainlog: () => readText(join(dir, 'log/mainlog')), stop };
  } catch (err) {
    if (entry) await stopSupervised(entry, { graceMs: STOP_GRACE_MS, killGraceMs: KILL_GRACE_MS });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}
