// Proves the private-Redis test harness (test/helpers/redis.ts): plain TCP, unix socket, password,
// ACL user, TLS, crash + restart, a 3-master cluster and a master + Sentinel, each driven with
// ioredis; and that nothing is left running afterwards.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis, Cluster, type RedisOptions } from 'ioredis';
import {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  redisUnavailable,
  liveRedisPids,
  type RedisServer,
} from './helpers/redis.js';
import { tempDir } from './helpers/tmp.js';

const unavailable = redisUnavailable();
if (unavailable) throw new Error(`cannot run a private Redis: ${unavailable}`);

/** Everything the harness started here, for the final "nothing left running" check. */
const used = { ports: new Set<number>(), sockets: new Set<string>(), pids: new Set<number>(), dirs: new Set<string>() };
function remember(s: RedisServer): RedisServer {
  if (s.port) used.ports.add(s.port);
  if (s.socketPath) used.sockets.add(s.socketPath);
  used.pids.add(s.pid);
  used.dirs.add(s.dir);
  return s;
}

/** ioredis client that fails fast instead of retrying forever (tests must not hang). */
function client(url: string, extra: RedisOptions = {}): Redis {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, ...extra });
  r.on('error', () => {}); // failures are asserted on the commands; keep the log quiet
  return r;
}

/** A client without credentials; no ready check (its INFO would fail with NOAUTH and close). */
function anonymous(port: number): Redis {
  return client(`redis://127.0.0.1:${port}`, { enableReadyCheck: false });
}

/** The error a connection attempt fails with (ioredis rejects connect() with a generic one). */
async function connectError(r: Redis): Promise<Error> {
  const err = new Promise<Error>((resolve) => r.once('error', resolve));
  await r.connect().catch(() => {});
  return err;
}

async function roundTrip(r: Redis | Cluster, key: string, value: string): Promise<void> {
  assert.equal(await r.set(key, value), 'OK');
  assert.equal(await r.get(key), value);
}

function pgrepRedis(): Promise<string> {
  return new Promise((resolve) => {
    // Exit 1 = no process matched.
    execFile('pgrep', ['-a', '-f', 'redis-server'], (_err, stdout) => resolve(stdout));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startRedis', () => {
  it('plain TCP server: ioredis SET/GET, cli() sees the data', async () => {
    const srv = remember(await startRedis());
    const r = client(srv.url);
    try {
      assert.match(srv.url, /^redis:\/\/127\.0\.0\.1:\d+$/);
      assert.notEqual(srv.port, 6379);
      await r.connect();
      await roundTrip(r, 'plain:k', 'v1');
      assert.equal(await srv.cli('GET', 'plain:k'), 'v1');
      assert.equal(await srv.cli('CONFIG', 'GET', 'save'), 'save');
    } finally {
      r.disconnect();
      await srv.stop();
    }
    assert.equal(existsSync(srv.dir), false, 'stop() removes the directory');
    assert.equal(alive(srv.pid), false);
  });

  it('unix socket only: port 0, url is the socket path', async () => {
    const srv = remember(await startRedis({ unixSocket: true }));
    const r = client(srv.url);
    try {
      assert.equal(srv.port, 0);
      assert.ok(srv.socketPath?.startsWith(srv.dir));
      assert.equal(srv.url, srv.socketPath);
      await r.connect();
      await roundTrip(r, 'unix:k', 'v2');
      assert.equal(await srv.cli('GET', 'unix:k'), 'v2');
      assert.equal(await srv.cli('CONFIG', 'GET', 'port'), 'port\n0');
    } finally {
      r.disconnect();
      await srv.stop();
    }
  });

  it('password: the url carries it; without it the server answers NOAUTH', async () => {
    const srv = remember(await startRedis({ password: 'p@ss word:/x' }));
    const r = client(srv.url);
    const anon = anonymous(srv.port);
    try {
      assert.equal(srv.password, 'p@ss word:/x');
      await r.connect();
      await roundTrip(r, 'pw:k', 'v3');
      assert.equal(await srv.cli('GET', 'pw:k'), 'v3');
      await anon.connect();
      await assert.rejects(anon.get('pw:k'), /NOAUTH/);
    } finally {
      r.disconnect();
      anon.disconnect();
      await srv.stop();
    }
  });

  it('ACL user: url/cli authenticate as it; the default user is off', async () => {
    const srv = remember(await startRedis({ aclUser: { name: 'overquota', password: 's3cret pw' } }));
    const r = client(srv.url);
    const anon = anonymous(srv.port);
    const wrong = client(`redis://overquota:nope@127.0.0.1:${srv.port}`);
    try {
      assert.match(srv.url, /^redis:\/\/overquota:s3cret%20pw@127\.0\.0\.1:\d+$/);
      await r.connect();
      assert.equal(await r.call('ACL', 'WHOAMI'), 'overquota');
      await roundTrip(r, 'acl:k', 'v4');
      assert.equal(await srv.cli('ACL', 'WHOAMI'), 'overquota');
      await anon.connect();
      await assert.rejects(anon.get('acl:k'), /NOAUTH/);
      assert.match((await connectError(wrong)).message, /WRONGPASS/);
    } finally {
      r.disconnect();
      anon.disconnect();
      wrong.disconnect();
      await srv.stop();
    }
  });

  it('TLS: rediss:// url, ioredis with tls.ca; the certificate is verified', async () => {
    const srv = remember(await startRedis({ tls: true }));
    const ca = await readFile(srv.caFile!);
    const r = client(srv.url, { tls: { ca } });
    const noCa = client(srv.url); // rediss:// => tls: true, system CAs only
    try {
      assert.match(srv.url, /^rediss:\/\/127\.0\.0\.1:\d+$/);
      await r.connect();
      await roundTrip(r, 'tls:k', 'v5');
      assert.equal(await srv.cli('GET', 'tls:k'), 'v5');
      assert.match((await connectError(noCa)).message, /self[- ]signed|unable to (get|verify)/i);
    } finally {
      r.disconnect();
      noCa.disconnect();
      await srv.stop();
    }
  });

  it('kill() is a crash the client notices; restart() answers on the same port again', async () => {
    const srv = remember(await startRedis());
    // A client that keeps reconnecting, but fails commands while the server is down.
    const r = new Redis(srv.url, { maxRetriesPerRequest: 0, retryStrategy: () => 50 });
    const errors: Error[] = [];
    r.on('error', (e: Error) => errors.push(e));
    try {
      await roundTrip(r, 'crash:k', 'before');
      const { port, pid: oldPid } = srv;
      await srv.kill();
      assert.equal(alive(oldPid), false);
      assert.equal(existsSync(srv.dir), true, 'kill() keeps the directory');
      await assert.rejects(r.get('crash:k'));
      const seen = Date.now() + 2000;
      while (errors.length === 0 && Date.now() < seen) await new Promise((res) => setTimeout(res, 20));
      assert.match(errors[0]?.message ?? '(no error event)', /ECONNREFUSED/);
      await assert.rejects(srv.cli('PING'), /Connection refused/);

      await srv.restart();
      used.pids.add(srv.pid);
      assert.notEqual(srv.pid, oldPid);
      assert.equal(srv.port, port);
      assert.equal(await srv.cli('PING'), 'PONG');
      // The same client reconnects by itself; nothing was persisted.
      const by = Date.now() + 3000;
      while (r.status !== 'ready' && Date.now() < by) await new Promise((res) => setTimeout(res, 20));
      assert.equal(r.status, 'ready');
      assert.equal(await r.get('crash:k'), null);
      await roundTrip(r, 'crash:k', 'after');
    } finally {
      r.disconnect();
      await srv.stop();
    }
  });

  it('restart() of a unix-socket server with auth reuses the socket path', async () => {
    const srv = remember(await startRedis({ unixSocket: true, password: 'pw' }));
    try {
      await srv.kill();
      await srv.restart();
      used.pids.add(srv.pid);
      const r = client(srv.url, { password: srv.password! });
      try {
        await r.connect();
        await roundTrip(r, 'k', 'v');
      } finally {
        r.disconnect();
      }
    } finally {
      await srv.stop();
    }
  });
});

describe('startRedisCluster', () => {
  it('3 masters: ioredis Cluster SET/GET across slots on every node', async () => {
    const cl = await startRedisCluster();
    for (const n of cl.nodes) {
      used.ports.add(n.port);
      used.pids.add(n.pid);
    }
    used.dirs.add(cl.dir);
    const c = new Cluster(cl.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })), {
      clusterRetryStrategy: () => null,
      redisOptions: { maxRetriesPerRequest: 0 },
    });
    try {
      assert.equal(cl.nodes.length, 3);
      assert.equal(cl.url, cl.nodes.map((n) => `redis://127.0.0.1:${n.port}`).join(','));
      // (Keys differing in one character only can share a third of the slot space by chance.)
      const keys = Array.from({ length: 30 }, (_, i) => `k${i}`);
      for (const k of keys) await roundTrip(c, k, `v-${k}`);
      // The keys really are spread over all three masters.
      const sizes = await Promise.all(c.nodes('master').map((n) => n.dbsize()));
      assert.equal(sizes.length, 3);
      assert.equal(sizes.reduce((a, b) => a + b, 0), keys.length);
      assert.ok(sizes.every((s) => s > 0), `every master holds keys: ${sizes.join(',')}`);
      // cli() follows MOVED redirects (-c).
      for (const k of keys.slice(0, 5)) assert.equal(await cl.cli('GET', k), `v-${k}`);
      assert.match(await cl.cli('CLUSTER', 'INFO'), /cluster_state:ok/);
    } finally {
      c.disconnect();
      await cl.stop();
    }
    assert.equal(existsSync(cl.dir), false);
  });
});

describe('startRedisSentinel', () => {
  it('ioredis via the Sentinel finds mymaster and does SET/GET', async () => {
    const s = await startRedisSentinel();
    used.ports.add(s.masterPort);
    used.ports.add(s.sentinelPort);
    used.dirs.add(s.dir);
    const r = new Redis({
      sentinels: [{ host: '127.0.0.1', port: s.sentinelPort }],
      name: s.masterName,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      sentinelRetryStrategy: () => null,
      retryStrategy: () => null,
    });
    try {
      assert.equal(s.masterName, 'mymaster');
      assert.equal(s.url, `redis://127.0.0.1:${s.sentinelPort}`);
      await r.connect();
      await roundTrip(r, 'sentinel:k', 'v6');
      const role = (await r.call('ROLE')) as unknown[];
      assert.equal(role[0], 'master');
      assert.deepEqual(await r.config('GET', 'port'), ['port', String(s.masterPort)]);
    } finally {
      r.disconnect();
      await s.stop();
    }
  });
});

describe('cleanup when the test process dies', () => {
  const helperUrl = new URL('./helpers/redis.ts', import.meta.url).href;

  /**
   * Run a child Node (with tsx) that starts a server and a cluster-less plain Redis, prints
   * {pid, port, dir}, then `mode`: 'exit' = process.exit() without stop(), 'hang' = wait to be
   * SIGKILLed by us.
   */
  async function orphan(mode: 'exit' | 'hang'): Promise<{ pid: number; port: number; dir: string }> {
    const tmp = await tempDir('overquota-rh-');
    try {
      const script = join(tmp.path, 'child.mts');
      await writeFile(
        script,
        `import { startRedis } from ${JSON.stringify(helperUrl)};\n` +
          `const s = await startRedis();\n` +
          `process.stdout.write(JSON.stringify({ pid: s.pid, port: s.port, dir: s.dir }) + '\\n');\n` +
          (mode === 'exit' ? `process.exit(0);\n` : `setInterval(() => {}, 1000);\n`),
      );
      const child = spawn(process.execPath, ['--import', 'tsx', script], {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.setEncoding('utf8');
      const info = await new Promise<{ pid: number; port: number; dir: string }>((resolve, reject) => {
        child.stdout.on('data', (d: string) => {
          out += d;
          if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!) as { pid: number; port: number; dir: string });
        });
        child.once('exit', (code) => (out.includes('\n') ? undefined : reject(new Error(`child exited ${code}: ${out}`))));
      });
      used.ports.add(info.port);
      used.pids.add(info.pid);
      assert.equal(alive(info.pid), true);
      if (mode === 'hang') child.kill('SIGKILL');
      await new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
      // The kernel delivers the death signal at once; give the reaper (PID 1) a moment.
      const by = Date.now() + 2000;
      while (alive(info.pid) && Date.now() < by) await new Promise((r) => setTimeout(r, 20));
      return info;
    } finally {
      await tmp.cleanup();
    }
  }

  it('process exit without stop(): the exit hook kills the server and removes its dir', async () => {
    const info = await orphan('exit');
    assert.equal(alive(info.pid), false, `redis-server ${info.pid} survived its test process`);
    assert.equal(existsSync(info.dir), false);
  });

  it('test process SIGKILLed: the server dies with it (parent-death signal); only its dir stays', async () => {
    const info = await orphan('hang');
    assert.equal(alive(info.pid), false, `redis-server ${info.pid} survived its SIGKILLed test process (is /usr/bin/setpriv there?)`);
    await rm(info.dir, { recursive: true, force: true });
  });
});

after(async () => {
  // Runs after every test above: nothing this file started may still be running.
  assert.deepEqual(liveRedisPids(), []);
  for (const pid of used.pids) assert.equal(alive(pid), false, `redis-server pid ${pid} still alive`);
  const ps = await pgrepRedis();
  for (const port of used.ports) {
    // Titles look like `/usr/bin/redis-server 127.0.0.1:PORT [cluster]` (after the pid).
    const line = ps.split('\n').find((l) => new RegExp(`:${port}(?!\\d)`).test(l.replace(/^\d+\s+/, '')));
    assert.equal(line, undefined, `a redis-server on port ${port} is still running: ${line}`);
  }
  for (const sock of used.sockets) assert.equal(ps.includes(sock), false, `a redis-server on ${sock} is still running`);
  for (const dir of used.dirs) assert.equal(existsSync(dir), false, `${dir} not removed`);
  assert.ok(used.ports.size >= 9, `ports recorded: ${[...used.ports].join(',')}`);
});
