// Test helper: private, throw-away Redis servers for one test (plain TCP, unix socket, password,
// ACL user, TLS), a small Redis Cluster, and a master + Sentinel pair. See
// shared/references/test-env.md (Redis part). Everything listens on free loopback ports or on a
// socket inside a private temporary directory; nothing ever touches 6379/26379.
//
// Every server runs in the foreground (`daemonize no`) as a direct child of the test process:
// - under `setpriv --pdeathsig KILL` when util-linux setpriv exists, so the kernel kills it even
//   when the test process itself is SIGKILLed (the death signal survives the exec);
// - registered in a module-level set; a process 'exit' hook SIGKILLs whatever is still running
//   and removes the temporary directories.
// No persistence: `--save '' --appendonly no`. Logs go to DIR/*.log (shown in startup errors).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { tempDir, type TempDir } from './tmp.js';
import { delay, exited, run, signal, waitExit, withPortRetry as retryOnPortClash } from './supervised.js';

export const REDIS_SERVER = '/usr/bin/redis-server';
export const REDIS_CLI = '/usr/bin/redis-cli';
const SETPRIV = '/usr/bin/setpriv';
const OPENSSL = 'openssl';
const READY_TIMEOUT_MS = 5000;

/** Why a private Redis cannot run here, or false. */
export function redisUnavailable(): string | false {
  for (const bin of [REDIS_SERVER, REDIS_CLI]) {
    if (!existsSync(bin)) return `${bin} missing: apt-get install redis-server redis-tools (or run scripts/install-deps.sh)`;
  }
  return false;
}

export interface StartRedisOptions {
  /** Listen only on DIR/redis.sock (mode 700), no TCP (`port` is 0, `url` is the socket path). */
  unixSocket?: boolean;
  /** `requirepass` (password of the `default` user). */
  password?: string;
  /**
   * An extra ACL user with full access (`on >PASS ~* &* +@all`). Unless `password` is given too,
   * the `default` user is switched off, so only this user can connect. `url` and `cli()` use it.
   */
  aclUser?: { name: string; password: string };
  /**
   * TLS only (`--port 0 --tls-port PORT`), with a throw-away EC CA and server certificate
   * (SAN IP:127.0.0.1, DNS:localhost) in DIR; clients need `caFile`. No client certificates.
   */
  tls?: boolean;
}

export interface RedisServer {
  /** TCP (or TLS) port on 127.0.0.1; 0 when unix-only. */
  port: number;
  /** DIR/redis.sock when `unixSocket`. */
  socketPath?: string;
  /**
   * What a client is pointed at: `redis://[user:pass@]127.0.0.1:PORT`, `rediss://...` for TLS
   * (user and password percent-encoded), or the bare socket path for unix (then pass
   * `username`/`password` separately).
   */
  url: string;
  /** The user `url` and `cli()` authenticate as (the ACL user), if any. */
  username?: string;
  /** The password `url` and `cli()` use, if any. */
  password?: string;
  /** CA certificate (PEM file) that signed the server certificate, when `tls`. */
  caFile?: string;
  /** Private directory: logs (redis.log, redis.stderr), TLS files. Removed by stop(). */
  dir: string;
  /** pid of the current redis-server process (changes on restart()). */
  pid: number;
  /**
   * Run `redis-cli` against this server with the right connection and auth options; resolves to
   * stdout, trimmed. Rejects only when redis-cli exits non-zero (e.g. cannot connect): an error
   * reply comes back as text such as `ERR ...` / `NOAUTH ...`, like redis-cli prints it.
   */
  cli(...args: string[]): Promise<string>;
  /** SIGKILL the server (a crash); DIR is kept, so restart() works. */
  kill(): Promise<void>;
  /** Start it again with the same port/socket and settings; resolves once it answers PING. */
  restart(): Promise<void>;
  /** SIGTERM (no save), wait (bounded, then SIGKILL), remove DIR. Idempotent. */
  stop(): Promise<void>;
}

export interface RedisCluster {
  /** The masters, in `redis-cli --cluster create` order (slots 0.. first). */
  nodes: { port: number; pid: number }[];
  /** Comma-separated `redis://127.0.0.1:PORT` list of all nodes. */
  url: string;
  /** Directory with the nodes' logs (redis-PORT.log) and nodes-PORT.conf files. */
  dir: string;
  /** `redis-cli -c -p FIRSTPORT ...args` (follows MOVED redirects); stdout, trimmed. */
  cli(...args: string[]): Promise<string>;
  /** Stop every node, remove the directory. Idempotent. */
  stop(): Promise<void>;
}

export interface RedisSentinelSetup {
  masterPort: number;
  sentinelPort: number;
  masterName: 'mymaster';
  /** `redis://127.0.0.1:SENTINELPORT` (the Sentinel, not the master). */
  url: string;
  /** Directory with sentinel.conf (rewritten by Sentinel), master.log, sentinel.log. */
  dir: string;
  /** Stop the Sentinel and the master, remove the directory. Idempotent. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping

const liveChildren = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) signal(child, 'SIGKILL');
    for (const dir of liveDirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

/** SIGTERM (Redis shuts down without saving: no save points), then SIGKILL after `graceMs`. */
async function terminate(child: ChildProcess, graceMs = 3000): Promise<void> {
  signal(child, 'SIGTERM');
  if (!(await waitExit(child, graceMs))) {
    signal(child, 'SIGKILL');
    await waitExit(child, 2000);
  }
  liveChildren.delete(child);
}

async function killNow(child: ChildProcess): Promise<void> {
  signal(child, 'SIGKILL');
  await waitExit(child, 2000);
  liveChildren.delete(child);
}

/** A temp dir that the exit hook removes too. */
async function trackedDir(prefix: string): Promise<TempDir> {
  const tmp = await tempDir(prefix);
  liveDirs.add(tmp.path);
  installExitHook();
  return {
    path: tmp.path,
    cleanup: async () => {
      await tmp.cleanup();
      liveDirs.delete(tmp.path);
    },
  };
}

/**
 * Spawn redis-server (foreground) with stdout/stderr appended to `stderrFile`. Resolves once the
 * process exists (not yet ready).
 */
async function launch(args: string[], stderrFile: string): Promise<ChildProcess> {
  const why = redisUnavailable();
  if (why) throw new Error(`redis test helper: ${why}`);
  const [cmd, argv] = existsSync(SETPRIV)
    ? [SETPRIV, ['--pdeathsig', 'KILL', '--', REDIS_SERVER, ...args]]
    : [REDIS_SERVER, args];
  const fd = openSync(stderrFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(cmd, argv, { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  // A forgotten stop() must not keep the test process alive; the exit hook still kills it.
  child.unref();
  if (child.pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`redis test helper: cannot spawn ${cmd}: ${err.message}`);
  }
  child.on('error', () => {}); // e.g. kill() on a dead child; never crash the test process
  liveChildren.add(child);
  installExitHook();
  return child;
}

type ProbeTarget = { port: number; tls?: boolean } | { path: string };

/**
 * Send an inline PING; true on any reply line except -LOADING (a -NOAUTH reply also proves the
 * server accepts commands).
 */
function probe(target: ProbeTarget): Promise<boolean> {
  return new Promise((resolve) => {
    let buf = '';
    let settled = false;
    let sock: Socket;
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), 1000);
    const send = (): void => {
      sock.write('PING\r\n');
    };
    if ('path' in target) sock = netConnect({ path: target.path }, send);
    else if (target.tls) {
      // Readiness only: the certificate itself is checked by the tests' clients.
      sock = tlsConnect({ host: '127.0.0.1', port: target.port, rejectUnauthorized: false }, send);
    } else sock = netConnect({ host: '127.0.0.1', port: target.port }, send);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\r\n')) finish(/^[+-]/.test(buf) && !buf.startsWith('-LOADING'));
    });
    sock.on('error', () => finish(false));
    sock.on('close', () => finish(false));
  });
}

async function tail(file: string, lines = 40): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '(missing)');
  return text.split('\n').slice(-lines).join('\n');
}

class StartupError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
  }
}

/** Poll PING until it answers; on exit or timeout, kill the child and throw with the logs. */
async function waitReady(child: ChildProcess, target: ProbeTarget, what: string, logs: string[]): Promise<void> {
  const by = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const dead = exited(child);
    if (!dead && (await probe(target))) return;
    if (dead || Date.now() > by) {
      await killNow(child);
      const texts = await Promise.all(logs.map(async (f) => `--- ${f} ---\n${await tail(f)}`));
      const why = dead ? `exited (${child.exitCode ?? child.signalCode}) during startup` : `no PING reply within ${READY_TIMEOUT_MS} ms`;
      const inUse = texts.some((t) => /Address already in use/i.test(t));
      throw new StartupError(`${what}: ${why}\n${texts.join('\n')}`, inUse);
    }
    await delay(15);
  }
}

/** Retry `fn` (which picks fresh ports) when a freePort() race made the bind fail. */
function withPortRetry<T>(fn: () => Promise<T>): Promise<T> {
  return retryOnPortClash(fn, (err) => err instanceof StartupError && err.addressInUse);
}

async function redisCli(connArgs: string[], args: string[], password?: string): Promise<string> {
  const env = { ...process.env };
  delete env.REDISCLI_AUTH;
  // The password goes through the environment: no "-a is not safe" warning, not in argv.
  if (password !== undefined) env.REDISCLI_AUTH = password;
  const r = await run(REDIS_CLI, [...connArgs, ...args], { env, timeoutMs: 10000 });
  if (r.code !== 0) {
    throw new Error(`redis-cli ${[...connArgs, ...args].join(' ')} exited ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`);
  }
  return r.stdout.trim();
}

const BASE_ARGS = (dir: string, logfile: string): string[] => [
  '--daemonize', 'no',
  '--save', '',
  '--appendonly', 'no',
  '--dir', dir,
  '--logfile', logfile,
];

// ---------------------------------------------------------------------------------------------
// TLS material

async function makeTlsFiles(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const f = (n: string): string => join(dir, n);
  const steps: string[][] = [
    ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', f('ca.key')],
    ['req', '-x509', '-new', '-key', f('ca.key'), '-subj', '/CN=overquota test CA', '-days', '2', '-out', f('ca.crt')],
    ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', f('server.key')],
    ['req', '-new', '-key', f('server.key'), '-subj', '/CN=localhost', '-out', f('server.csr')],
    ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-set_serial', '1',
      '-days', '2', '-extfile', f('server.ext'), '-out', f('server.crt')],
  ];
  await writeFile(
    f('server.ext'),
    'subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n' +
      'keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n',
  );
  for (const args of steps) {
    const r = await run(OPENSSL, args);
    if (r.code !== 0) throw new Error(`startRedis: openssl ${args.join(' ')} failed (exit ${r.code}): ${r.stderr}`);
  }
  return { ca: f('ca.crt'), cert: f('server.crt'), key: f('server.key') };
}

let tlsSupport: Promise<string | false> | undefined;

/** Why this redis-server cannot do TLS, or false (checked once: `--tls-port` is a build option). */
function tlsUnsupported(): Promise<string | false> {
  return (tlsSupport ??= (async () => {
    // A build without TLS (BUILD_TLS=no) is not linked against libssl and rejects every tls-*
    // directive at startup. Debian 12's redis-server 7.0 is built with TLS.
    const ldd = await run('ldd', [REDIS_SERVER]);
    if (ldd.code !== 0 || /libssl\.so/.test(ldd.stdout)) return false; // no ldd: let startup tell
    return `${REDIS_SERVER} was built without TLS support (not linked against libssl)`;
  })());
}

// ---------------------------------------------------------------------------------------------
// startRedis

/** Start one private redis-server; resolves once it answers PING. */
export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  if (opts.tls && opts.unixSocket) throw new Error('startRedis: tls and unixSocket cannot be combined (Redis unix sockets are plain)');
  if (opts.tls) {
    const why = await tlsUnsupported();
    if (why) throw new Error(`startRedis({ tls: true }): ${why}`);
  }
  for (const [k, v] of [['password', opts.password], ['aclUser.password', opts.aclUser?.password], ['aclUser.name', opts.aclUser?.name]] as const) {
    if (v !== undefined && (v === '' || /[\r\n\0]/.test(v) || v.startsWith('--') || (k === 'aclUser.name' && /\s/.test(v)))) {
      throw new Error(`startRedis: unusable ${k} ${JSON.stringify(v)}`);
    }
  }

  const tmp = await trackedDir('overquota-redis-');
  const dir = tmp.path;
  try {
    const logFile = join(dir, 'redis.log');
    const stderrFile = join(dir, 'redis.stderr');
    const tlsFiles = opts.tls ? await makeTlsFiles(dir) : undefined;
    const socketPath = opts.unixSocket ? join(dir, 'redis.sock') : undefined;

    const authArgs: string[] = [];
    if (opts.password !== undefined) authArgs.push('--requirepass', opts.password);
    if (opts.aclUser) {
      authArgs.push('--user', opts.aclUser.name, 'on', `>${opts.aclUser.password}`, '~*', '&*', '+@all');
      if (opts.password === undefined) authArgs.push('--user', 'default', 'off');
    }
    const username = opts.aclUser?.name;
    const password = opts.aclUser ? opts.aclUser.password : opts.password;

    const argsFor = (port: number): string[] => {
      const listen = socketPath
        ? ['--port', '0', '--unixsocket', socketPath, '--unixsocketperm', '700']
        : tlsFiles
          ? ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1',
             '--tls-cert-file', tlsFiles.cert, '--tls-key-file', tlsFiles.key,
             '--tls-ca-cert-file', tlsFiles.ca, '--tls-auth-clients', 'no']
          : ['--port', String(port), '--bind', '127.0.0.1'];
      return [...listen, '--protected-mode', 'no', ...BASE_ARGS(dir, logFile), ...authArgs];
    };
    const targetFor = (port: number): ProbeTarget => (socketPath ? { path: socketPath } : { port, tls: !!tlsFiles });

    const bootOn = async (port: number): Promise<ChildProcess> => {
      const child = await launch(argsFor(port), stderrFile);
      await waitReady(child, targetFor(port), `startRedis (${socketPath ?? `127.0.0.1:${port}`})`, [logFile, stderrFile]);
      return child;
    };

    let port = 0;
    const child0 = await withPortRetry(async () => {
      port = socketPath ? 0 : await freePort();
      return bootOn(port);
    });
    let child = child0;

    const connArgs: string[] = socketPath ? ['-s', socketPath] : ['-h', '127.0.0.1', '-p', String(port)];
    if (tlsFiles) connArgs.push('--tls', '--cacert', tlsFiles.ca);
    if (username !== undefined) connArgs.push('--user', username);
    connArgs.push('--no-auth-warning');

    const auth =
      password === undefined ? '' : `${username === undefined ? '' : encodeURIComponent(username)}:${encodeURIComponent(password)}@`;
    const url = socketPath ?? `${tlsFiles ? 'rediss' : 'redis'}://${auth}127.0.0.1:${port}`;

    let stopping: Promise<void> | undefined;
    const server: RedisServer = {
      port,
      ...(socketPath !== undefined ? { socketPath } : {}),
      url,
      ...(username !== undefined ? { username } : {}),
      ...(password !== undefined ? { password } : {}),
      ...(tlsFiles ? { caFile: tlsFiles.ca } : {}),
      dir,
      pid: child.pid!,
      cli: (...args) => redisCli(connArgs, args, password),
      async kill() {
        await killNow(child);
      },
      async restart() {
        if (stopping) throw new Error('startRedis: restart() after stop()');
        if (!exited(child)) await terminate(child);
        child = await bootOn(port);
        server.pid = child.pid!;
      },
      stop: () =>
        (stopping ??= (async () => {
          await terminate(child);
          await tmp.cleanup();
        })()),
    };
    return server;
  } catch (err) {
    await tmp.cleanup();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// startRedisCluster

/**
 * Start `masters` cluster-enabled nodes (no replicas) on free ports, join them with
 * `redis-cli --cluster create`, and wait until every node reports `cluster_state:ok`.
 * Takes ~2 s: redis-cli sleeps 1 s before its first "waiting for the cluster to join" check.
 */
export async function startRedisCluster(masters = 3): Promise<RedisCluster> {
  if (!Number.isInteger(masters) || masters < 3) throw new Error('startRedisCluster: redis-cli --cluster create needs at least 3 masters');
  const tmp = await trackedDir('overquota-rcluster-');
  const dir = tmp.path;
  const children: ChildProcess[] = [];
  const nodes: { port: number; pid: number }[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(children.map((c) => terminate(c)));
  };
  try {
    for (let i = 0; i < masters; i++) {
      const node = await withPortRetry(async () => {
        const port = await freePort();
        // The bus port defaults to PORT+10000, which may be taken or exceed 65535 for an
        // ephemeral port: pick a free one explicitly (cluster-port, Redis >= 7).
        let busPort = await freePort();
        while (busPort === port) busPort = await freePort();
        const log = join(dir, `redis-${port}.log`);
        const stderr = join(dir, `redis-${port}.stderr`);
        const child = await launch(
          [
            '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no',
            '--cluster-enabled', 'yes', '--cluster-port', String(busPort),
            '--cluster-config-file', join(dir, `nodes-${port}.conf`),
            '--cluster-node-timeout', '2000',
            ...BASE_ARGS(dir, log),
          ],
          stderr,
        );
        children.push(child);
        await waitReady(child, { port }, `startRedisCluster node 127.0.0.1:${port}`, [log, stderr]);
        return { port, pid: child.pid! };
      });
      nodes.push(node);
    }

    const create = await run(REDIS_CLI, [
      '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`),
      '--cluster-replicas', '0', '--cluster-yes',
    ], { timeoutMs: 30000 });
    if (create.code !== 0) {
      throw new Error(`startRedisCluster: redis-cli --cluster create exited ${create.code}\n${create.stdout}\n${create.stderr}`);
    }

    const by = Date.now() + 10000;
    for (;;) {
      const states = await Promise.all(
        nodes.map((n) => run(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(n.port), 'CLUSTER', 'INFO']).then((r) => r.stdout)),
      );
      if (states.every((s) => /^cluster_state:ok\r?$/m.test(s))) break;
      if (Date.now() > by) {
        const logs = await Promise.all(nodes.map(async (n) => `--- redis-${n.port}.log ---\n${await tail(join(dir, `redis-${n.port}.log`), 15)}`));
        throw new Error(`startRedisCluster: cluster_state not ok on every node within 10 s\n${states.join('\n')}\n${logs.join('\n')}`);
      }
      await delay(50);
    }

    const first = nodes[0]!.port;
    let stopping: Promise<void> | undefined;
    return {
      nodes,
      url: nodes.map((n) => `redis://127.0.0.1:${n.port}`).join(','),
      dir,
      cli: (...args) => redisCli(['-c', '-h', '127.0.0.1', '-p', String(first)], args),
      stop: () =>
        (stopping ??= (async () => {
          await stopAll();
          await tmp.cleanup();
        })()),
    };
  } catch (err) {
    await stopAll();
    await tmp.cleanup();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// startRedisSentinel

/**
 * Start a master redis-server and one Sentinel monitoring it as `mymaster` (quorum 1,
 * down-after 1 s); resolves once the Sentinel names the master.
 */
export async function startRedisSentinel(): Promise<RedisSentinelSetup> {
  const tmp = await trackedDir('overquota-rsentinel-');
  const dir = tmp.path;
  const children: ChildProcess[] = [];
  const stopAll = async (): Promise<void> => {
    // Sentinel first, so it does not log the master going down.
    for (const c of [...children].reverse()) await terminate(c);
  };
  try {
    const masterLog = join(dir, 'master.log');
    const masterStderr = join(dir, 'master.stderr');
    const masterPort = await withPortRetry(async () => {
      const port = await freePort();
      const child = await launch(
        ['--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no', ...BASE_ARGS(dir, masterLog)],
        masterStderr,
      );
      children.push(child);
      await waitReady(child, { port }, `startRedisSentinel master 127.0.0.1:${port}`, [masterLog, masterStderr]);
      return port;
    });

    const confPath = join(dir, 'sentinel.conf');
    const sentinelLog = join(dir, 'sentinel.log');
    const sentinelStderr = join(dir, 'sentinel.stderr');
    const sentinelPort = await withPortRetry(async () => {
      const port = await freePort();
      // Sentinel rewrites this file (CONFIG REWRITE after every state change): it must be writable.
      await writeFile(
        confPath,
        [
          '# Generated by test/helpers/redis.ts',
          `port ${port}`,
          'bind 127.0.0.1',
          'protected-mode no',
          'daemonize no',
          `dir ${dir}`,
          `logfile ${sentinelLog}`,
          'sentinel resolve-hostnames no',
          `sentinel monitor mymaster 127.0.0.1 ${masterPort} 1`,
          'sentinel down-after-milliseconds mymaster 1000',
          '',
        ].join('\n'),
        { mode: 0o600 },
      );
      const child = await launch([confPath, '--sentinel'], sentinelStderr);
      children.push(child);
      await waitReady(child, { port }, `startRedisSentinel sentinel 127.0.0.1:${port}`, [sentinelLog, sentinelStderr, confPath]);
      return port;
    });

    const by = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const r = await run(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(sentinelPort), 'SENTINEL', 'get-master-addr-by-name', 'mymaster']);
      if (r.code === 0 && r.stdout.split('\n').map((s) => s.trim()).join(' ').startsWith(`127.0.0.1 ${masterPort}`)) break;
      if (Date.now() > by) {
        throw new Error(`startRedisSentinel: sentinel does not name master 127.0.0.1:${masterPort}: ${r.stdout}${r.stderr}\n--- sentinel.log ---\n${await tail(sentinelLog)}`);
      }
      await delay(25);
    }

    let stopping: Promise<void> | undefined;
    return {
      masterPort,
      sentinelPort,
      masterName: 'mymaster',
      url: `redis://127.0.0.1:${sentinelPort}`,
      dir,
      stop: () =>
        (stopping ??= (async () => {
          await stopAll();
          await tmp.cleanup();
        })()),
    };
  } catch (err) {
    await stopAll();
    await tmp.cleanup();
    throw err;
  }
}

/** Test support: pids of redis-server processes this module started that are still running. */
export function liveRedisPids(): number[] {
  return [...liveChildren].filter((c) => !exited(c)).map((c) => c.pid!);
}
