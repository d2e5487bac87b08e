/*
 * A cluster of frontends sharing quota state through a real Redis (standalone, then a 3-master
 * Redis Cluster), each frontend a real `overquota frontend` process, the source a real HTTP
 * backend that counts what reaches it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFrontend, runOverquota, runToEnd, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, cgiAnswer, type Backend } from './helpers/http-backend.js';
import { startRedis, startRedisCluster, type RedisServer, type RedisCluster } from './helpers/redis.js';

const QUOTA = 1000;
const FULL = '452 4.2.2 Mailbox full, try again later';
/** A distinct on_error reply: any answer that was late or failed shows up as this text. */
const ON_ERROR = '451 4.3.0 overquota trouble';

type Frontend = Running & { listeners: string[] };

/** The mailboxes' usage, changed by tests; the backend answers from it. */
const usage: Record<string, number> = {};

function frontendArgs(backend: Backend, redisUrl: string, mode: 'standalone' | 'cluster', extra: string[] = []): string[] {
  return [
    '--policy.listen', 'inet:127.0.0.1:0',
    '--source.type', 'http',
    '--source.url', backend.url(),
    '--redis.url', redisUrl,
    '--redis.mode', mode,
    '--replies.on_error', ON_ERROR,
    '--cache.memory_ttl', '60s',
    ...extra,
  ];
}

async function ask(fe: Frontend, recipient: string): Promise<string> {
  const c = await PolicyClient.connect(fe.listeners[0]!);
  try {
    return await c.ask(rcpt(recipient));
  } finally {
    c.close();
  }
}

/** The cases every deployment must serve; `redis` says where the shared tier lives. */
function sharedCacheCases(setup: () => Promise<{ redisUrl: string; mode: 'standalone' | 'cluster'; redisKeys(): Promise<string> }>) {
  let backend: Backend;
  let redisUrl: string;
  let mode: 'standalone' | 'cluster';
  let redisKeys: () => Promise<string>;
  const frontends: Frontend[] = [];
  const start = async (extra: string[] = []) => {
    const fe = await startFrontend(frontendArgs(backend, redisUrl, mode, extra));
    frontends.push(fe);
    await fe.waitForLog((l) => l.msg === 'redis connected: shared cache in use' && l.role === undefined);
    return fe;
  };

  before(async () => {
    ({ redisUrl, mode, redisKeys } = await setup());
    backend = await startBackend((url, req, res) => setTimeout(() => cgiAnswer(usage, QUOTA)(url, req, res), 150));
  });
  after(async () => {
    for (const fe of frontends) await fe.stop();
    await backend?.close();
  });

  it('a mailbox looked up by one frontend is a cache hit on another: the backend is asked once', async () => {
    usage.hitone = 5000;
    const [a, b] = [await start(), await start()];
    assert.equal(await ask(a, 'hitone@example.com'), FULL);
    assert.equal(await ask(b, 'hitone@example.com'), FULL);
    assert.equal(backend.requests.filter((r) => r.url.endsWith('u=hitone')).length, 1);
    assert.equal((await a.waitForLog((l) => l.msg === 'decision' && l.mailbox === 'hitone')).cache, 'miss');
    assert.equal((await b.waitForLog((l) => l.msg === 'decision' && l.mailbox === 'hitone')).cache, 'redis');
    assert.match(await redisKeys(), /overquota:v1:\{http:127\.0\.0\.1:\d+\/cgi-bin\/quota\.cgi\|hitone\}:q/);
  });

  it('N frontends x M concurrent requests for one cold mailbox cost the backend exactly one request', async () => {
    usage.cold = 10;
    const fes = [await start(), await start(), await start()];
    const M = 15;
    const clients = await Promise.all(fes.flatMap((fe) => Array.from({ length: M }, () => PolicyClient.connect(fe.listeners[0]!))));
    const answers = await Promise.all(clients.map((c) => c.ask(rcpt('cold@example.com'))));
    for (const c of clients) c.close();
    assert.deepEqual(new Set(answers), new Set(['DUNNO']));
    assert.equal(answers.length, fes.length * M);
    assert.equal(backend.requests.filter((r) => r.url.endsWith('u=cold')).length, 1);
  });

  it('overquota invalidate reaches every frontend: freed space is seen at once, not after the TTL', async () => {
    usage.freed = 5000;
    const [a, b] = [await start(), await start()];
    assert.equal(await ask(a, 'freed@example.com'), FULL);
    assert.equal(await ask(b, 'freed@example.com'), FULL);
    usage.freed = 10;
    assert.equal(await ask(a, 'freed@example.com'), FULL, 'still cached (memory_ttl 60s, over_quota TTL 10s)');
    const inv = await runToEnd(['invalidate', 'Freed+x@example.com', '--redis.url', redisUrl, '--redis.mode', mode, '--source.type', 'http', '--source.url', backend.url()]);
    assert.equal(inv.code, 0, inv.stdout + inv.stderr);
    await a.waitForLog((l) => l.msg === 'invalidation received' && l.mailbox === 'freed');
    await b.waitForLog((l) => l.msg === 'invalidation received' && l.mailbox === 'freed');
    assert.equal(await ask(a, 'freed@example.com'), 'DUNNO');
    assert.equal(await ask(b, 'freed@example.com'), 'DUNNO');
  });

  it("the admin endpoint's invalidation reaches the other frontends too", async () => {
    usage.viaadmin = 5000;
    const a = await start(['--admin.listen', '127.0.0.1:0']);
    const b = await start();
    const adminReady = await a.waitForLog((l) => l.msg === 'admin endpoint ready');
    assert.equal(await ask(b, 'viaadmin@example.com'), FULL);
    usage.viaadmin = 10;
    const res = await fetch(`http://${String(adminReady.listen)}/invalidate?address=viaadmin@example.com`, { method: 'POST' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { mailbox: 'viaadmin', published: true });
    await b.waitForLog((l) => l.msg === 'invalidation received' && l.mailbox === 'viaadmin');
    assert.equal(await ask(b, 'viaadmin@example.com'), 'DUNNO');
  });
}

describe('a standalone Redis shared by frontends', () => {
  let redis: RedisServer;
  sharedCacheCases(async () => {
    redis = await startRedis();
    return { redisUrl: redis.url, mode: 'standalone', redisKeys: () => redis.cli('--scan') };
  });
  after(async () => {
    await redis?.stop();
  });
});

describe('a 3-master Redis Cluster shared by frontends', () => {
  let cluster: RedisCluster;
  sharedCacheCases(async () => {
    cluster = await startRedisCluster(3);
    return {
      redisUrl: cluster.url,
      mode: 'cluster',
      redisKeys: async () => {
        const all = await Promise.all(cluster.nodes.map((n) => runCli(n.port, '--scan')));
        return all.join('\n');
      },
    };
  });
  after(async () => {
    await cluster?.stop();
  });
});

async function runCli(port: number, ...args: string[]): Promise<string> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) =>
    execFile('/usr/bin/redis-cli', ['-p', String(port), ...args], (err, stdout) => (err ? reject(err) : resolve(stdout.trim()))),
  );
}

describe('Redis trouble is not mail trouble', () => {
  let redis: RedisServer;
  let backend: Backend;
  const frontends: Frontend[] = [];
  before(async () => {
    redis = await startRedis();
    backend = await startBackend(cgiAnswer(usage, QUOTA));
  });
  after(async () => {
    for (const fe of frontends) await fe.stop();
    await backend?.close();
    await redis?.stop();
  });

  it('Redis killed during a burst: every answer still right; Redis back: used again', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `burst${i}`);
    names.forEach((n, i) => (usage[n] = i % 2 === 0 ? 5000 : 10));
    const expected = (n: string) => (usage[n]! > QUOTA ? FULL : 'DUNNO');
    for (let i = 0; i < 2; i++) {
      // Short memory TTL, so Redis and the source keep being asked through the burst.
      const fe = await startFrontend(frontendArgs(backend, redis.url, 'standalone', ['--cache.memory_ttl', '20ms', '--cache.ttl.over_quota', '50ms', '--cache.ttl.under_quota', '50ms']));
      await fe.waitForLog((l) => l.msg === 'redis connected: shared cache in use' && l.role === undefined);
      frontends.push(fe);
    }
    const clients = await Promise.all(frontends.flatMap((fe) => Array.from({ length: 5 }, () => PolicyClient.connect(fe.listeners[0]!))));
    let killed = false;
    const wrong: string[] = [];
    let answered = 0;
    await Promise.all(
      clients.map(async (c, ci) => {
        for (let i = 0; i < 150; i++) {
          const name = names[(ci * 7 + i) % names.length]!;
          const got = await c.ask(rcpt(`${name}@example.com`));
          answered++;
          if (got !== expected(name)) wrong.push(`${name}: ${got}`);
          if (ci === 0 && i === 40 && !killed) {
            killed = true;
            await redis.kill();
          }
          if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5));
        }
      }),
    );
    for (const c of clients) c.close();
    assert.equal(killed, true);
    assert.equal(answered, clients.length * 150);
    assert.deepEqual(wrong, []);
    for (const fe of frontends) {
      const downs = fe.logs.filter((l) => l.msg === 'redis unavailable: answering from the memory cache and the sources, reconnecting' && l.role === undefined);
      assert.equal(downs.length, 1, 'the outage is logged once, not once per request');
    }

    await redis.restart();
    for (const fe of frontends) await fe.waitForLog((l) => l.msg === 'redis is back: shared cache in use again' && l.role === undefined);
    usage.after = 5000;
    assert.equal(await ask(frontends[0]!, 'after@example.com'), FULL);
    assert.match(await redis.cli('--scan'), /\|after\}:q/);
    assert.equal(await ask(frontends[1]!, 'after@example.com'), FULL);
    const line = await frontends[1]!.waitForLog((l) => l.msg === 'decision' && l.mailbox === 'after');
    assert.equal(line.cache, 'redis');
  });

  it('Redis slow (DEBUG SLEEP): answers still come, from the source, instead of waiting for Redis', async () => {
    const fe = frontends[0]!;
    usage.slowredis = 5000;
    usage.slowroom = 10;
    const sleeping = redis.cli('DEBUG', 'SLEEP', '3');
    await new Promise((r) => setTimeout(r, 100));
    const c = await PolicyClient.connect(fe.listeners[0]!);
    try {
      assert.equal(await c.ask(rcpt('slowredis@example.com')), FULL);
      assert.equal(await c.ask(rcpt('slowroom@example.com')), 'DUNNO');
    } finally {
      c.close();
    }
    const line = await fe.waitForLog((l) => l.msg === 'decision' && l.mailbox === 'slowroom');
    assert.equal(line.verdict, 'under_quota');
    await sleeping;
  });
});

describe('spawn(8) mode', () => {
  it('a spawned frontend (one per SMTP session, up to 100 at a time) opens one Redis connection and no subscriber', async () => {
    const redis = await startRedis();
    const backend = await startBackend(cgiAnswer({}, QUOTA));
    const fe = runOverquota(['frontend', '--stdio', '--source.type', 'http', '--source.url', backend.url(), '--redis.url', redis.url]);
    try {
      let answer = '';
      fe.proc.stdout!.on('data', (d: Buffer) => (answer += d.toString()));
      fe.proc.stdin!.write('protocol_state=RCPT\nrecipient=spawned@example.com\n\n');
      const names = async () => (await redis.cli('CLIENT', 'LIST')).split('\n').map((l) => /\bname=(\S*)/.exec(l)?.[1]).filter((n) => n?.startsWith('overquota'));
      for (let i = 0; i < 100 && (await names()).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(await names(), ['overquota']);
      for (let i = 0; i < 100 && !answer.includes('\n\n'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(answer, 'action=DUNNO\n\n');
    } finally {
      fe.proc.stdin!.end();
      await fe.stop();
      await backend.close();
      await redis.stop();
    }
  });
});
