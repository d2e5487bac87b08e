/*
 * GET /health (liveness) and GET /ready (readiness) of the frontend and the quota service, and
 * `overquota status` (issue 13): ready means the listeners are up, Redis (when configured) is
 * connected, and no source is failing; the body says what is wrong, with HTTP 503. Real processes,
 * a real HTTP backend, a real Redis. A source's failure makes the frontend unready for a minute
 * and is named until a lookup answers: shown with the core in this process and its clock moved on
 * (node:test's mock of Date only).
 */
import { test, after, mock } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { runToEnd, startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { redisUnavailable, startRedis } from './helpers/redis.js';
import { tempDir } from './helpers/tmp.js';
import { freePort } from './helpers/ports.js';
import { sample, scrape } from './helpers/prometheus.js';
import pino from 'pino';
import { loadSettings } from '../src/config/load.js';
import { buildDecisionCore } from '../src/core/assemble.js';

const cleanups: (() => Promise<unknown> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function frontend(args: string[]): Promise<Running & { listeners: string[]; admin: string }> {
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '127.0.0.1:0', ...args]);
  cleanups.push(() => fe.stop());
  return Object.assign(fe, { admin: String(fe.logs.find((l) => l.msg === 'frontend ready')!.admin) });
}

async function get(url: string): Promise<[number, Record<string, unknown>]> {
  const res = await fetch(url);
  return [res.status, (await res.json()) as Record<string, unknown>];
}

async function ask(address: string, recipient: string): Promise<string> {
  const client = await PolicyClient.connect(address);
  try {
    return await client.ask(rcpt(recipient));
  } finally {
    client.close();
  }
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (const by = Date.now() + 15_000; !(await check()); ) {
    if (Date.now() > by) throw new Error(`not within 15 s: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A quota.cgi that answers, or fails with HTTP 500 while `broken.now` is true. */
async function backend(broken: { now: boolean }): Promise<Backend> {
  const b = await startBackend((url, _req, res) => {
    const user = url.searchParams.get('u') ?? '';
    res.writeHead(broken.now ? 500 : 200, { 'content-type': 'text/plain' });
    res.end(broken.now ? 'Internal Server Error\n' : `OK ${user} 100 10000\n`);
  });
  cleanups.push(() => b.close());
  return b;
}

test('the admin endpoint is on by default, on loopback, on a port of its own', async () => {
  const clean: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OVERQUOTA_') && v !== undefined) clean[k] = v;
  const r = await runToEnd(['config'], clean);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).admin.listen, '127.0.0.1:10036');
});

test('a store that does not exist: the frontend starts, warns, answers on_error; /health is 200, /ready 503 names the store, and is 200 once it exists', async () => {
  const dir = await tempDir('overquota-health-');
  cleanups.push(() => dir.cleanup());
  const store = path.join(dir.path, 'mail');
  const fe = await frontend(['--store.path', store]);
  const warning = await fe.waitForLog((l) => l.msg === 'the mail store cannot be read: its lookups get the on_error reply until it can (GET /ready says so)');
  assert.deepEqual([warning.level, warning.source, warning.reason], [40, `mbox:${store}`, `store root ${store} cannot be read: ENOENT`]);
  assert.equal(await ask(fe.listeners[0]!, 'bob@example.com'), 'DUNNO');
  assert.deepEqual(await get(`http://${fe.admin}/health`), [200, { status: 'ok', redis: 'off' }]);
  assert.deepEqual(await get(`http://${fe.admin}/ready`), [
    503,
    { status: 'degraded', listeners: fe.listeners, redis: 'off', sources: { [`mbox:${store}`]: `store root ${store} cannot be read: ENOENT` } },
  ]);
  await mkdir(store);
  // The failed lookup above (bob's) still counts for a minute unless a later one succeeds.
  assert.equal(await ask(fe.listeners[0]!, 'carol@example.com'), 'DUNNO');
  assert.deepEqual(await get(`http://${fe.admin}/ready`), [200, { status: 'ready', listeners: fe.listeners, redis: 'off', sources: { [`mbox:${store}`]: 'ok' } }]);
});

test('/ready names a source whose last lookup failed and how long ago; a later answer makes it ready again', async () => {
  const broken = { now: true };
  const b = await backend(broken);
  const fe = await frontend(['--source.type', 'http', '--source.url', b.url()]);
  const source = `http:127.0.0.1:${b.port}/cgi-bin/quota.cgi`;
  assert.deepEqual(await get(`http://${fe.admin}/ready`), [200, { status: 'ready', listeners: fe.listeners, redis: 'off', sources: { [source]: 'not asked yet' } }], 'not asked yet: said so, and nothing known against it');
  assert.equal(await ask(fe.listeners[0]!, 'bob@example.com'), 'DUNNO');
  const [status, body] = await get(`http://${fe.admin}/ready`);
  assert.equal(status, 503);
  assert.equal(body.status, 'degraded');
  assert.match((body.sources as Record<string, string>)[source]!, /^http_status \d+\.\ds ago$/);
  broken.now = false;
  assert.equal(await ask(fe.listeners[0]!, 'carol@example.com'), 'DUNNO');
  assert.deepEqual(await get(`http://${fe.admin}/ready`), [200, { status: 'ready', listeners: fe.listeners, redis: 'off', sources: { [source]: 'ok' } }]);
});

test('/ready is 503 with "redis":"down" while a configured Redis is away, and 200 once it is back', async () => {
  const why = redisUnavailable();
  if (why) throw new Error(why);
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const dir = await tempDir('overquota-health-');
  cleanups.push(() => dir.cleanup());
  const fe = await frontend(['--store.path', dir.path, '--redis.url', redis.url]);
  const ready = () => get(`http://${fe.admin}/ready`);
  assert.deepEqual((await ready())[1].redis, 'up');
  assert.equal((await ready())[0], 200);
  await redis.kill();
  await until('/ready 503 with redis down', async () => {
    const [status, body] = await ready();
    return status === 503 && body.status === 'degraded' && body.redis === 'down';
  });
  assert.deepEqual((await get(`http://${fe.admin}/health`))[0], 200, 'liveness: the frontend still answers');
  await redis.restart();
  await until('/ready 200 again', async () => (await ready())[0] === 200);
});

test('overquota status says it in words: exit 0 ready, 1 degraded (naming what), 2 when no frontend answers', async () => {
  const dir = await tempDir('overquota-health-');
  cleanups.push(() => dir.cleanup());
  const good = await frontend(['--store.path', dir.path]);
  const ok = await runToEnd(['status', '--admin.listen', good.admin]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(
    ok.stdout,
    [
      `frontend      http://${good.admin}: ready`,
      `listening on  ${good.listeners[0]}`,
      'redis         off (redis.url not set)',
      `source        mbox:${dir.path}: not asked yet`,
      '',
    ].join('\n'),
  );
  const missing = path.join(dir.path, 'nothing-here');
  const bad = await frontend(['--store.path', missing, '--redis.url', `redis://127.0.0.1:${await freePort()}`]);
  const degraded = await runToEnd(['status', '--admin.listen', bad.admin]);
  assert.equal(degraded.code, 1);
  assert.match(degraded.stdout, /^frontend {6}http:\/\/127\.0\.0\.1:\d+: DEGRADED$/m);
  assert.match(degraded.stdout, /^redis {9}DOWN: not connected; answers come from the memory cache and the sources$/m);
  assert.ok(degraded.stdout.includes(`source        mbox:${missing}: FAILING: store root ${missing} cannot be read: ENOENT`), degraded.stdout);
  const json = await runToEnd(['status', '--json', '--admin.listen', bad.admin]);
  assert.equal(json.code, 1);
  assert.equal(JSON.parse(json.stdout).redis, 'down');
  const nobody = await runToEnd(['status', '--admin.listen', `127.0.0.1:${await freePort()}`]);
  assert.equal(nobody.code, 2);
  assert.match(nobody.stdout, /no answer at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\): is overquota frontend running/);
  const off = await runToEnd(['status', '--admin.listen', '']);
  assert.equal(off.code, 64);
  assert.match(off.stderr, /admin\.listen is empty/);
});

test('the quota service: /health stays 200 while the store cannot be read, /ready is 503 with the reason, and a warning at start-up', async () => {
  const dir = await tempDir('overquota-health-qs-');
  cleanups.push(() => dir.cleanup());
  const store = path.join(dir.path, 'mail');
  const qs = await startQuotaServiceProcess(['--store.path', store]);
  cleanups.push(() => qs.stop());
  const warning = qs.logs.find((l) => l.level === 40 && l.store === `mbox:${store}`);
  assert.equal(warning?.reason, `store root ${store} cannot be read: ENOENT`);
  assert.deepEqual(await get(`${qs.baseUrl}/health`), [200, { status: 'ok', source: `mbox:${store}` }]);
  assert.deepEqual(await get(`${qs.baseUrl}/ready`), [503, { status: 'failing', source: `mbox:${store}`, reason: `store root ${store} cannot be read: ENOENT` }]);
  // Its 503s are counted for the alert on them (OverquotaQuotaServiceUnavailable).
  assert.equal(sample(await scrape(`${qs.baseUrl}/metrics`), 'overquota_quota_service_requests_total', { endpoint: 'ready', status: '503' }), 1);
  await mkdir(store);
  assert.deepEqual(await get(`${qs.baseUrl}/ready`), [200, { status: 'ready', source: `mbox:${store}` }]);
});

test('a failed lookup makes the frontend unready for a minute, then is still named without keeping it out of rotation; a lookup that answers clears it', async () => {
  const broken = { now: true };
  const b = await backend(broken);
  const source = `http:127.0.0.1:${b.port}/cgi-bin/quota.cgi`;
  const core = await buildDecisionCore(loadSettings({ env: {}, args: ['--source.type', 'http', '--source.url', b.url()] }), pino({ level: 'silent' }), { subscribe: false });
  cleanups.push(() => core.close());
  assert.deepEqual(await core.readiness(), { ready: true, redis: 'off', sources: { [source]: 'not asked yet' } });
  assert.equal((await core.checker.check('bob@example.com', 0)).verdict.kind, 'error');
  mock.timers.enable({ apis: ['Date'], now: Date.now() });
  try {
    mock.timers.tick(30_000);
    const r = await core.readiness();
    assert.equal(r.ready, false);
    assert.match(r.sources[source]!, /^http_status 30\.\ds ago$/);
    mock.timers.tick(3_570_000);
    const later = await core.readiness();
    assert.equal(later.ready, true, 'no traffic, so nothing would ever clear it: a balancer would keep it out for good');
    assert.match(later.sources[source]!, /^http_status 3600\.\ds ago, none since$/);
  } finally {
    mock.timers.reset();
  }
  broken.now = false;
  assert.equal((await core.checker.check('carol@example.com', 0)).verdict.kind, 'under_quota');
  assert.deepEqual(await core.readiness(), { ready: true, redis: 'off', sources: { [source]: 'ok' } });
});
