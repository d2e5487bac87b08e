/*
 * A burst of first lookups of full mailboxes, frontend -> quota service over HTTP, real processes:
 * every answer must be 452. Busy is not broken: the quota service queues lookups (bounding only
 * Maildir recounts) and a frontend asks a busy quota service again within its budget; neither may
 * turn "busy" into the on_error answer (DUNNO: accepted, bounced later).
 *
 * Budgets. The last test runs at the defaults (latency_budget 2 s, source.timeout 1.5 s): issue 11's
 * own case, where half the answers were on_error. The others pass 20 s, for machine load only: the
 * 2-core machine that runs this suite is shared (benchmarks, other suites), and a burst costs CPU
 * that a deadline does not wait for. Measured (48 lookups over Dovecot, started cold): about 0.85 s
 * of CPU (Dovecot 0.4 s, the quota service 0.17 s, the frontend 0.15 s, this process 0.06 s) over
 * three rounds of 16 connections. At the defaults the three other tests passed 3 times out of 3 at
 * load average 5; with their processes held to half a CPU (a cgroup quota) two of them gave 127 and
 * 34 on_error answers, and passed with 20 s. The default-budget test, over some 40 runs here,
 * passed every time while the load average stayed under 10, failed 3 runs of about 12 between 10
 * and 12, and 5 of 6 between 13 and 17 (5 to 25 on_error, each a SOURCE_TIMEOUT of a lookup queued
 * behind two rounds, never a "busy"): on such a machine its failure says "overloaded", not "busy
 * turned into accept". Reverting the queueing (503 past 8 lookups, as before the fix) fails it at
 * any load (4 to 12 on_error of 48 at load 6-8; 40 with the frontend's retry reverted too).
 * They must never touch files outside their temporary directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startDovecot, dovecotUnavailable } from './helpers/dovecot.js';
import { tempDir } from './helpers/tmp.js';

const FULL = '452 4.2.2 Mailbox full, try again later';
const GENEROUS = ['--latency_budget', '20s', '--source.timeout', '20s'];

/** `count` Maildirs under root, each holding 12,000 bytes of mail (by ,S= names) and no maildirsize. */
async function fullMaildirs(root: string, count: number): Promise<string[]> {
  const users = Array.from({ length: count }, (_, i) => `full${i}`);
  for (const user of users) {
    const dir = path.join(root, user, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub), { recursive: true });
    await fs.writeFile(path.join(dir, 'cur', '1700000000.M1P1.host,S=6000:2,S'), '');
    await fs.writeFile(path.join(dir, 'new', '1700000001.M2P1.host,S=6000'), '');
  }
  return users;
}

/** Every user asked at once, each on its own policy connection (as many smtpd processes would). */
async function askAll(listener: string, users: string[]): Promise<string[]> {
  const clients = await Promise.all(users.map(() => PolicyClient.connect(listener)));
  try {
    return await Promise.all(users.map((u, i) => clients[i]!.ask(rcpt(`${u}@example.com`))));
  } finally {
    for (const c of clients) c.close();
  }
}

function tally(answers: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of answers) counts[a] = (counts[a] ?? 0) + 1;
  return counts;
}

async function stopAll(...processes: (Running | undefined)[]): Promise<void> {
  for (const p of processes) await p?.stop();
}

test('300 concurrent first lookups of 300 full Maildirs through the quota service all get 452', async () => {
  const tmp = await tempDir('overquota-burst-');
  const users = await fullMaildirs(tmp.path, 300);
  let qs, fe;
  try {
    // Default bounds: 8 recounts at once, the frontend opening up to 16 connections.
    qs = await startQuotaServiceProcess(['--store.type', 'maildir', '--store.path', tmp.path, '--store.mailbox', '{user}/Maildir', '--store.limit', '10K']);
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', `${qs.baseUrl}/quota?u={key}`, ...GENEROUS]);
    const answers = await askAll(fe.listeners[0]!, users);
    assert.deepEqual(tally(answers), { [FULL]: 300 });
    assert.equal(qs.logs.filter((l) => l.msg === 'quota request' && l.status === 503).length, 0, 'nothing answered busy');
  } finally {
    await stopAll(fe, qs);
    await tmp.cleanup();
  }
});

test('a frontend asks a busy quota service again within its budget: 200 lookups against 2 places, all 452', async () => {
  const tmp = await tempDir('overquota-busy-');
  const users = await fullMaildirs(tmp.path, 200);
  let qs, fe;
  try {
    qs = await startQuotaServiceProcess([
      '--store.type', 'maildir', '--store.path', tmp.path, '--store.mailbox', '{user}/Maildir', '--store.limit', '10K',
      '--quota_service.max_lookups', '2',
    ]);
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', `${qs.baseUrl}/quota?u={key}`, ...GENEROUS]);
    const answers = await askAll(fe.listeners[0]!, users);
    assert.deepEqual(tally(answers), { [FULL]: 200 });
    const busy = qs.logs.filter((l) => l.msg === 'quota request' && l.status === 503);
    assert.ok(busy.length > 0, 'the quota service did answer busy: the frontend asked again');
    assert.ok(busy.every((l) => l.error === 'busy, try again'));
  } finally {
    await stopAll(fe, qs);
    await tmp.cleanup();
  }
});

/**
 * A TCP proxy that holds every chunk from the client for `delayMs` before passing it on: a doveadm
 * that takes that long to answer each request, for real (Dovecot itself answers in a millisecond).
 */
async function delayingProxy(targetPort: number, delayMs: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.on('data', (chunk) => {
      client.pause();
      setTimeout(() => {
        upstream.write(chunk);
        client.resume();
      }, delayMs);
    });
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * `count` full Dovecot mailboxes (120 KiB in 100 KiB), asked all at once through a frontend ->
 * quota service -> doveadm taking 200 ms a call; `budget`: the frontend's budget flags. The answers.
 */
async function burstOverSlowDovecot(count: number, prefix: string, budget: string[]): Promise<string[]> {
  const why = dovecotUnavailable();
  if (why) throw new Error(why);
  const users = Array.from({ length: count }, (_, i) => ({ name: `${prefix}${i}`, quota: '100K' }));
  const dc = await startDovecot({ users });
  let proxy, qs, fe;
  try {
    for (let i = 0; i < users.length; i += 8) await Promise.all(users.slice(i, i + 8).map((u) => dc.fill(u.name, 120 * 1024)));
    proxy = await delayingProxy(dc.httpPort, 200);
    const url = `http://127.0.0.1:${proxy.port}/doveadm/v1`;
    qs = await startQuotaServiceProcess(['--store.type', 'doveadm', '--doveadm.url', url, '--doveadm.password', dc.password]);
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', `${qs.baseUrl}/quota?u={key}`, ...budget]);
    return await askAll(fe.listeners[0]!, users.map((u) => u.name));
  } finally {
    await stopAll(fe, qs);
    await proxy?.close();
    await dc.stop();
  }
}

test('64 concurrent lookups of full mailboxes through a quota service over a slow Dovecot (200 ms per doveadm call) all get 452', async () => {
  assert.deepEqual(tally(await burstOverSlowDovecot(64, 'f', GENEROUS)), { [FULL]: 64 });
});

test('at the default budgets (2 s, source 1.5 s): 48 concurrent first lookups of full mailboxes through a quota service over a slow Dovecot (200 ms per doveadm call) all get 452', async () => {
  // Issue 11's own case, nothing stretched (see the header for what load does to it): before the
  // fix 24 of these 48 got the on_error answer. No budget flag: the defaults are under test.
  assert.deepEqual(tally(await burstOverSlowDovecot(48, 'd', [])), { [FULL]: 48 });
});
