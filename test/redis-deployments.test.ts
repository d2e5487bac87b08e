/*
 * Every way an operator can point overquota at Redis: TCP, a unix socket, a password, an ACL user,
 * TLS, Sentinel. Each is shown by a state written by one process and read by another.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { runToEnd, startFrontend, startQuotaServiceProcess } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, cgiAnswer, type Backend } from './helpers/http-backend.js';
import { startRedis, startRedisSentinel } from './helpers/redis.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import fs from 'node:fs/promises';
import path from 'node:path';

let backend: Backend;
before(async () => {
  backend = await startBackend(cgiAnswer({ full: 5000 }, 1000));
});
after(async () => {
  await backend?.close();
});

/** Two separate `overquota check` runs: the second must find the first one's answer in Redis. */
async function assertSharedThrough(redisArgs: string[]) {
  const mailbox = `m${Math.random().toString(36).slice(2, 8)}`;
  const args = ['check', `${mailbox}@example.com`, '--json', '--source.type', 'http', '--source.url', backend.url(), ...redisArgs];
  const first = await runToEnd(args);
  assert.equal(first.code, 0, first.stdout + first.stderr);
  assert.equal((JSON.parse(first.stdout) as { cache: string }).cache, 'miss');
  const second = await runToEnd(args);
  assert.equal((JSON.parse(second.stdout) as { cache: string }).cache, 'redis', second.stdout);
  assert.equal(backend.requests.filter((r) => r.url.endsWith(`u=${mailbox}`)).length, 1);
}

describe('Redis deployments', () => {
  it('standalone over TCP', async () => {
    const redis = await startRedis();
    try {
      await assertSharedThrough(['--redis.url', redis.url]);
    } finally {
      await redis.stop();
    }
  });

  it('standalone on a unix socket, with a password', async () => {
    const redis = await startRedis({ unixSocket: true, password: 's3cret pass' });
    try {
      await assertSharedThrough(['--redis.url', redis.socketPath!, '--redis.password', 's3cret pass']);
    } finally {
      await redis.stop();
    }
  });

  it('standalone with an ACL user and password in the URL', async () => {
    const redis = await startRedis({ aclUser: { name: 'overquota', password: 'p@ss:word' } });
    try {
      assert.match(redis.url, /^redis:\/\/overquota:/);
      await assertSharedThrough(['--redis.url', redis.url]);
    } finally {
      await redis.stop();
    }
  });

  it('a wrong password is a Redis outage, not a mail outage: answers come from the source', async () => {
    const redis = await startRedis({ password: 'right' });
    try {
      const r = await runToEnd(['check', 'full@example.com', '--json', '--source.type', 'http', '--source.url', backend.url(), '--redis.url', redis.url.replace('right', 'wrong').replace('redis://', 'redis://:wrong@')]);
      const j = JSON.parse(r.stdout) as { verdict: string; cache: string };
      assert.equal(j.verdict, 'over_quota');
      assert.equal(j.cache, 'miss');
    } finally {
      await redis.stop();
    }
  });

  it('TLS (rediss://) with a private CA', async () => {
    const redis = await startRedis({ tls: true });
    try {
      assert.match(redis.url, /^rediss:\/\//);
      await assertSharedThrough(['--redis.url', redis.url, '--redis.tls_ca', redis.caFile!]);
    } finally {
      await redis.stop();
    }
  });

  it('Sentinel: the master is found through the sentinel', async () => {
    const setup = await startRedisSentinel();
    try {
      await assertSharedThrough(['--redis.url', setup.url, '--redis.mode', 'sentinel', '--redis.sentinel_master', setup.masterName]);
    } finally {
      await setup.stop();
    }
  });
});

describe('the quota service publishes invalidations', () => {
  let tmp: TempDir;
  before(async () => {
    tmp = await tempDir('overquota-qs-inv-');
  });
  after(async () => {
    await tmp.cleanup();
  });

  it('POST /invalidate on the quota service makes the frontends forget the mailbox at once', async () => {
    const redis = await startRedis();
    const mail = path.join(tmp.path, 'mail');
    await fs.mkdir(mail);
    await fs.writeFile(path.join(mail, 'alice'), Buffer.alloc(5000));
    const quota = await startQuotaServiceProcess(['--store.path', mail, '--store.limit', '1000', '--redis.url', redis.url, '--quota_service.token', 't0k']);
    const fe = await startFrontend([
      '--policy.listen', 'inet:127.0.0.1:0', '--redis.url', redis.url, '--cache.memory_ttl', '60s',
      '--source.type', 'http', '--source.url', `${quota.baseUrl}/quota?u={key}`, '--source.token', 't0k',
    ]);
    try {
      await fe.waitForLog((l) => l.msg === 'redis connected: shared cache in use' && l.role === undefined);
      const c = await PolicyClient.connect(fe.listeners[0]!);
      assert.equal(await c.ask(rcpt('alice@example.com')), '452 4.2.2 Mailbox full, try again later');
      await fs.truncate(path.join(mail, 'alice'), 10);
      assert.equal(await c.ask(rcpt('alice@example.com')), '452 4.2.2 Mailbox full, try again later', 'still cached');
      const unauthorised = await fetch(`${quota.baseUrl}/invalidate?u=alice`, { method: 'POST' });
      assert.equal(unauthorised.status, 401);
      const res = await fetch(`${quota.baseUrl}/invalidate?u=alice`, { method: 'POST', headers: { authorization: 'Bearer t0k' } });
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'INVALIDATED alice\n');
      await fe.waitForLog((l) => l.msg === 'invalidation received' && l.mailbox === 'alice');
      assert.equal(await c.ask(rcpt('alice@example.com')), 'DUNNO');
      c.close();
    } finally {
      await fe.stop();
      await quota.stop();
      await redis.stop();
    }
  });
});
