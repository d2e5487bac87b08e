// Test helper: run a private, throw-away Postfix instance (real /usr/lib/postfix/sbin/master) on a
// free loopback port, configured for one test: local domains example.com and localhost, every
// delivery discarded, no DNS, logging to DIR/maillog. See shared/references/test-env.md.
//
// Layout: DIR/etc (main.cf, master.cf), DIR/queue (queue_directory), DIR/data (data_directory),
// DIR/maillog, DIR/master.stderr. Needs root (Postfix runs its daemons as user postfix).
//
// master runs under the perl supervisor of supervised.ts (see SUPERVISOR there) that reaps every
// Postfix process and removes DIR on stop(), and also when the test process dies without stop(),
// even by SIGKILL.
import { chmod, mkdir, readFile, writeFile, appendFile, rm, utimes } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { delay, probeGreeting, run, startSupervised, stopSupervised, supervisedStop, waitReady, withPortRetry, type Supervised } from './supervised.js';

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

/** True if 127.0.0.1:port cannot be bound right now. */
function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(true));
    srv.listen({ host: '127.0.0.1', port, exclusive: true }, () => srv.close(() => resolve(false)));
  });
}

/** Start a private Postfix for one test. Requires root and the Debian postfix package. */
export async function startPostfix(opts: StartPostfixOptions): Promise<PostfixInstance> {
  // The free port can be taken between freePort() and master's bind(): retry then.
  return withPortRetry(
    () => startOnce(opts),
    (err) => err instanceof Error && /Address already in use/.test(err.message),
  );
}

async function startOnce(opts: StartPostfixOptions): Promise<PostfixInstance> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('startPostfix: must run as root (Postfix daemons switch to user postfix)');
  }
  const tmp = await tempDir('overquota-postfix-');
  const dir = tmp.path;
  const configDir = join(dir, 'etc');
  const queueDir = join(dir, 'queue');
  let entry: Supervised | undefined;
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
    entry = await startSupervised({
      name: 'postfix',
      dir,
      command: [POSTFIX_MASTER, '-c', configDir, '-d'],
      outputFile: stderrPath,
    });
    const sup = entry.supervisor;

    const maillog = (): Promise<string> => readFile(join(dir, 'maillog'), 'utf8').catch(() => '');
    const describe = async (): Promise<string> =>
      `--- master.stderr ---\n${readFileSync(stderrPath, 'utf8')}\n--- maillog ---\n${await maillog()}`;

    // Wait for the listener and a 220 greeting from smtpd.
    await waitReady(sup, {
      timeoutMs: 10000,
      intervalMs: 25,
      probe: () => probeGreeting(smtpPort, /^220[ -]/),
      onExit: async (status) => {
        // master logs its startup errors only to syslog (/dev/log), which does not exist here.
        const cause = (await portInUse(smtpPort))
          ? `bind 127.0.0.1:${smtpPort}: Address already in use`
          : 'master logs startup errors only to /dev/log (absent here); likely a bad master.cf line or ' +
            `a port in use (see them with: strace -f -e trace=bind,connect ${POSTFIX_MASTER} -c ${configDir} -d)`;
        return new Error(`startPostfix: master exited (${status}) during startup: ${cause}\n${await describe()}`);
      },
      onTimeout: async () => new Error(`startPostfix: no 220 greeting on 127.0.0.1:${smtpPort} within 10 s\n${await describe()}`),
    });
    const pid = Number.parseInt(await readFile(join(queueDir, 'pid', 'master.pid'), 'utf8'), 10);

    // The supervisor passes SIGTERM to master, which kills its process group; the supervisor
    // reaps everything (it is a child subreaper) and exits.
    const stop = supervisedStop(entry, { label: 'startPostfix', graceMs: 5000, killGraceMs: 2000, groupPid: pid, cleanup: tmp.cleanup });

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
    if (entry) await stopSupervised(entry, { graceMs: 3000 });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}
