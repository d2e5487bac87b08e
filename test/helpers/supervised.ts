/*
 * Shared by the helpers that run real daemons (postfix.ts, sendmail.ts, dovecot.ts, and in part
 * redis.ts):
 * - the perl supervisor (SUPERVISOR) and startSupervised() / stopSupervised() / supervisedStop();
 * - the set of live supervisors, told to stop everything (SIGUSR1) if the test process exits
 *   without stop();
 * - signalling and bounded waiting on a child, polling for readiness, retry on a port clash,
 *   probing an SMTP-style greeting, running a command.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { connect, type Socket } from 'node:net';

export interface Supervised {
  supervisor: ChildProcess;
  dir: string;
}

export const live = new Set<Supervised>();
let exitHookInstalled = false;

/** Registers a supervisor; the exit hook makes sure it is told to stop even without stop(). */
export function track(entry: Supervised): void {
  live.add(entry);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Belt and braces: the supervisors also get a signal from the kernel when we die (PDEATHSIG).
  process.on('exit', () => {
    // SIGUSR1 = "the test process is going away": stop everything and remove the directory.
    for (const l of live) signal(l.supervisor, 'SIGUSR1');
  });
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export function signal(child: ChildProcess, sig: NodeJS.Signals): void {
  if (exited(child)) return;
  try {
    child.kill(sig);
  } catch {
    /* already gone */
  }
}

/** Resolve true when `child` has exited, false after `ms` (the timer does not outlive the wait). */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (exited(child)) return resolve(true);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    child.once('exit', onExit);
  });
}

/** SIGKILL a whole process group (no-op for a missing/implausible pgid or an empty group). */
export function killGroup(pgid: number, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (!(pgid > 1)) return;
  try {
    process.kill(-pgid, sig);
  } catch {
    /* group empty */
  }
}

export const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The perl supervisor

export const PERL = '/usr/bin/perl';

/**
 * Supervisor for one daemon instance (perl-base is Essential on Debian, so always there):
 * - becomes a child subreaper, so the daemon's children are reparented to it and reaped at once
 *   when the daemon dies (PID 1 here reaps orphans only every second or two: they linger as
 *   zombies);
 * - asks for a signal when its parent (the test process) dies, even by SIGKILL (PR_SET_PDEATHSIG;
 *   SIGUSR1, because the parent's main thread can die first while getppid() still names it);
 * - starts the daemon in a new session, so it leads its process group (Postfix's master must: on
 *   SIGTERM it kills its group with kill(-getpid()); if that fails it exits 1 after a 1 s sleep
 *   and leaves its children running);
 * - passes SIGTERM/SIGINT/SIGHUP to the daemon, SIGKILLs the daemon's group once the daemon is
 *   gone and, with KILL_REPARENTED=1, every process still reparented to the supervisor (a Sendmail
 *   child that called setsid() is outside the group); waits until every child is reaped, exits
 *   with the daemon's status; if the test process is gone by then, it also removes DIR.
 * argv: NAME (for messages), KILL_REPARENTED (0 or 1), DIR, command...
 */
export const SUPERVISOR = String.raw`
use strict; use warnings; use POSIX ();
my ($name, $kill_reparented, $dir, @cmd) = @ARGV;
my $parent = getppid();
my $main = 0;
my $quit = 0;
my $orphaned = 0;
$SIG{$_} = sub { $quit = 1; kill 'TERM', $main if $main > 0 } for qw(TERM INT HUP);
# The kernel sends SIGUSR1 when the test process dies (SIGTERM would look like stop()).
$SIG{USR1} = sub { $orphaned = $quit = 1; kill 'TERM', $main if $main > 0 };
my $nr = { x86_64 => 157, aarch64 => 167, i686 => 172, armv7l => 172 }->{ (POSIX::uname())[4] };
$nr //= eval { require 'syscall.ph'; &SYS_prctl() };
if (defined $nr) {
  syscall($nr, 36, 1, 0, 0, 0);                 # PR_SET_CHILD_SUBREAPER
  syscall($nr, 1, POSIX::SIGUSR1(), 0, 0, 0);   # PR_SET_PDEATHSIG
}
$orphaned = $quit = 1 if getppid() != $parent;
sub kill_children {
  opendir(my $d, '/proc') or return;
  for my $p (grep { /^\d+$/ } readdir $d) {
    open(my $f, '<', "/proc/$p/stat") or next;
    my $st = <$f> // next;
    kill 'KILL', $p if $st =~ /\)\s+\S+\s+(\d+)/ && $1 == $$;
  }
}
$main = fork() // die "overquota $name supervisor: fork: $!\n";
if ($main == 0) {
  POSIX::setsid();
  exec { $cmd[0] } @cmd or POSIX::_exit(127);
}
kill 'TERM', $main if $quit;
my $status = 0;
my $main_done = 0;
for (;;) {
  my $w = waitpid(-1, 0);
  if ($w > 0) {
    if ($w == $main) { $status = $?; $main_done = 1; kill 'KILL', -$main; }
    kill_children() if $main_done && $kill_reparented;
    next;
  }
  last if $!{ECHILD};
}
# The test process died without stop(): nobody else will remove the instance directory.
system('/bin/rm', '-rf', '--', $dir) if $orphaned || getppid() != $parent;
exit($status & 127 ? 128 + ($status & 127) : $status >> 8);
`;

export interface StartSupervisedOptions {
  /** Daemon name for the supervisor's messages ("overquota NAME supervisor: ..."). */
  name: string;
  /** Instance directory: removed by the supervisor when the test process dies without stop(). */
  dir: string;
  /** The daemon command (argv[0] is a path); it runs in the foreground in a new session. */
  command: string[];
  /** File the supervisor's and the daemon's stdout/stderr are appended to. */
  outputFile: string;
  cwd?: string;
  /** Also SIGKILL every process reparented to the supervisor once the daemon is gone. */
  killReparented?: boolean;
}

/** Spawn the perl supervisor running `command` and track it (see SUPERVISOR). */
export async function startSupervised(opts: StartSupervisedOptions): Promise<Supervised> {
  const fd = openSync(opts.outputFile, 'a');
  let sup: ChildProcess;
  try {
    sup = spawn(PERL, ['-e', SUPERVISOR, opts.name, opts.killReparented ? '1' : '0', opts.dir, ...opts.command], {
      stdio: ['ignore', fd, fd],
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    });
  } finally {
    closeSync(fd);
  }
  // A forgotten stop() must not keep the test process alive; its exit still cleans up (PDEATHSIG).
  sup.unref();
  const spawnError = new Promise<Error>((resolve) => sup.once('error', resolve));
  if (sup.pid === undefined) throw await spawnError;
  const entry: Supervised = { supervisor: sup, dir: opts.dir };
  track(entry);
  return entry;
}

export interface StopSupervisedOptions {
  /** How long the daemon gets after SIGTERM before everything is SIGKILLed. */
  graceMs: number;
  /** How long to wait for the supervisor after SIGKILL. Default 2000. */
  killGraceMs?: number;
  /** The daemon's pid (it leads its process group): the group is SIGKILLed after the grace. */
  groupPid?: number;
}

/**
 * SIGTERM the supervisor (it passes it on, reaps everything and exits); after `graceMs` SIGKILL the
 * daemon's group and the supervisor. Untracks it. Resolves true once the supervisor is gone.
 */
export async function stopSupervised(entry: Supervised, o: StopSupervisedOptions): Promise<boolean> {
  const sup = entry.supervisor;
  signal(sup, 'SIGTERM');
  let done = await waitExit(sup, o.graceMs);
  if (!done) {
    if (o.groupPid !== undefined) killGroup(o.groupPid);
    signal(sup, 'SIGKILL');
    done = await waitExit(sup, o.killGraceMs ?? 2000);
  }
  live.delete(entry);
  return done;
}

/**
 * An idempotent stop() for an instance: stopSupervised(), then `cleanup` (remove DIR); rejects
 * when the supervisor did not exit in time (after cleaning up).
 */
export function supervisedStop(
  entry: Supervised,
  o: StopSupervisedOptions & { label: string; cleanup: () => Promise<void> },
): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  const killGraceMs = o.killGraceMs ?? 2000;
  return () =>
    (stopping ??= (async () => {
      const done = await stopSupervised(entry, { ...o, killGraceMs });
      await o.cleanup();
      if (!done) throw new Error(`${o.label}: instance ${entry.dir} did not stop within ${o.graceMs + killGraceMs} ms`);
    })());
}

export interface WaitReadyOptions {
  timeoutMs: number;
  /** Pause between probes. */
  intervalMs: number;
  /** True once the daemon is ready. */
  probe: () => Promise<boolean>;
  /** Called after a failed probe; may throw (e.g. a port clash seen in a log). */
  afterProbe?: () => void;
  /** The error for a supervisor that exited during startup (`status`: exit code or signal). */
  onExit: (status: number | NodeJS.Signals) => Promise<Error>;
  /** The error when not ready within `timeoutMs`. */
  onTimeout: () => Promise<Error>;
}

/** Poll `probe` until it succeeds; throws when the supervisor exits or time runs out. */
export async function waitReady(sup: ChildProcess, o: WaitReadyOptions): Promise<void> {
  const by = Date.now() + o.timeoutMs;
  for (;;) {
    if (exited(sup)) throw await o.onExit((sup.exitCode ?? sup.signalCode)!);
    if (await o.probe()) return;
    o.afterProbe?.();
    if (Date.now() > by) throw await o.onTimeout();
    await delay(o.intervalMs);
  }
}

/**
 * Run `start` (which picks fresh ports) up to `attempts` times while `isPortClash(err)`: a free
 * port can be taken between freePort() and the daemon's bind().
 */
export async function withPortRetry<T>(start: () => Promise<T>, isPortClash: (err: unknown) => boolean, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (!isPortClash(err) || attempt >= attempts) throw err;
    }
  }
}

/** Connect to 127.0.0.1:port and read the first reply line; true when it matches `accept`. */
export function probeGreeting(port: number, accept: RegExp): Promise<boolean> {
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
      if (buf.includes('\n')) finish(accept.test(buf));
    });
    sock.on('error', () => finish(false));
    sock.on('close', () => finish(false));
  });
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** execFile that never rejects: exit code (1 when killed or not started), stdout, stderr. */
export function run(cmd: string, args: string[], o: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { timeout: o.timeoutMs ?? 20000, encoding: 'utf8', maxBuffer: 16 << 20, env: o.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr: err && !stderr ? String(err.message) : stderr });
      },
    );
  });
}
