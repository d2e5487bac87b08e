// Test helper: run a private, throw-away Postfix instance (real /usr/lib/postfix/sbin/master) on a
// free loopback port, configured for one test: local domains example.com and localhost, every
// delivery discarded, no DNS, logging to DIR/maillog. See shared/references/test-env.md.
//
// Layout: DIR/etc (main.cf, master.cf), DIR/queue (queue_directory), DIR/data (data_directory),
// DIR/maillog, DIR/master.stderr. Needs root (Postfix runs its daemons as user postfix).
//
// master runs under a small perl supervisor (see SUPERVISOR) that reaps every Postfix process and
// removes DIR on stop(), and also when the test process dies without stop(), even by SIGKILL.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile, appendFile, rm, utimes } from 'node:fs/promises';
import { openSync, closeSync, existsSync, readFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { live, signal, track, waitExit, type Supervised } from './supervised.js';

export const POSTFIX_MASTER = '/usr/lib/postfix/sbin/master';

/**
 * Why a private Postfix cannot run here, or false: a test file throws it, it never skips.
 * Install the packages with scripts/install-deps.sh.
 */
export function postfixUnavailable(): string | false {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root to run a private Postfix';
  if (!existsSync(POSTFIX_MASTER)) return `${POSTFIX_MASTER} missing: run scripts/install-deps.sh (Debian package postfix)`;
  return false;
}

export interface StartPostfixOptions {
  /** Value of smtpd_recipient_restrictions, e.g. `check_policy_service inet:127.0.0.1:1234, permit_mynetworks, reject_unauth_destination`. */
  smtpdRecipientRestrictions: string;
  /** More main.cf parameters; applied last, so they override the harness defaults. */
  extraMain?: Record<string, string>;
  /** Raw master.cf lines appended as-is (e.g. a spawn(8) policy service). */
  extraMaster?: string[];
  /** Value of smtpd_milters, e.g. `inet:127.0.0.1:PORT`. */
  milters?: string;
}

export interface PostfixInstance {
  /** 127.0.0.1 port the smtpd listens on. */
  smtpPort: number;
  /** The instance directory (removed by stop()). */
  dir: string;
  /** config_directory (DIR/etc): use with `postfix -c` / `postconf -c`. */
  configDir: string;
  queueDir: string;
  /** pid of master (leader of the instance's process group and session). */
  pid: number;
  /** Current contents of DIR/maillog ('' if not written yet). Postfix logs asynchronously. */
  maillog(): Promise<string>;
  /** Poll the maillog until `pattern` matches (default 5 s); resolves to the matching line. */
  waitForLog(pattern: RegExp | string, timeoutMs?: number): Promise<string>;
  /** Run `postconf -c DIR/etc ...args` (e.g. `-e`, `name=value`), resolving to stdout. */
  postconf(...args: string[]): Promise<string>;
  /**
   * `postfix reload` after postconf changes; resolves once master logged the reload and ~1 s
   * passed (an already running smtpd may still answer the next connection with the old settings).
   */
  reload(): Promise<void>;
  /**
   * SIGTERM master (it kills its process group), wait until every process is reaped (bounded,
   * then SIGKILL), remove DIR. Idempotent. Read the maillog before this.
   */
  stop(): Promise<void>;
}

function killGroup(pgid: number, sig: NodeJS.Signals): void {
  if (!(pgid > 1)) return;
  try {
    process.kill(-pgid, sig);
  } catch {
    /* group empty */
  }
}

const PERL = '/usr/bin/perl';

/**
 * Supervisor for one instance (perl-base is Essential on Debian, so always there):
 * - becomes a child subreaper, so master's children are reparented to it and reaped at once when
 *   master dies (PID 1 here reaps orphans only every second or two: they linger as zombies);
 * - asks for a signal when its parent (the test process) dies, even by SIGKILL (PR_SET_PDEATHSIG;
 *   SIGUSR1, because the parent's main thread can die first while getppid() still names it);
 * - starts master in a new session: master must lead its process group, because on SIGTERM it
 *   kills its group with kill(-getpid()); if that fails it exits 1 after a 1 s sleep and leaves
 *   its children running;
 * - passes SIGTERM/SIGINT/SIGHUP to master, SIGKILLs master's group once master is gone, waits
 *   until every child is reaped, exits with master's status; if the test process is gone by
 *   then, it also removes the instance directory.
 * argv: DIR, master command...
 */
const SUPERVISOR = String.raw`
use strict; use warnings; use POSIX ();
my ($dir, @cmd) = @ARGV;
my $parent = getppid();
my $master = 0;
my $quit = 0;
my $orphaned = 0;
$SIG{$_} = sub { $quit = 1; kill 'TERM', $master if $master > 0 } for qw(TERM INT HUP);
# The kernel sends SIGUSR1 when the test process dies (SIGTERM would look like stop()).
$SIG{USR1} = sub { $orphaned = $quit = 1; kill 'TERM', $master if $master > 0 };
my $nr = { x86_64 => 157, aarch64 => 167, i686 => 172, armv7l => 172 }->{ (POSIX::uname())[4] };
$nr //= eval { require 'syscall.ph'; &SYS_prctl() };
if (defined $nr) {
  syscall($nr, 36, 1, 0, 0, 0);                 # PR_SET_CHILD_SUBREAPER
  syscall($nr, 1, POSIX::SIGUSR1(), 0, 0, 0);   # PR_SET_PDEATHSIG
}
$orphaned = $quit = 1 if getppid() != $parent;
$master = fork() // die "overquota postfix supervisor: fork: $!\n";
if ($master == 0) {
  POSIX::setsid();
  exec { $cmd[0] } @cmd or POSIX::_exit(127);
}
kill 'TERM', $master if $quit;
my $status = 0;
for (;;) {
  my $w = waitpid(-1, 0);
  if ($w > 0) {
    if ($w == $master) { $status = $?; kill 'KILL', -$master; }
    next;
  }
  last if $!{ECHILD};
}
# The test process died without stop(): nobody else will remove the instance directory.
system('/bin/rm', '-rf', '--', $dir) if $orphaned || getppid() != $parent;
exit($status & 127 ? 128 + ($status & 127) : $status >> 8);
`;

function run(cmd: string, args: string[], timeoutMs = 20000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr: err && !stderr ? String(err.message) : stderr });
    });
  });
}

async function mustRun(cmd: string, args: string[], what: string, dir: string): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) {
    const log = await readFile(join(dir, 'maillog'), 'utf8').catch(() => '');
    const hint =
      !r.stdout.trim() && !log.trim()
        ? '\n(Postfix exits 1 without a word when maillog_file is not under maillog_file_prefixes or cannot be written)'
        : '';
    throw new Error(
      `${what} failed (exit ${r.code}): ${cmd} ${args.join(' ')}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}\n--- maillog ---\n${log}${hint}`,
    );
  }
  return r.stdout;
}

function mainCf(dir: string, opts: StartPostfixOptions): string {
  const params: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    myhostname: 'mta.example.com',
    mydomain: 'example.com',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    mydestination: 'example.com, localhost',
    // Accept any local part, throw the mail away.
    local_recipient_maps: '',
    local_transport: 'discard:local',
    alias_maps: '',
    alias_database: '',
    // Nothing ever leaves the machine (relaying from mynetworks is allowed by default).
    default_transport: 'discard:remote',
    relay_transport: 'discard:relay',
    // No DNS: no reverse lookup of the client (it logs as unknown[127.0.0.1]), no MX lookups.
    smtpd_peername_lookup: 'no',
    smtp_host_lookup: 'native',
    lmtp_host_lookup: 'native',
    biff: 'no',
    // No /dev/log here: log to a file. Its folder must be in maillog_file_prefixes, or
    // `postfix check` / master exit 1 without a word.
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: `/var, /dev/stdout, ${dir}`,
    smtpd_recipient_restrictions: opts.smtpdRecipientRestrictions,
    ...(opts.milters !== undefined ? { smtpd_milters: opts.milters } : {}),
    ...opts.extraMain,
  };
  return (
    '# Generated by test/helpers/postfix.ts\n' +
    Object.entries(params)
      .map(([k, v]) => {
        if (/[\r\n]/.test(k + v)) throw new Error(`startPostfix: main.cf ${k} must be a single line`);
        return `${k} = ${v}`;
      })
      .join('\n') +
    '\n'
  );
}

/** Connect and read the first reply line; true on a 220 greeting. */
function probeGreeting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    let buf = '';
    let settled = false;
    const sock: Socket = connect({ host: '127.0.0.1', port });
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ok) sock.end('QUIT\r\n');
      else sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), 2000);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) finish(/^220[ -]/.test(buf));
    });
    sock.on('error', () => finish(false));
    sock.on('close', () => finish(false));
  });
}

/** True if 127.0.0.1:port cannot be bound right now. */
function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(true));
    srv.listen({ host: '127.0.0.1', port, exclusive: true }, () => srv.close(() => resolve(false)));
  });
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Start a private Postfix for one test. Requires root and the Debian postfix package. */
export async function startPostfix(opts: StartPostfixOptions): Promise<PostfixInstance> {
  let lastError: unknown;
  // The free port can be taken between freePort() and master's bind(): retry then.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(opts);
    } catch (err) {
      lastError = err;
      if (!(err instanceof Error && /Address already in use/.test(err.message))) throw err;
    }
  }
  throw lastError;
}

async function startOnce(opts: StartPostfixOptions): Promise<PostfixInstance> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('startPostfix: must run as root (Postfix daemons switch to user postfix)');
  }
  const tmp = await tempDir('overquota-postfix-');
  const dir = tmp.path;
  const configDir = join(dir, 'etc');
  const queueDir = join(dir, 'queue');
  let supervisor: ChildProcess | undefined;
  try {
    // Postfix (user postfix) and spawn(8) children (e.g. user nobody) must be able to traverse DIR.
    await chmod(dir, 0o755);
    // The config dir is kept apart from the queue: `postfix check` warns about every file in
    // config_directory that is not owned by root.
    await mkdir(configDir, { mode: 0o755 });
    await mkdir(queueDir, { mode: 0o755 }); // must exist; `postfix check` creates its subdirs
    const smtpPort = await freePort();
    await writeFile(join(configDir, 'main.cf'), mainCf(dir, opts), { mode: 0o644 });
    await writeFile(join(configDir, 'master.cf'), await readFile('/etc/postfix/master.cf', 'utf8'), { mode: 0o644 });
    // Postfix lets a "hot" main.cf cool down first: any Postfix program that reads a main.cf
    // modified less than ~2 s ago sleeps in 0.3 s steps until it is older (dict_load_file).
    // Backdate the config files after every change, or each postconf/postfix call costs ~2 s.
    const coolDown = async (): Promise<void> => {
      const past = new Date(Date.now() - 60_000);
      for (const f of ['main.cf', 'master.cf']) await utimes(join(configDir, f), past, past).catch(() => {});
    };
    await coolDown();
    const postconf = async (...args: string[]): Promise<string> => {
      const out = await mustRun('postconf', ['-c', configDir, ...args], 'postconf', dir);
      await coolDown();
      return out;
    };
    await postconf('-M#', 'smtp/inet');
    await postconf('-M', `127.0.0.1:${smtpPort}/inet = 127.0.0.1:${smtpPort} inet n - n - - smtpd`);
    if (opts.extraMaster?.length) await appendFile(join(configDir, 'master.cf'), `${opts.extraMaster.join('\n')}\n`);
    await postconf('-F', '*/*/chroot = n'); // Debian chroots most services
    // Creates the queue subdirectories and data_directory with the right owners, and validates.
    await mustRun('postfix', ['-c', configDir, 'check'], 'postfix check', dir);

    const stderrPath = join(dir, 'master.stderr');
    const errFd = openSync(stderrPath, 'a');
    try {
      supervisor = spawn(PERL, ['-e', SUPERVISOR, dir, POSTFIX_MASTER, '-c', configDir, '-d'], {
        stdio: ['ignore', errFd, errFd],
      });
    } finally {
      closeSync(errFd);
    }
    // A forgotten stop() must not keep the test process alive; its exit still cleans up (PDEATHSIG).
    supervisor.unref();
    const sup = supervisor;
    const spawnError = new Promise<Error>((resolve) => sup.once('error', resolve));
    if (sup.pid === undefined) throw await spawnError;
    const entry: Supervised = { supervisor: sup, dir };
    track(entry);

    const maillog = (): Promise<string> => readFile(join(dir, 'maillog'), 'utf8').catch(() => '');
    const describe = async (): Promise<string> =>
      `--- master.stderr ---\n${readFileSync(stderrPath, 'utf8')}\n--- maillog ---\n${await maillog()}`;

    // Wait for the listener and a 220 greeting from smtpd.
    const readyBy = Date.now() + 10000;
    for (;;) {
      if (sup.exitCode !== null || sup.signalCode !== null) {
        // master logs its startup errors only to syslog (/dev/log), which does not exist here.
        const cause = (await portInUse(smtpPort))
          ? `bind 127.0.0.1:${smtpPort}: Address already in use`
          : 'master logs startup errors only to /dev/log (absent here); likely a bad master.cf line or ' +
            `a port in use (see them with: strace -f -e trace=bind,connect ${POSTFIX_MASTER} -c ${configDir} -d)`;
        throw new Error(`startPostfix: master exited (${sup.exitCode ?? sup.signalCode}) during startup: ${cause}\n${await describe()}`);
      }
      if (await probeGreeting(smtpPort)) break;
      if (Date.now() > readyBy) throw new Error(`startPostfix: no 220 greeting on 127.0.0.1:${smtpPort} within 10 s\n${await describe()}`);
      await delay(25);
    }
    const pid = Number.parseInt(await readFile(join(queueDir, 'pid', 'master.pid'), 'utf8'), 10);

    let stopping: Promise<void> | undefined;
    const stop = (): Promise<void> =>
      (stopping ??= (async () => {
        // The supervisor passes SIGTERM to master, which kills its process group; the supervisor
        // reaps everything (it is a child subreaper) and exits.
        signal(sup, 'SIGTERM');
        let done = await waitExit(sup, 5000);
        if (!done) {
          killGroup(pid, 'SIGKILL');
          signal(sup, 'SIGKILL');
          done = await waitExit(sup, 2000);
        }
        live.delete(entry);
        await tmp.cleanup();
        if (!done) throw new Error(`startPostfix: instance ${dir} did not stop within 7 s`);
      })());

    return {
      smtpPort,
      dir,
      configDir,
      queueDir,
      pid,
      maillog,
      async waitForLog(pattern, timeoutMs = 5000) {
        const re = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
        const by = Date.now() + timeoutMs;
        for (;;) {
          const line = (await maillog()).split('\n').find((l) => re.test(l));
          if (line !== undefined) return line;
          if (Date.now() > by) throw new Error(`waitForLog: ${String(re)} not in maillog after ${timeoutMs} ms\n${await describe()}`);
          await delay(50);
        }
      },
      postconf,
      async reload() {
        const before = (await maillog()).split('\n').filter((l) => /postfix\/master\[\d+\]: reload/.test(l)).length;
        await mustRun('postfix', ['-c', configDir, 'reload'], 'postfix reload', dir);
        const by = Date.now() + 5000;
        while ((await maillog()).split('\n').filter((l) => /postfix\/master\[\d+\]: reload/.test(l)).length <= before) {
          if (Date.now() > by) throw new Error(`reload: master did not log a reload within 5 s\n${await describe()}`);
          await delay(25);
        }
        await delay(1100);
      },
      stop,
    };
  } catch (err) {
    if (supervisor) {
      const sup = supervisor;
      signal(sup, 'SIGTERM');
      if (!(await waitExit(sup, 3000))) signal(sup, 'SIGKILL');
      for (const l of live) if (l.supervisor === sup) live.delete(l);
    }
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}
