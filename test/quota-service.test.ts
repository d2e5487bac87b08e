/*
 * The quota service over real mbox and Maildir trees: seed-compatible text answers byte for byte,
 * JSON, every class of hostile user answered 400, symlinks out of the root never followed,
 * bearer tokens, bounds, and failures that answer 503 rather than a fake OK.
 * These tests must never touch files outside their own temporary directory.
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { startQuotaService, type QuotaServiceOptions } from '../src/faces/quota-service/server.js';
import { MboxStore } from '../src/stores/mbox.js';
import { MaildirStore } from '../src/stores/maildir/store.js';
import { LimitsFile } from '../src/stores/limits.js';
import { SourceError, found, type QuotaSource } from '../src/quota.js';

const MiB200 = 200 * 1024 * 1024;
const SECRET_SIZE = 987_654;

interface Ctx {
  after(fn: () => Promise<void> | void): void;
}

async function fixture(t: Ctx) {
  const base = await mkdtemp(path.join(os.tmpdir(), 'overquota-service-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const spool = path.join(base, 'spool');
  const outside = path.join(base, 'outside');
  await mkdir(spool);
  await mkdir(outside);
  await writeFile(path.join(spool, 'alice'), 'x'.repeat(1234));
  await writeFile(path.join(spool, 'bob'), 'x'.repeat(2048));
  await writeFile(path.join(spool, 'exact'), 'x'.repeat(1024));
  await writeFile(path.join(spool, 'dave'), 'hello');
  await writeFile(path.join(outside, 'secret'), 'x'.repeat(SECRET_SIZE));
  await symlink(path.join(outside, 'secret'), path.join(spool, 'evil'));
  await writeFile(path.join(base, 'limits'), 'bob 1K\nexact 1K\ndave -\n');
  const limits = new LimitsFile();
  assert.deepEqual(await limits.load(path.join(base, 'limits')), []);
  return { base, spool, outside, mbox: new MboxStore({ root: spool, defaultLimitBytes: MiB200, limits }) };
}

async function serve(t: Ctx, store: QuotaSource, extra: Partial<QuotaServiceOptions> = {}) {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const svc = await startQuotaService({ host: '127.0.0.1', port: 0, store, logger, ...extra });
  t.after(() => svc.close());
  const get = async (target: string, init: RequestInit = {}) => {
    const res = await fetch(`http://127.0.0.1:${svc.port}${target}`, init);
    return { status: res.status, headers: res.headers, body: await res.text() };
  };
  return { svc, get, lines };
}

test('mbox answers are the seed CGI line, byte for byte, on both paths', async (t) => {
  const { mbox } = await fixture(t);
  const { get } = await serve(t, mbox);
  const ok = await get('/quota?u=alice');
  assert.equal(ok.status, 200);
  assert.match(ok.headers.get('content-type')!, /^text\/plain/);
  assert.equal(ok.body, `OK alice 1234 ${MiB200}\n`);
  assert.equal((await get('/cgi-bin/quota.cgi?u=alice')).body, `OK alice 1234 ${MiB200}\n`);
  assert.equal((await get('/quota?u=bob')).body, 'OVERQUOTA bob 2048 1024\n');
  assert.equal((await get('/quota?u=exact')).body, 'OVERQUOTA exact 1024 1024\n', 'usage equal to the limit is full');
  assert.equal((await get('/quota?u=dave')).body, 'OK dave 5 0\n', 'unlimited is printed as 0');
  assert.equal((await get('/quota?u=carol')).body, `OK carol 0 ${MiB200}\n`, 'no mbox yet: empty');
});

test('the JSON answer carries state, usage, limit and source', async (t) => {
  const { mbox, spool } = await fixture(t);
  const { get } = await serve(t, mbox);
  const r = await get('/quota.json?u=bob');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type')!, /^application\/json/);
  assert.deepEqual(JSON.parse(r.body), {
    user: 'bob',
    state: 'overquota',
    usage: { bytes: 2048, messages: null },
    limit: { bytes: 1024, messages: null },
    source: `mbox:${spool}`,
  });
  assert.equal(JSON.parse((await get('/quota.json?u=alice')).body).state, 'ok');
});

test('an unknown Maildir user is 404 UNKNOWN in text and state unknown in JSON', async (t) => {
  const { base } = await fixture(t);
  const vmail = path.join(base, 'vmail');
  for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(vmail, 'ann', 'Maildir', sub), { recursive: true });
  await writeFile(path.join(vmail, 'ann', 'Maildir', 'maildirsize'), '5000S,10C\n400 2\n');
  const { get } = await serve(t, new MaildirStore({ root: vmail, mailbox: '{user}/Maildir', defaultLimitBytes: null }));
  assert.deepEqual(await get('/quota?u=nobody').then((r) => [r.status, r.body]), [404, 'UNKNOWN nobody\n']);
  const j = await get('/quota.json?u=nobody');
  assert.equal(j.status, 404);
  assert.equal(JSON.parse(j.body).state, 'unknown');
  assert.equal((await get('/quota?u=ann')).body, 'OK ann 400 5000\n');
  assert.deepEqual(JSON.parse((await get('/quota.json?u=ann')).body).usage, { bytes: 400, messages: 2 });
});

test('health answers ok while the store root can be read', async (t) => {
  const { mbox, spool } = await fixture(t);
  const { get } = await serve(t, mbox);
  const r = await get('/health');
  assert.deepEqual([r.status, JSON.parse(r.body)], [200, { status: 'ok', source: `mbox:${spool}` }]);
});

test('every class of bad user is answered 400 with a one-line reason and never echoed', async (t) => {
  const { mbox } = await fixture(t);
  const { get } = await serve(t, mbox);
  const cases: Record<string, RegExp> = {
    'u=../../etc/passwd': /slash/,
    'u=..': /path segment/,
    'u=a/b': /slash/,
    'u=a%2Fb': /slash/,
    'u=a%5Cb': /slash/,
    'u=%00': /NUL/,
    [`u=${'a'.repeat(300)}`]: /longer than 255/,
    'u=a%0Ab': /control/,
    'u=a%1Bb': /control/,
    'u=a%7Fb': /control/,
    'u=a%C2%85b': /control/,
    'u=%ff': /UTF-8/,
    'u=a%C3': /UTF-8/,
    'u=%': /UTF-8/,
    'u=a%E2%88%95etc': /look-alike/,
    'u=a%EF%BC%8Fb': /look-alike/,
    'u=%EF%BC%8E%EF%BC%8E': /look-alike/,
    'u=%E2%80%A4%E2%80%A4': /look-alike/,
    'u=%EF%BF%BD': /FFFD/,
    'u=a+b': /whitespace/,
    'u=': /missing/,
    'x=alice': /missing/,
    'u=alice&u=bob': /more than one/,
  };
  for (const [query, reason] of Object.entries(cases)) {
    const r = await get(`/quota?${query}`);
    assert.equal(r.status, 400, query);
    assert.match(r.body, /^ERROR [^\n]+\n$/, query);
    assert.match(r.body, reason, query);
    assert.doesNotMatch(r.body, /etc|passwd|aaaa/, `${query}: the bad user is not echoed`);
    const j = await get(`/quota.json?${query}`);
    assert.equal(j.status, 400, query);
    assert.match(JSON.parse(j.body).error, reason, query);
  }
});

test('a symlink inside the root pointing outside is never followed', async (t) => {
  const { mbox } = await fixture(t);
  const { get } = await serve(t, mbox);
  for (const target of ['/quota?u=evil', '/quota.json?u=evil']) {
    const r = await get(target);
    assert.ok(r.status === 400 || r.status === 404, `${target}: ${r.status}`);
    assert.ok(!r.body.includes(String(SECRET_SIZE)), `${target}: the outside file's size leaked: ${r.body}`);
  }
  assert.equal((await get('/quota?u=evil')).body, 'UNKNOWN evil\n');
});

test('with a token, quota answers need the bearer token and health does not', async (t) => {
  const { mbox } = await fixture(t);
  const { get } = await serve(t, mbox, { token: 's3cret-token' });
  const none = await get('/quota?u=alice');
  assert.equal(none.status, 401);
  assert.equal(none.headers.get('www-authenticate'), 'Bearer');
  assert.doesNotMatch(none.body, /1234/);
  assert.equal((await get('/quota?u=alice', { headers: { authorization: 'Bearer wrong' } })).status, 401);
  assert.equal((await get('/quota?u=alice', { headers: { authorization: 'Bearer s3cret-token-and-more' } })).status, 401);
  assert.equal((await get('/quota?u=alice', { headers: { authorization: 'Basic czNjcmV0LXRva2Vu' } })).status, 401);
  const ok = await get('/quota?u=alice', { headers: { authorization: 'Bearer s3cret-token' } });
  assert.deepEqual([ok.status, ok.body], [200, `OK alice 1234 ${MiB200}\n`]);
  assert.equal((await get('/health')).status, 200);
});

test('other paths are 404, other methods 405, over-long URLs 414', async (t) => {
  const { mbox } = await fixture(t);
  const { get } = await serve(t, mbox);
  assert.equal((await get('/etc/passwd')).status, 404);
  assert.equal((await get('/quota/alice')).status, 404);
  const post = await get('/quota?u=alice', { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, HEAD');
  assert.equal((await get(`/quota?u=${'a'.repeat(3000)}`)).status, 414);
});

test('a failing store is answered 503 with its reason, never a fake OK', async (t) => {
  const failing: QuotaSource = {
    name: 'failing',
    lookup: async () => {
      throw new SourceError('SOURCE_IO', 'cannot stat the mbox: EACCES');
    },
    close: async () => {},
  };
  const { get, lines } = await serve(t, failing);
  const r = await get('/quota?u=alice');
  assert.equal(r.status, 503);
  assert.equal(r.body, 'ERROR SOURCE_IO: cannot stat the mbox: EACCES\n');
  assert.equal(JSON.parse((await get('/quota.json?u=alice')).body).error, 'SOURCE_IO: cannot stat the mbox: EACCES');
  assert.ok(lines.some((l) => l.status === 503 && l.user === 'alice'));

  const broken: QuotaSource = { name: 'broken', lookup: async () => Promise.reject(new TypeError('bug')), close: async () => {} };
  const b = await serve(t, broken);
  assert.deepEqual(await b.get('/quota?u=alice').then((x) => [x.status, x.body]), [503, 'ERROR internal error\n']);
});

test('lookups beyond maxLookups are refused 503 with Retry-After', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let calls = 0;
  const slow: QuotaSource = {
    name: 'slow',
    lookup: async () => {
      calls++;
      await gate;
      return found(10, 100);
    },
    close: async () => {},
  };
  const { get } = await serve(t, slow, { maxLookups: 1 });
  const first = get('/quota?u=alice');
  while (calls === 0) await new Promise((r) => setTimeout(r, 5));
  const second = await get('/quota?u=bob');
  assert.equal(second.status, 503);
  assert.equal(second.headers.get('retry-after'), '1');
  release();
  assert.equal((await first).body, 'OK alice 10 100\n');
  assert.equal((await get('/quota?u=bob')).status, 200, 'the slot is free again');
});

test('garbage on the socket is answered 400 and the service keeps serving', async (t) => {
  const { mbox } = await fixture(t);
  const { svc, get } = await serve(t, mbox);
  const reply = await new Promise<string>((resolve, reject) => {
    const sock = net.connect(svc.port, '127.0.0.1', () => sock.write('\u0000\u0001 NOT HTTP\r\n\r\n'));
    let data = '';
    sock.on('data', (d) => (data += d.toString('latin1')));
    sock.on('close', () => resolve(data));
    sock.on('error', reject);
  });
  assert.match(reply, /^HTTP\/1\.1 400/);
  assert.equal((await get('/quota?u=alice')).status, 200);
});

test('each request is logged once with user, status and duration', async (t) => {
  const { mbox } = await fixture(t);
  const { get, lines } = await serve(t, mbox);
  await get('/quota?u=alice');
  await get('/quota?u=a%2Fb');
  const requests = lines.filter((l) => l.msg === 'quota request');
  assert.equal(requests.length, 2);
  assert.deepEqual([requests[0]!.user, requests[0]!.status, typeof requests[0]!.ms], ['alice', 200, 'number']);
  assert.equal(requests[1]!.user, undefined, 'an invalid user is not logged');
  assert.equal(requests[1]!.status, 400);
});

test('the mbox store itself refuses bad keys, honours an aborted signal, and reports a directory as an IO error', async (t) => {
  const { mbox, spool } = await fixture(t);
  await assert.rejects(mbox.lookup('../outside/secret', new AbortController().signal), { code: 'SOURCE_BAD_KEY' });
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(mbox.lookup('alice', aborted.signal), { code: 'SOURCE_TIMEOUT' });
  await mkdir(path.join(spool, 'maildir-user'));
  await assert.rejects(mbox.lookup('maildir-user', new AbortController().signal), { code: 'SOURCE_IO' });
  const { get } = await serve(t, mbox);
  assert.match((await get('/quota?u=maildir-user')).body, /^ERROR SOURCE_IO: /);
});

test('ready answers 503 with the reason when the store root cannot be read, and 200 again once it can; health (liveness) stays 200', async (t) => {
  const { mbox, spool, base } = await fixture(t);
  const { get } = await serve(t, mbox);
  const moved = path.join(base, 'moved-away');
  await rename(spool, moved);
  const gone = await get('/ready');
  assert.equal(gone.status, 503);
  assert.deepEqual(JSON.parse(gone.body), { status: 'failing', source: `mbox:${spool}`, reason: `store root ${spool} cannot be read: ENOENT` });
  assert.equal((await get('/health')).status, 200);
  await writeFile(spool, 'not a directory');
  assert.match(JSON.parse((await get('/ready')).body).reason, /ENOTDIR/);
  await rm(spool);
  await rename(moved, spool);
  const back = await get('/ready');
  assert.deepEqual([back.status, JSON.parse(back.body)], [200, { status: 'ready', source: `mbox:${spool}` }]);
});

test('ready does not wait for a store that never answers: 503 after its bound', async (t) => {
  const hung: QuotaSource = {
    name: 'hung',
    lookup: () => new Promise(() => {}),
    health: () => new Promise(() => {}),
    close: async () => {},
  };
  const { get } = await serve(t, hung);
  const r = await get('/ready');
  assert.equal(r.status, 503);
  assert.match(JSON.parse(r.body).reason, /did not answer within/);
});

test('POST /invalidate off loopback needs a token: the service refuses to start without one', async (t) => {
  const { mbox } = await fixture(t);
  const publishInvalidation = async () => true;
  const logger = pino({ level: 'silent' });
  await assert.rejects(
    startQuotaService({ host: '0.0.0.0', port: 0, store: mbox, logger, publishInvalidation }),
    /not loopback.*needs a token/,
  );
  const svc = await startQuotaService({ host: '0.0.0.0', port: 0, store: mbox, logger, publishInvalidation, token: 't0k' });
  t.after(() => svc.close());
  const post = (headers: Record<string, string> = {}) => fetch(`http://127.0.0.1:${svc.port}/invalidate?u=alice`, { method: 'POST', headers });
  assert.equal((await post()).status, 401);
  assert.equal((await post({ authorization: 'Bearer t0k' })).status, 200);
  // On loopback no token is needed (only this host can reach it).
  const local = await startQuotaService({ host: '127.0.0.1', port: 0, store: mbox, logger, publishInvalidation });
  t.after(() => local.close());
  assert.equal((await fetch(`http://127.0.0.1:${local.port}/invalidate?u=alice`, { method: 'POST' })).status, 200);
});

test('an mbox whose limit is too small to be a quota is answered 503 (a bad figure), never OVERQUOTA', async (t) => {
  const { spool, base } = await fixture(t);
  await writeFile(path.join(base, 'tiny-limits'), 'alice 100\n');
  const limits = new LimitsFile();
  assert.deepEqual(await limits.load(path.join(base, 'tiny-limits')), []);
  const { get } = await serve(t, new MboxStore({ root: spool, defaultLimitBytes: MiB200, limits }));
  const r = await get('/quota?u=alice');
  assert.equal(r.status, 503);
  assert.match(r.body, /^ERROR SOURCE_BAD_ANSWER: the limits file or store.limit names a limit of 100 bytes/);
});
