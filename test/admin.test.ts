/*
 * Who may talk to the frontend's admin endpoint, what it accepts, and that it does not lie
 * (issue 11, items 12 and 16). Real frontend processes; a real HTTP backend that counts lookups.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFrontend, runToEnd, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, cgiAnswer } from './helpers/http-backend.js';
import { freePort } from './helpers/ports.js';
import { redisUnavailable, startRedis } from './helpers/redis.js';

const cleanups: (() => Promise<unknown> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function frontend(args: string[]): Promise<Running & { listeners: string[]; admin: string }> {
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '127.0.0.1:0', '--store.path', '/nonexistent', ...args]);
  cleanups.push(() => fe.stop());
  const ready = await fe.waitForLog((l) => l.msg === 'admin endpoint ready');
  return Object.assign(fe, { admin: `http://${String(ready.listen)}` });
}

const post = (url: string, token?: string) => fetch(url, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {} });

test('an admin listener off loopback without admin.token refuses to start (exit 78), with one it starts', async () => {
  const refused = await runToEnd(['frontend', '--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '0.0.0.0:0']);
  assert.equal(refused.code, 78);
  assert.match(refused.stderr, /admin\.listen: 0\.0\.0\.0:0 is not on loopback: set admin\.token/);
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '0.0.0.0:0', '--admin.token', 's3cret']);
  cleanups.push(() => fe.stop());
  const ready = await fe.waitForLog((l) => l.msg === 'admin endpoint ready');
  const port = String(ready.listen).split(':').pop();
  assert.equal((await post(`http://127.0.0.1:${port}/invalidate?key=alice`)).status, 401);
  assert.equal((await post(`http://127.0.0.1:${port}/invalidate?key=alice`, 'wrong')).status, 401);
  assert.equal((await post(`http://127.0.0.1:${port}/invalidate?key=alice`, 's3cret')).status, 200);
});

test('with admin.token set, POST needs it on loopback too; GET /health does not', async () => {
  const fe = await frontend(['--admin.token', 'tok']);
  const res = await post(`${fe.admin}/invalidate?key=alice`);
  assert.equal(res.status, 401);
  assert.equal(res.headers.get('www-authenticate'), 'Bearer');
  assert.equal((await fetch(`${fe.admin}/health`)).status, 200);
  // overquota invalidate sends the token it is configured with.
  const r = await runToEnd(['invalidate', 'alice@example.com', '--admin.listen', fe.admin.slice(7), '--admin.token', 'tok']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
});

test('keys are checked like the quota service\'s users and never echoed back', async () => {
  const fe = await frontend([]);
  for (const key of ['../../etc/passwd', 'a'.repeat(3000), 'bob\u0000x', 'a b']) {
    const res = await post(`${fe.admin}/invalidate?key=${encodeURIComponent(key)}`);
    assert.equal(res.status, 400, key);
    const body = await res.text();
    assert.ok(!body.includes(key.slice(0, 20)), `echoed: ${body}`);
  }
  assert.equal((await post(`${fe.admin}/invalidate?address=${encodeURIComponent('x'.repeat(3000))}@example.com`)).status, 400);
  const ok = await post(`${fe.admin}/invalidate?address=Alice%2Btag@example.com`);
  assert.deepEqual(await ok.json(), { mailbox: 'alice', published: false });
});

test('a storm of invalidations of a key nobody has does not switch caching off for the other mailboxes', async () => {
  // Each lookup takes 30 ms, so fills are in flight while the invalidations arrive.
  const usage: Record<string, number> = {};
  const answer = cgiAnswer(usage, 1000);
  const backend = await startBackend((url, req, res) => setTimeout(() => answer(url, req, res), 30));
  cleanups.push(() => backend.close());
  const fe = await frontend(['--source.type', 'http', '--source.url', backend.url()]);
  let storming = true;
  const storm = (async () => {
    while (storming) await post(`${fe.admin}/invalidate?key=nobody`);
  })();
  const users = Array.from({ length: 40 }, (_, i) => `user${i}`);
  const c = await PolicyClient.connect(fe.listeners[0]!);
  cleanups.push(() => c.close());
  for (let round = 0; round < 3; round++) for (const u of users) assert.equal(await c.ask(rcpt(`${u}@example.com`)), 'DUNNO');
  storming = false;
  await storm;
  assert.equal(backend.requests.length, users.length, 'each mailbox looked up once, then answered from the cache');
});

test('/health says where Redis really is: off, down, up', async () => {
  const off = await frontend([]);
  assert.deepEqual(await (await fetch(`${off.admin}/health`)).json(), { status: 'ok', redis: 'off' });
  const down = await frontend(['--redis.url', `redis://127.0.0.1:${await freePort()}`]);
  assert.deepEqual(await (await fetch(`${down.admin}/health`)).json(), { status: 'ok', redis: 'down' });
  const why = redisUnavailable();
  if (why) throw new Error(why);
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const up = await frontend(['--redis.url', redis.url]);
  assert.deepEqual(await (await fetch(`${up.admin}/health`)).json(), { status: 'ok', redis: 'up' });
});
