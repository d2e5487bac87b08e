// Test helper: run a private, throw-away Sendmail 8.17 daemon on a free loopback port, with one
// input milter (inet, on a port the test chooses) and every recipient at example.com delivered to a
// sink mailer that records the local part and throws the message away. No DNS, no syslog, nothing
// under /etc/mail. See shared/references/test-env.md ("Sendmail, private instance").
//
// Sendmail is never installed (sendmail-bin conflicts with postfix): scripts/sendmail-unpack.sh
// unpacks the Debian packages into a cache directory outside the repository, once per machine.
//
// Layout of an instance DIR: test.mc / test.cf (the configuration), etc/ (hosts, service.switch,
// helpfile), queue/ (mode 0700), deliver.sh (the sink mailer), delivered (one local part a line),
// traffic.log (sendmail -X: every SMTP line), debug.log (stdout/stderr of sendmail -d99.100).
//
// The host name here has no dot, and Sendmail would then sleep 60 s before reading its config, so
// it runs in private UTS + mount namespaces (unshare) with the host name mta.example.com and a
// private /etc/hosts bind-mounted over the real one. It runs under the perl supervisor of
// supervised.ts (see SUPERVISOR there; here it also kills processes reparented to it outside the
// daemon's group) that reaps every Sendmail process and removes DIR on stop(), and also when the
// test process dies without stop(), even by SIGKILL. Needs root.
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { PERL, probeGreeting, run, startSupervised, stopSupervised, supervisedStop, waitReady, withPortRetry, type Supervised } from './supervised.js';

/** The unpack script; run by startSendmail() when the cached tree is missing. */
export const SENDMAIL_UNPACK_SCRIPT = fileURLToPath(new URL('../../scripts/sendmail-unpack.sh', import.meta.url));

/**
 * Where the unpacked Sendmail lives (the tree is CACHE/root): $OVERQUOTA_SENDMAIL_CACHE, else
 * ${XDG_CACHE_HOME:-~/.cache}/overquota/sendmail — the same default as scripts/sendmail-unpack.sh.
 */
export function sendmailCacheDir(): string {
  const explicit = process.env.OVERQUOTA_SENDMAIL_CACHE;
  if (explicit) return explicit;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overquota', 'sendmail');
}

const treePaths = (root: string): { daemon: string; m4: string; cfDir: string } => ({
  daemon: join(root, 'usr/libexec/sendmail/sendmail'),
  m4: join(root, 'usr/bin/m4'),
  cfDir: join(root, 'usr/share/sendmail/cf'),
});

const UNSHARE_CANDIDATES = ['/usr/bin/unshare', '/bin/unshare'];
const unsharePath = (): string | undefined => UNSHARE_CANDIDATES.find((p) => existsSync(p));

/** Host name inside the instance's UTS namespace: it must contain a dot (see the header). */
const HOSTNAME = 'mta.example.com';
/** Bounds, in ms. */
const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000; // Sendmail takes ~1.5 s to exit after SIGTERM
const KILL_GRACE_MS = 2_000;

/**
 * Why a private Sendmail cannot run here, or false: a test file throws it, it never skips.
 * A missing unpacked tree is not a reason (startSendmail() unpacks it) unless it cannot be fetched.
 */
export function sendmailUnavailable(): string | false {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    return 'needs root to run a private Sendmail (it binds as root, enters namespaces, mounts /etc/hosts)';
  }
  if (!unsharePath()) return 'unshare not found (Debian package util-linux): Sendmail needs a private UTS namespace here';
  if (!existsSync(PERL)) return `${PERL} missing (Debian package perl-base): it supervises the Sendmail process`;
  const { daemon } = treePaths(join(sendmailCacheDir(), 'root'));
  if (!existsSync(daemon) && !existsSync('/usr/bin/apt-get')) {
    return `unpacked Sendmail missing (${daemon}) and no apt-get to fetch it: see ${SENDMAIL_UNPACK_SCRIPT}`;
  }
  return false;
}

let ensured: Promise<string> | undefined;

/** Run scripts/sendmail-unpack.sh once per process; resolves to the unpacked tree (CACHE/root). */
export function ensureSendmailTree(): Promise<string> {
  ensured ??= new Promise<string>((resolve, reject) => {
    const cache = sendmailCacheDir();
    execFile('bash', [SENDMAIL_UNPACK_SCRIPT, cache], { timeout: 330_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ensureSendmailTree: ${SENDMAIL_UNPACK_SCRIPT} failed: ${(stderr || stdout || err.message).trim()}`));
      else resolve(join(cache, 'root'));
    });
  });
  ensured.catch(() => (ensured = undefined));
  return ensured;
}

export interface StartSendmailOptions {
  /** The milter listens on inet 127.0.0.1:milterPort (it need not be up yet). */
  milterPort: number;
  /**
   * The F= of INPUT_MAIL_FILTER: 'T' tempfails, 'R' rejects when the milter is unavailable, '' lets
   * mail pass. Default 'T'. (With 'R' and the milter down at connect, Sendmail greets 554.)
   */
  milterFlags?: string;
  /** The T= of INPUT_MAIL_FILTER (C connect, S send, R read, E end-of-message timeouts). Default 'C:5s;S:10s;R:10s;E:30s'. */
  milterTimeouts?: string;
}

export interface SendmailInstance {
  /** 127.0.0.1 port the daemon listens on. */
  smtpPort: number;
  /** The instance directory (removed by stop()). */
  dir: string;
  /** pid of the sendmail daemon (it leads its own process group and session). */
  pid: number;
  /** The -X traffic log: every SMTP line of every session, prefixed by the session's pid ('' if none yet). */
  traffic(): Promise<string>;
  /**
   * Local parts the sink mailer was called with, in order. Delivery is interactive (done before the
   * 250 after DATA), so a delivery is listed as soon as sendEnvelope() returns.
   */
  delivered(): Promise<string[]>;
  /** SIGTERM (then SIGKILL), wait until every Sendmail process is reaped, remove DIR. Idempotent. */
  stop(): Promise<void>;
}


/** Placeholder for DIR in the .mc, replaced in the generated .cf (so m4 never sees the path). */
const DIR_TOKEN = '@@OVERQUOTA_DIR@@';

/** The .mc, with DIR_TOKEN for the instance directory. LOCAL_RULE_0 needs a TAB between LHS and RHS. */
function testMc(smtpPort: number, milterSpec: string): string {
  const D = DIR_TOKEN;
  return `divert(-1)
# Generated by test/helpers/sendmail.ts; ${D} stands for the instance directory.
divert(0)dnl
OSTYPE(\`linux')dnl
define(\`MAIL_SETTINGS_DIR', \`${D}/etc/')dnl
undefine(\`ALIAS_FILE')dnl
define(\`QUEUE_DIR', \`${D}/queue')dnl
define(\`STATUS_FILE', \`${D}/etc/statistics')dnl
define(\`HELP_FILE', \`${D}/etc/helpfile')dnl
define(\`confPID_FILE', \`${D}/sendmail.pid')dnl
define(\`confSERVICE_SWITCH_FILE', \`${D}/etc/service.switch')dnl
define(\`confDOMAIN_NAME', \`${HOSTNAME}')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`confBIND_OPTS', \`-DNSRCH -DEFNAMES')dnl
define(\`confTO_IDENT', \`0')dnl
define(\`confCHECK_ALIASES', \`False')dnl
define(\`confQUEUE_LA', \`99')dnl
define(\`confREFUSE_LA', \`99')dnl
define(\`confDELAY_LA', \`0')dnl
define(\`confMIN_FREE_BLOCKS', \`0')dnl
dnl Deliver before answering the end of DATA, so delivered() is current when the client is done.
define(\`confDELIVERY_MODE', \`interactive')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`accept_unqualified_senders')dnl
FEATURE(\`no_default_msa')dnl
DAEMON_OPTIONS(\`Port=${smtpPort}, Addr=127.0.0.1, Name=MTA')dnl
INPUT_MAIL_FILTER(\`quota', \`${milterSpec}')dnl
LOCAL_DOMAIN(\`example.com')dnl
MAILER(\`local')dnl
MAILER(\`smtp')dnl
MAILER_DEFINITIONS
Msink,	P=${D}/deliver.sh, F=lsDFMSn, S=EnvFromL/HdrFromL, R=EnvToL/HdrToL, T=DNS/RFC822/X-Unix, A=deliver.sh $u
LOCAL_RULE_0
R$+ < @ example.com . >	$#sink $: $1
R$+ < @ example.com >	$#sink $: $1
`;
}

const tail = (text: string, lines = 40): string => text.split('\n').slice(-lines).join('\n');

class PortInUse extends Error {}

/** Start a private Sendmail for one test. Requires root; unpacks Sendmail into the cache if needed. */
export async function startSendmail(opts: StartSendmailOptions): Promise<SendmailInstance> {
  const why = sendmailUnavailable();
  if (why) throw new Error(`startSendmail: ${why}`);
  const root = await ensureSendmailTree();
  // The free port can be taken between freePort() and Sendmail's bind() (Sendmail would then retry
  // for about a minute): start over on another port.
  return withPortRetry(
    () => startOnce(root, opts),
    (err) => err instanceof PortInUse,
  );
}

async function startOnce(root: string, opts: StartSendmailOptions): Promise<SendmailInstance> {
  const flags = opts.milterFlags ?? 'T';
  const timeouts = opts.milterTimeouts ?? 'C:5s;S:10s;R:10s;E:30s';
  if (!/^[A-Za-z]*$/.test(flags)) throw new Error(`startSendmail: bad milterFlags ${JSON.stringify(flags)}`);
  if (!/^[A-Za-z0-9:;]*$/.test(timeouts)) throw new Error(`startSendmail: bad milterTimeouts ${JSON.stringify(timeouts)}`);
  if (!Number.isInteger(opts.milterPort) || opts.milterPort < 1 || opts.milterPort > 65535) {
    throw new Error(`startSendmail: bad milterPort ${String(opts.milterPort)}`);
  }
  const milterSpec = [`S=inet:${opts.milterPort}@127.0.0.1`, ...(flags ? [`F=${flags}`] : []), ...(timeouts ? [`T=${timeouts}`] : [])].join(', ');
  const { daemon, m4, cfDir } = treePaths(root);

  const tmp = await tempDir('overquota-sendmail-');
  const dir = tmp.path;
  let entry: Supervised | undefined;
  try {
    // Sendmail option values end at a space or comma.
    if (!/^[A-Za-z0-9/._-]+$/.test(dir)) throw new Error(`startSendmail: unusable instance directory ${dir} (set TMPDIR to a plain path)`);
    const smtpPort = await freePort();
    await mkdir(join(dir, 'etc'), { mode: 0o755 });
    await mkdir(join(dir, 'queue'), { mode: 0o700 });
    await writeFile(join(dir, 'etc/hosts'), `127.0.0.1\t${HOSTNAME} mta localhost\n::1\tlocalhost ip6-localhost ip6-loopback\n`, { mode: 0o644 });
    await writeFile(join(dir, 'etc/service.switch'), 'hosts\tfiles\naliases\tfiles\n', { mode: 0o644 });
    await writeFile(join(dir, 'etc/helpfile'), '', { mode: 0o644 });
    await writeFile(join(dir, 'delivered'), '', { mode: 0o644 });
    // The sink mailer: read the message (Sendmail writes it to our stdin), record the local part.
    await writeFile(join(dir, 'deliver.sh'), `#!/bin/sh\ncat >/dev/null\nprintf '%s\\n' "$1" >>'${dir}/delivered'\n`, { mode: 0o755 });
    await chmod(join(dir, 'deliver.sh'), 0o755);

    const mc = testMc(smtpPort, milterSpec);
    await writeFile(join(dir, 'test.mc'), mc);
    const built = await run(m4, [`-D_CF_DIR_=${cfDir}/`, join(cfDir, 'm4/cf.m4'), join(dir, 'test.mc')]);
    if (built.code !== 0 || built.stderr.trim()) {
      throw new Error(`startSendmail: m4 failed (exit ${built.code})\n--- stderr ---\n${built.stderr}\n--- test.mc ---\n${mc}`);
    }
    const cf = built.stdout.split(DIR_TOKEN).join(dir);
    if (!cf.includes(`O QueueDirectory=${dir}/queue`) || !cf.includes(`Msink,`)) {
      throw new Error(`startSendmail: m4 output lacks the expected options; see ${join(dir, 'test.cf')}`);
    }
    await writeFile(join(dir, 'test.cf'), cf, { mode: 0o644 });

    const debugPath = join(dir, 'debug.log');
    const trafficPath = join(dir, 'traffic.log');
    const script =
      `hostname ${HOSTNAME} && mount --bind '${dir}/etc/hosts' /etc/hosts && ` +
      `exec '${daemon}' -d99.100 -bd -C '${dir}/test.cf' -X '${trafficPath}'`;
    const cmd = [unsharePath() ?? 'unshare', '--uts', '--mount', '--propagation', 'private', '/bin/sh', '-c', script];
    entry = await startSupervised({ name: 'sendmail', dir, command: cmd, outputFile: debugPath, killReparented: true });
    const sup = entry.supervisor;

    const readText = (p: string): Promise<string> => readFile(p, 'utf8').catch(() => '');
    const describe = async (): Promise<string> =>
      `--- debug.log (last lines) ---\n${tail(await readText(debugPath))}\n--- traffic.log (last lines) ---\n${tail(await readText(trafficPath))}`;

    // Any reply counts, not only 220: with F=R and the milter down, Sendmail greets
    // `554 ... not accepting messages`.
    await waitReady(sup, {
      timeoutMs: READY_TIMEOUT_MS,
      intervalMs: 25,
      probe: () => probeGreeting(smtpPort, /^\d{3}[ -]/),
      afterProbe: () => {
        if (/Address already in use/.test(readFileSync(debugPath, 'utf8'))) {
          throw new PortInUse(`startSendmail: 127.0.0.1:${smtpPort} already in use`);
        }
      },
      onExit: async (status) => new Error(`startSendmail: sendmail exited (${status}) during startup\n${await describe()}`),
      onTimeout: async () =>
        new Error(`startSendmail: no SMTP greeting on 127.0.0.1:${smtpPort} within ${READY_TIMEOUT_MS} ms\n${await describe()}`),
    });
    const pid = Number.parseInt((await readText(join(dir, 'sendmail.pid'))).split('\n')[0] ?? '', 10);

    // The supervisor passes SIGTERM on and reaps everything.
    const stop = supervisedStop(entry, {
      label: 'startSendmail',
      graceMs: STOP_GRACE_MS,
      killGraceMs: KILL_GRACE_MS,
      groupPid: pid,
      cleanup: tmp.cleanup,
    });

    return {
      smtpPort,
      dir,
      pid,
      traffic: () => readText(trafficPath),
      async delivered() {
        return (await readText(join(dir, 'delivered'))).split('\n').filter((l) => l !== '');
      },
      stop,
    };
  } catch (err) {
    if (entry) await stopSupervised(entry, { graceMs: STOP_GRACE_MS, killGraceMs: KILL_GRACE_MS });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}
