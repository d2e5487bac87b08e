/*
 * Fault matrix, the shared Redis tier (issue 11): a real `overquota frontend` over a good HTTP
 * backend and a real Redis that the test kills (SIGKILL), restarts, freezes (SIGSTOP), and, on a
 * test host of its own (a network namespace), cuts off so that packets are dropped. For each, a
 * round of policy requests for a full and a roomy mailbox on three persistent connections: every
 * answer the right one (452 / DUNNO) or the distinct on_error reply, within latency_budget (plus
 * slack); never a 5XX, never a connection left without a reply; the frontend alive at the end.
 *
 * Every request goes through Redis: the memory tier is off (cache.memory_ttl 0), and each request
 * is a transaction of its own with a size, so its reservation is added in Redis too.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { startFrontend, type Running } from './helpers/overquota.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { startRedis, REDIS_SERVER, type RedisServer } from './helpers/redis.js';
import { startTestHost, type TestHost } from './helpers/netns.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { exited } from './helpers/supervised.js';
import {
  askRound, problemsOf, decisionsSince, fullAndRoom, matrixFrontendArgs, nextInstance, rightText,
  BOUND_MS, GIVE_UP_MS, ON_ERROR, FULL, ROOM,
} from './helpers/fault-round.js';

type Frontend = Running & { listeners: string[] };

const CONNECTIONS = 3;
/** Redis's port on its own test host (a fresh namespace: nothing else listens there). */
const FAR_REDIS_PORT = 16379;
/** Small enough that the reservations of the whole file never fill the roomy mailbox. */
const MESSAGE_SIZE = 100;
const RIGHT = { full: [FULL], room: [ROOM] };
const RIGHT_OR_ON_ERROR = { full: [FULL, ON_ERROR], room: [ROOM, ON_ERROR] };
const REDIS_UP = 'redis connected: shared cache in use';
const REDIS_BACK = 'redis is back: shared cache in use again';

function frontendArgs(backend: Backend, redisUrl: string): string[] {
  return matrixFrontendArgs(['--source.type', 'http', '--source.url', backend.url(), '--redis.url', redisUrl, '--cache.memory_ttl', '0']);
}

/** One round; asserts no problem; returns the decision lines (for where answers came from). */
async function round(fe: Frontend, allowed: { full: string[]; room: string[] }): Promise<Record<string, unknown>[]> {
  const since = Date.now();
  const asks = fullAndRoom('example.com', allowed, () => ({ instance: nextInstance(), size: MESSAGE_SIZE }));
  const answers = await askRound(fe.listeners[0]!, asks, { connections: CONNECTIONS, giveUpMs: GIVE_UP_MS });
  assert.equal(answers.length, CONNECTIONS * asks.length);
  assert.deepEqual(problemsOf(answers, BOUND_MS), [], JSON.stringify(answers));
  return decisionsSince(fe, since, ['full@example.com', 'room@example.com'], answers.length);
}

/** Rounds until one is answered from Redis (the tier is in use again), for at most 10 s. */
async function untilFromRedis(fe: Frontend): Promise<void> {
  const by = Date.now() + 10_000;
  while (!(await round(fe, RIGHT_OR_ON_ERROR)).some((l) => l.cache === 'redis')) {
    assert.ok(Date.now() < by, 'answers come from Redis again within 10 s');
  }
}

/** The control: Redis reachable, every answer right, and Redis in the path (answers come from it). */
async function controlRounds(fe: Frontend): Promise<void> {
  await round(fe, RIGHT);
  assert.ok((await round(fe, RIGHT)).some((l) => l.cache === 'redis'), 'answers come from Redis');
}

function alive(fe: Frontend): void {
  assert.equal(exited(fe.proc), false, 'the frontend is still running');
  assert.equal(fe.stderr(), '', 'the frontend wrote nothing to stderr');
}

describe('fault matrix: Redis', () => {
  let backend: Backend;

  before(async () => {
    backend = await startBackend((url, _req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(rightText(url.searchParams.get('u') ?? ''));
    });
  });
  after(async () => {
    await backend?.close();
  });

  describe('a Redis on loopback', () => {
    let redis: RedisServer;
    let fe: Frontend;
    before(async () => {
      redis = await startRedis();
      fe = await startFrontend(frontendArgs(backend, redis.url));
      await fe.waitForLog((l) => l.msg === REDIS_UP && l.role === undefined);
    });
    after(async () => {
      await fe?.stop();
      await redis?.stop();
    });

    it('Redis up: every answer right, answered from Redis (the control)', () => controlRounds(fe));

    it('Redis killed: every answer right or on_error, in time', async () => {
      await redis.kill();
      await round(fe, RIGHT_OR_ON_ERROR);
      await round(fe, RIGHT_OR_ON_ERROR);
    });

    it('Redis restarted: every answer right or on_error, in time; Redis in use again', async () => {
      await redis.restart();
      await fe.waitForLog((l) => l.msg === REDIS_BACK && l.role === undefined);
      await untilFromRedis(fe);
    });

    it('Redis frozen (SIGSTOP): every answer right or on_error, in time; thawed: in use again', async () => {
      process.kill(redis.pid, 'SIGSTOP');
      try {
        await round(fe, RIGHT_OR_ON_ERROR);
        await round(fe, RIGHT_OR_ON_ERROR);
      } finally {
        process.kill(redis.pid, 'SIGCONT');
      }
      await untilFromRedis(fe);
      alive(fe);
    });

    it('Redis frozen: after a command times out Redis is passed over for a while, so misses do not each pay two timeouts', async () => {
      process.kill(redis.pid, 'SIGSTOP');
      const since = Date.now();
      try {
        for (let i = 0; i < 3; i++) await round(fe, RIGHT_OR_ON_ERROR);
      } finally {
        process.kill(redis.pid, 'SIGCONT');
      }
      const slow = fe.logs.filter((l) => l.msg === 'decision' && Number(l.time) >= since && Number(l.ms) >= 2 * 250);
      const all = fe.logs.filter((l) => l.msg === 'decision' && Number(l.time) >= since);
      // Each round asks every mailbox afresh (the memory tier is off): without the pause, every one
      // of them waited for Redis's read and lock to time out.
      assert.ok(slow.length <= CONNECTIONS * 2, `${slow.length} of ${all.length} answers waited for two Redis timeouts`);
      await fe.waitForLog((l) => l.msg === 'redis did not answer within redis.command_timeout: going on without it for a while' && Number(l.time) >= since);
      await untilFromRedis(fe);
    });

    it('Redis frozen, redis.command_timeout longer than the budget: a cached mailbox is still answered within the budget', async () => {
      // The reservation of an accepted recipient is added in Redis; a frozen Redis held that
      // answer for the whole command timeout (2 s here) although the budget is 1 s.
      const slow = await startFrontend(matrixFrontendArgs(['--source.type', 'http', '--source.url', backend.url(), '--redis.url', redis.url,
        '--redis.command_timeout', '2s', '--cache.memory_ttl', '60s']));
      try {
        await slow.waitForLog((l) => l.msg === REDIS_UP && l.role === undefined);
        await round(slow, RIGHT);
        process.kill(redis.pid, 'SIGSTOP');
        try {
          const lines = await round(slow, RIGHT_OR_ON_ERROR);
          assert.ok(lines.every((l) => l.cache === 'hit'), 'answered from the memory tier');
        } finally {
          process.kill(redis.pid, 'SIGCONT');
        }
        alive(slow);
      } finally {
        await slow.stop();
      }
    });
  });

  describe('a Redis on its own host', () => {
    let host: TestHost;
    let dir: TempDir;
    let fe: Frontend;
    before(async () => {
      host = await startTestHost();
      dir = await tempDir('overquota-fault-redis-');
      host.spawn([REDIS_SERVER, '--bind', host.address, '--port', String(FAR_REDIS_PORT), '--protected-mode', 'no', '--daemonize', 'no',
        '--save', '', '--appendonly', 'no', '--dir', dir.path], join(dir.path, 'redis.log'));
      await waitPing(host.address, FAR_REDIS_PORT);
      fe = await startFrontend(frontendArgs(backend, `redis://${host.address}:${FAR_REDIS_PORT}`));
      await fe.waitForLog((l) => l.msg === REDIS_UP && l.role === undefined);
    });
    after(async () => {
      await fe?.stop();
      await host?.remove();
      await dir?.cleanup();
    });

    it('link up: every answer right, answered from Redis (the control)', () => controlRounds(fe));

    it('link cut (packets dropped): every answer right or on_error, in time; mended: Redis in use again', async () => {
      await host.cut();
      try {
        for (let i = 0; i < 3; i++) await round(fe, RIGHT_OR_ON_ERROR);
      } finally {
        await host.mend();
      }
      await untilFromRedis(fe);
      alive(fe);
    });
  });
});

/** Until a PING on host:port gets +PONG (10 s at most). */
async function waitPing(host: string, port: number): Promise<void> {
  const by = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port }, () => s.write('PING\r\n'));
      const done = (v: boolean) => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(500, () => done(false));
      s.on('data', (d) => done(String(d).startsWith('+PONG')));
      s.on('error', () => done(false));
    });
    if (ok) return;
    if (Date.now() > by) throw new Error(`no Redis answering PING on ${host}:${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
