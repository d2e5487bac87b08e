/*
 * GET /metrics (issue 13): what a frontend and a quota service count, under the names and labels
 * an operator's Prometheus reads. Real processes, a real HTTP backend, real Redis; every output is
 * checked by the real `promtool check metrics`.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { freePort } from './helpers/ports.js';
import { redisUnavailable, startRedis } from './helpers/redis.js';
import { tempDir } from './helpers/tmp.js';
import { connect, mail, optneg, rcpt as milterRcpt } from './helpers/milter-packets.js';
import { eventually, families, needPrometheus, promtoolCheckMetrics, sample, scrape } from './helpers/prometheus.js';

needPrometheus();

const cleanups: (() => Promise<unknown> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const LIMIT = 10_000;

/**
 * A quota.cgi whose answer depends on the mailbox: full, room and res{...} (usage from `usage`),
 * hang (never answers), err (HTTP 500), junk (not an answer), nobody (unknown), slow (300 ms).
 */
async function backend(usage: Record<string, number> = {}): Promise<Backend> {
  const b = await startBackend((url, _req, res) => {
    const user = url.searchParams.get('u') ?? '';
    const answer = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
    };
    if (user === 'hang') return;
    if (user === 'err') return answer(500, 'Internal Server Error\n');
    if (user === 'junk') return answer(200, '<html>nothing here</html>\n');
    if (user === 'nobody') return answer(404, `UNKNOWN ${user}\n`);
    const size = user === 'full' ? LIMIT * 2 : (usage[user] ?? 0);
    const line = `${size >= LIMIT ? 'OVERQUOTA' : 'OK'} ${user} ${size} ${LIMIT}\n`;
    if (user === 'slow') setTimeout(() => answer(200, line), 300);
    else answer(200, line);
  });
  cleanups.push(() => b.close());
  return b;
}

async function frontend(args: string[]): Promise<Running & { listeners: string[]; milterListeners: string[]; metrics: string }> {
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '127.0.0.1:0', ...args]);
  cleanups.push(() => fe.stop());
  const ready = fe.logs.find((l) => l.msg === 'frontend ready')!;
  return Object.assign(fe, { metrics: `http://${String(ready.admin)}/metrics` });
}

async function ask(address: string, recipient: string, extra: Record<string, string | number> = {}): Promise<string> {
  const client = await PolicyClient.connect(address);
  try {
    return await client.ask(rcpt(recipient, extra));
  } finally {
    client.close();
  }
}

async function clean(text: string): Promise<void> {
  const r = await promtoolCheckMetrics(text);
  assert.equal(r.code, 0, `promtool check metrics: ${r.stdout}${r.stderr}`);
  assert.equal(r.stdout + r.stderr, '');
}

test('decisions by face and verdict, answers by tier, source lookups by source and outcome with their latency; promtool finds nothing to fault', async () => {
  const b = await backend();
  const deadPort = await freePort();
  const fe = await frontend([
    '--source.type', 'http', '--source.url', b.url(), '--source.timeout', '200ms',
    '--backends', JSON.stringify([
      { domains: ['example.com'], type: 'http', url: b.url() },
      { domains: ['dead.example'], type: 'http', url: `http://127.0.0.1:${deadPort}/quota?u={key}` },
    ]),
  ]);
  const ours = `http:127.0.0.1:${b.port}/cgi-bin/quota.cgi`;
  const dead = `http:127.0.0.1:${deadPort}/quota`;
  // Every configured source has its series from the start, at 0: rate() and alerts need them.
  const before = await scrape(fe.metrics);
  for (const source of [ours, dead]) {
    assert.equal(sample(before, 'overquota_source_lookups_total', { source, outcome: 'ok' }), 0);
    assert.equal(sample(before, 'overquota_source_lookup_duration_seconds_count', { source }), 0);
  }
  const policy = fe.listeners[0]!;
  assert.equal(await ask(policy, 'full@example.com'), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await ask(policy, 'Full+tag@example.com'), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await ask(policy, 'room@example.com'), 'DUNNO');
  for (const who of ['hang', 'err', 'junk', 'nobody']) await ask(policy, `${who}@example.com`);
  await ask(policy, 'anyone@dead.example');
  await ask(policy, 'someone@not-served.example');

  const text = await scrape(fe.metrics);
  const decisions = (verdict: string) => sample(text, 'overquota_decisions_total', { face: 'policy', verdict });
  assert.deepEqual(
    ['over_quota', 'under_quota', 'error', 'unknown_mailbox', 'not_checked', 'too_large'].map(decisions),
    [2, 1, 4, 1, 1, 0],
  );
  assert.equal(sample(text, 'overquota_cache_answers_total', { tier: 'memory' }), 1, 'the second full@ came from memory');
  assert.equal(sample(text, 'overquota_cache_answers_total', { tier: 'source' }), 3, 'full, room, nobody: the answers that were not errors');
  const lookups = (source: string, outcome: string) => sample(text, 'overquota_source_lookups_total', { source, outcome });
  assert.deepEqual(
    ['ok', 'unknown', 'timeout', 'http_status', 'bad_answer', 'unreachable'].map((o) => lookups(ours, o)),
    [2, 1, 1, 1, 1, 0],
  );
  assert.equal(lookups(dead, 'unreachable'), 1);
  assert.equal(sample(text, 'overquota_source_lookup_duration_seconds_count', { source: ours }), 6);
  // The hung lookup took its whole source.timeout.
  assert.ok(sample(text, 'overquota_source_lookup_duration_seconds_sum', { source: ours })! >= 0.2);
  assert.equal(sample(text, 'overquota_build_info', { version: '0.1.0', node: process.versions.node }), 1);
  assert.equal(sample(text, 'overquota_redis_connected'), undefined, 'no Redis configured: no Redis gauge (an alert on 0 must not fire)');
  assert.ok(sample(text, 'process_resident_memory_bytes')! > 0);
  // Bounded labels: no recipient, mailbox or client address ever becomes a label value.
  for (const word of ['full', 'room', 'hang', 'nobody', 'anyone', 'someone', '192.0.2.10', 'sender@']) {
    assert.doesNotMatch(text, new RegExp(`="[^"]*${word}`), `a label value holds ${word}`);
  }
  for (const name of families(text)) assert.match(name, /^(overquota|process|nodejs)_/);
  await clean(text);
});

test('a lookup answered on_error because latency_budget ran out is counted as such, not as a source timeout of its own', async () => {
  const b = await backend();
  const fe = await frontend(['--source.type', 'http', '--source.url', b.url(), '--latency_budget', '300ms', '--source.timeout', '1500ms']);
  assert.equal(await ask(fe.listeners[0]!, 'hang@example.com'), 'DUNNO');
  const text = await scrape(fe.metrics);
  assert.equal(sample(text, 'overquota_latency_budget_exhausted_total'), 1);
  assert.equal(sample(text, 'overquota_decisions_total', { face: 'policy', verdict: 'error' }), 1);
  assert.equal(await ask(fe.listeners[0]!, 'room@example.com'), 'DUNNO');
  assert.equal(sample(await scrape(fe.metrics), 'overquota_latency_budget_exhausted_total'), 1, 'an answer in time is not counted');
});

test('milter decisions, protocol errors by face and code, open connections by face, single-flight waits', async () => {
  const b = await backend();
  const fe = await frontend(['--source.type', 'http', '--source.url', b.url(), '--milter.listen', 'inet:127.0.0.1:0', '--policy.max_line_length', '100']);
  const milterPort = Number(fe.milterListeners[0]!.split(':').pop());

  const mta = net.connect(milterPort, '127.0.0.1');
  mta.on('error', () => {});
  await new Promise((r) => mta.once('connect', r));
  mta.write(Buffer.concat([optneg(), connect(), mail('<a@example.net>'), milterRcpt('<full@example.com>')]));
  await eventually('the milter decision counted', async () => sample(await scrape(fe.metrics), 'overquota_decisions_total', { face: 'milter', verdict: 'over_quota' }) === 1);

  const idle = await Promise.all([PolicyClient.connect(fe.listeners[0]!), PolicyClient.connect(fe.listeners[0]!)]);
  // Connected on our side; the frontend counts them once it has accepted them.
  await eventually('two policy connections and one milter connection open', async () => {
    const t = await scrape(fe.metrics);
    return sample(t, 'overquota_open_connections', { face: 'policy' }) === 2 && sample(t, 'overquota_open_connections', { face: 'milter' }) === 1;
  });
  for (const c of idle) c.close();
  mta.destroy();

  // Two requests for one mailbox at once: one asks the slow backend, the other waits for it.
  const [x, y] = await Promise.all([PolicyClient.connect(fe.listeners[0]!), PolicyClient.connect(fe.listeners[0]!)]);
  assert.deepEqual(await Promise.all([x.ask(rcpt('slow@example.com')), y.ask(rcpt('slow@example.com'))]), ['DUNNO', 'DUNNO']);
  x.close();
  y.close();
  assert.equal(b.requests.filter((r) => r.url.includes('u=slow')).length, 1);

  const dropped = await PolicyClient.connect(fe.listeners[0]!);
  await assert.rejects(dropped.send(`request=smtpd_access_policy\nrecipient=${'x'.repeat(200)}@example.com\n\n`));
  const junk = net.connect(milterPort, '127.0.0.1');
  junk.on('error', () => {});
  junk.end('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
  await eventually('the milter protocol error counted', async () => (sample(await scrape(fe.metrics), 'overquota_protocol_errors_total', { face: 'milter', code: 'LENGTH_TOO_LARGE' }) ?? 0) === 1);
  const text = await scrape(fe.metrics);
  assert.equal(sample(text, 'overquota_protocol_errors_total', { face: 'policy', code: 'LINE_TOO_LONG' }), 1);
  assert.equal(sample(text, 'overquota_protocol_errors_total', { face: 'policy', code: 'MALFORMED_LINE' }), 0);
  assert.equal(sample(text, 'overquota_single_flight_waits_total', { scope: 'process' }), 1);
  assert.equal(sample(text, 'overquota_cache_answers_total', { tier: 'shared' }), 1);
  await clean(text);
});

test('reservations: made, delivered when a reading shows them, expired after reservations.ttl, and the verdicts mail on its way tipped', async () => {
  const usage: Record<string, number> = { res: 0 };
  const b = await backend(usage);
  const fe = await frontend([
    '--source.type', 'http', '--source.url', b.url(),
    '--cache.ttl.under_quota', '200ms', '--cache.ttl.near_limit', '100ms', '--reservations.ttl', '3s',
  ]);
  const policy = fe.listeners[0]!;
  const send = (instance: string) => ask(policy, 'res@example.com', { size: 4000, instance });
  assert.equal(await send('t1'), 'DUNNO');
  assert.equal(await send('t2'), 'DUNNO');
  assert.equal(await send('t3'), '452 4.2.2 Mailbox full, try again later', '0 used + 8000 on its way + 4000 > 10000');
  let text = await scrape(fe.metrics);
  assert.equal(sample(text, 'overquota_reservations_total'), 2);
  assert.equal(sample(text, 'overquota_pending_tipped_verdicts_total'), 1);
  // t1's message is stored: the next reading (after the shortened TTL) shows 4000 more.
  usage.res = 4000;
  await eventually('a reading that shows t1 delivered', async () => {
    await ask(policy, 'res@example.com', { size: 0 });
    return sample(await scrape(fe.metrics), 'overquota_reservations_ended_total', { reason: 'delivered' }) === 1;
  });
  // t2's never shows: it goes after reservations.ttl.
  await eventually('t2 expired', async () => {
    await ask(policy, 'res@example.com', { size: 0 });
    return sample(await scrape(fe.metrics), 'overquota_reservations_ended_total', { reason: 'expired' }) === 1;
  });
  text = await scrape(fe.metrics);
  assert.equal(sample(text, 'overquota_reservations_ended_total', { reason: 'delivered' }), 1);
  await clean(text);
});

test('Redis: connected as a gauge, command failures counted, lookups that waited on another frontend counted', async () => {
  const why = redisUnavailable();
  if (why) throw new Error(why);
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const b = await backend();
  const args = ['--source.type', 'http', '--source.url', b.url(), '--redis.url', redis.url, '--redis.command_timeout', '200ms'];
  const [one, two] = await Promise.all([frontend(args), frontend(args)]);
  assert.equal(sample(await scrape(one.metrics), 'overquota_redis_connected'), 1);

  // The same mailbox on both at once: one frontend asks the slow backend, the other waits (the Redis lock).
  assert.deepEqual(await Promise.all([ask(one.listeners[0]!, 'slow@example.com'), ask(two.listeners[0]!, 'slow@example.com')]), ['DUNNO', 'DUNNO']);
  const waits = (await Promise.all([one, two].map(async (fe) => sample(await scrape(fe.metrics), 'overquota_single_flight_waits_total', { scope: 'cluster' })!))).reduce((a, n) => a + n);
  assert.equal(waits, 1);

  // A frozen Redis: commands time out, the answer comes anyway, the failure is counted.
  process.kill(redis.pid, 'SIGSTOP');
  try {
    assert.equal(await ask(one.listeners[0]!, 'full@example.com'), '452 4.2.2 Mailbox full, try again later');
  } finally {
    process.kill(redis.pid, 'SIGCONT');
  }
  assert.ok(sample(await scrape(one.metrics), 'overquota_redis_errors_total')! >= 1);
  await redis.kill();
  await eventually('redis_connected 0 once Redis is gone', async () => sample(await scrape(one.metrics), 'overquota_redis_connected') === 0);
  await clean(await scrape(one.metrics));
});

test('SIGHUP re-reads are counted by result: ok, and failed when the file is refused', async () => {
  const dir = await tempDir('overquota-metrics-');
  cleanups.push(() => dir.cleanup());
  const aliases = path.join(dir.path, 'virtual');
  await writeFile(aliases, 'team@example.com alice@example.com\n');
  const fe = await frontend(['--store.path', dir.path, '--aliases.file', aliases]);
  const reloads = async (result: string) => sample(await scrape(fe.metrics), 'overquota_config_reloads_total', { result });
  fe.proc.kill('SIGHUP');
  await eventually('one good reload', async () => (await reloads('ok')) === 1);
  await writeFile(aliases, 'lonely@example.com\n');
  fe.proc.kill('SIGHUP');
  await eventually('one refused reload', async () => (await reloads('failed')) === 1);
  assert.equal(await reloads('ok'), 1);
});

test('the quota service counts its requests by endpoint and status, its scans and their duration', async () => {
  const dir = await tempDir('overquota-metrics-qs-');
  cleanups.push(() => dir.cleanup());
  for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(dir.path, 'ann', 'Maildir', sub), { recursive: true });
  await writeFile(path.join(dir.path, 'ann', 'Maildir', 'cur', '1700000000.M1P1.host,S=300:2,S'), 'x'.repeat(300));
  const qs = await startQuotaServiceProcess(['--store.type', 'maildir', '--store.path', dir.path, '--store.mailbox', '{user}/Maildir', '--store.limit', '1M']);
  cleanups.push(() => qs.stop());
  const get = (p: string) => fetch(`${qs.baseUrl}${p}`).then((r) => r.status);
  assert.equal(await get('/quota?u=ann'), 200);
  assert.equal(await get('/quota.json?u=ann'), 200);
  assert.equal(await get('/cgi-bin/quota.cgi?u=..'), 400);
  assert.equal(await get('/quota?u=ghost'), 404);
  assert.equal(await get('/nowhere/ann@example.com'), 404);
  assert.equal(await get('/health'), 200);
  const text = await scrape(`${qs.baseUrl}/metrics`);
  const requests = (endpoint: string, status: string) => sample(text, 'overquota_quota_service_requests_total', { endpoint, status });
  assert.deepEqual(
    [requests('quota', '200'), requests('quota.json', '200'), requests('quota.cgi', '400'), requests('quota', '404'), requests('other', '404'), requests('health', '200')],
    [1, 1, 1, 1, 1, 1],
  );
  assert.ok(sample(text, 'overquota_maildir_scan_duration_seconds_count')! >= 1, 'ann has no maildirsize: recounted');
  assert.equal(sample(text, 'overquota_quota_service_lookups_in_flight'), 0);
  assert.equal(sample(text, 'overquota_decisions_total', { face: 'policy', verdict: 'over_quota' }), undefined, 'no frontend metrics here');
  assert.doesNotMatch(text, /ann|ghost/);
  await clean(text);
  const again = await scrape(`${qs.baseUrl}/metrics`);
  assert.equal(sample(again, 'overquota_quota_service_requests_total', { endpoint: 'metrics', status: '200' }), 1, 'the scrape before this one');
});
