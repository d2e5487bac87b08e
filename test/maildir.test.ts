/*
 * Maildir++ quota: maildirsize parsing, Courier's recalculation rules, the scan (folders, Trash,
 * ,S= sizes, symlinks, changes mid-scan), the scan cache (reuse while mtimes are unchanged, the
 * racy margin, bounds, shared scans) and the MaildirStore answers built from them.
 * Whether a directory was read is told by the scan's own counters (the code that opens it counts),
 * never by timing. These tests must never touch files outside their own temporary directory.
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import {
  MaildirStore,
  RACY_MARGIN_MS,
  RECALC_STALE_MS,
  parseMaildirsize,
  recalculationReason,
  scanMaildir,
  sizeFromFileName,
  type MaildirScan,
  type MaildirScanStats,
} from '../src/stores/maildir/store.js';
import { MaildirScanCache, emptySnapshot, type StopFlag } from '../src/stores/maildir/scan-cache.js';
import { LimitsFile } from '../src/stores/limits.js';
import type { QuotaState } from '../src/quota.js';
import { blockingIo, threadPoolIo } from '../src/stores/io.js';
import { pino } from 'pino';

/** Lookups make their file-system calls on the thread pool (frontends) or blocking (the quota service). */
const IO_KINDS = [
  ['on the thread pool', threadPoolIo],
  ['blocking, as the quota service', blockingIo],
] as const;

const live = () => new AbortController().signal;

async function tempRoot(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'overquota-maildir-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function maildir(dir: string, ...folders: string[]): Promise<void> {
  for (const f of ['', ...folders]) {
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(dir, f, sub), { recursive: true });
    if (f) await writeFile(path.join(dir, f, 'maildirfolder'), '');
  }
}

/** A message file of `bytes` bytes (a ,S= in `name` may claim another size, on purpose). */
async function message(dir: string, name: string, bytes: number): Promise<void> {
  await writeFile(path.join(dir, name), 'x'.repeat(bytes));
}

async function ago(file: string, ms: number): Promise<void> {
  const when = new Date(Date.now() - ms);
  await utimes(file, when, when);
}

/** The figures of a scan, without its work counters. */
function figures(scan: MaildirScan) {
  return { bytes: scan.bytes, messages: scan.messages, attempts: scan.attempts, stable: scan.stable };
}

/**
 * Sets the mtime of the mailbox's directories (root, folders, their new/ cur/ tmp/) to `when`
 * (seconds since the epoch): a mailbox nobody touched lately, whose counts the cache may keep.
 */
async function settle(dir: string, when = Math.floor(Date.now() / 1000) - 60): Promise<void> {
  const folders = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory() && e.name.startsWith('.'));
  for (const f of ['', ...folders.map((e) => e.name)]) {
    for (const sub of ['cur', 'new', 'tmp']) await utimes(path.join(dir, f, sub), when, when).catch(() => undefined);
    if (f) await utimes(path.join(dir, f), when, when);
  }
  await utimes(dir, when, when);
}

/** What a store's scans did between two snapshots of its counters. */
function delta(before: MaildirScanStats, after: MaildirScanStats): MaildirScanStats {
  return {
    scans: after.scans - before.scans,
    directoriesRead: after.directoriesRead - before.directoriesRead,
    directoriesReused: after.directoriesReused - before.directoriesReused,
    rootListings: after.rootListings - before.rootListings,
    entries: after.entries - before.entries,
  };
}

async function lookupCounting(store: MaildirStore, key: string) {
  const before = { ...store.scanStats };
  const q = expectFound(await store.lookup(key, live()));
  return { q, work: delta(before, store.scanStats) };
}

function expectFound(state: QuotaState) {
  assert.equal(state.kind, 'found');
  return state as Extract<QuotaState, { kind: 'found' }>;
}

test('maildirsize limits and data lines are summed, Courier padding included', () => {
  const p = parseMaildirsize('10000000S,1000C\n      1234 1\n   5000     2\n-1234 -1\n');
  assert.deepEqual(p, {
    limitsLine: '10000000S,1000C',
    limitBytes: 10000000,
    limitMessages: 1000,
    usageBytes: 5000,
    usageMessages: 2,
    dataLines: 3,
    corruption: null,
  });
  const countOnly = parseMaildirsize('500C\n10 1\n');
  assert.equal(countOnly.limitBytes, null);
  assert.equal(countOnly.limitMessages, 500);
  const none = parseMaildirsize('\n10 1\n');
  assert.equal(none.limitsLine, null);
  assert.equal(none.corruption, null);
});

test('garbage in maildirsize and negative totals are reported as corruption', () => {
  assert.match(parseMaildirsize('10M\n1 1\n').corruption!, /bad limits line/);
  assert.equal(parseMaildirsize('10M\n1 1\n').limitsLine, null, 'a bad limits line is not kept');
  assert.match(parseMaildirsize('100S\n1 1\nhello\n').corruption!, /line 3/);
  assert.match(parseMaildirsize('100S\n10 1\n-50 -1\n').corruption!, /negative totals/);
  assert.match(parseMaildirsize('100S\n10 1\n10 -3\n').corruption!, /negative/);
});

test('recalculation is needed when maildirsize is missing, large, corrupt, or over quota and untrustworthy', () => {
  const now = Date.now();
  const file = (text: string, size = text.length, ageMs = 0) => ({ parsed: parseMaildirsize(text), size, mtimeMs: now - ageMs });
  assert.match(recalculationReason(null, now)!, /missing/);
  assert.match(recalculationReason(file('100S\n1 1\n', 5120), now)!, />= 5120/);
  assert.equal(recalculationReason(file('100S\n1 1\n', 5119), now), null);
  assert.match(recalculationReason(file('100S\n10 1\n-20 -1\n'), now)!, /corrupt/);
  assert.match(recalculationReason(file('100S\n60 1\n60 1\n'), now)!, /several data lines/);
  assert.match(recalculationReason(file('100S\n150 3\n', undefined, RECALC_STALE_MS), now)!, /15 minutes/);
  assert.match(recalculationReason(file('10C\n150 10\n', undefined, RECALC_STALE_MS + 1), now)!, /15 minutes/);
  // Over quota, one line, fresh: trusted. Under quota with many lines: trusted.
  assert.equal(recalculationReason(file('100S\n150 3\n', undefined, RECALC_STALE_MS - 60_000), now), null);
  assert.equal(recalculationReason(file('1000S\n1 1\n1 1\n1 1\n'), now), null);
});

test('a size in the file name is read from ,S= up to the next , or :', () => {
  assert.equal(sizeFromFileName('1700000000.M1P2.host,S=2048:2,S'), 2048);
  assert.equal(sizeFromFileName('1700000000.M1P2.host,S=2048,W=2100:2,'), 2048);
  assert.equal(sizeFromFileName('1700000000.M1P2.host,S=2048'), 2048);
  assert.equal(sizeFromFileName('1700000000.M1P2.host:2,S'), null);
  assert.equal(sizeFromFileName('x,S=12ab'), null);
});

test('a scan counts new and cur of the root and of every folder except Trash, ,S= before stat', async (t) => {
  const dir = await tempRoot(t);
  await maildir(dir, '.Sent', '.Trash', '.Work.Archive');
  await message(path.join(dir, 'cur'), '1.a.host,S=1000:2,S', 10); // counted as 1000
  await message(path.join(dir, 'new'), '2.b.host', 300); // no S=: stat says 300
  await message(path.join(dir, '.Sent', 'cur'), '3.c.host,S=40:2,S', 40);
  await message(path.join(dir, '.Work.Archive', 'new'), '4.d.host', 7);
  await message(path.join(dir, '.Trash', 'cur'), '5.e.host,S=90000:2,T', 5);
  await message(path.join(dir, 'tmp'), '6.f.host,S=80000', 5); // being delivered: not yet mail
  await message(path.join(dir, 'cur'), '.hidden', 5);
  await message(dir, 'outside-file', 123456);
  await symlink(path.join(dir, 'outside-file'), path.join(dir, 'cur', '7.g.host')); // never followed
  await symlink(path.join(dir, '.Sent'), path.join(dir, '.Linked')); // a linked folder is not a folder

  const scan = await scanMaildir(dir);
  assert.deepEqual(figures(scan), { bytes: 1000 + 300 + 40 + 7, messages: 4, attempts: 1, stable: true });
  assert.equal(scan.directoriesRead, 6, 'new/ and cur/ of the root, .Sent and .Work.Archive; not .Trash');
  const withTrash = await scanMaildir(dir, { trashFolders: [] });
  assert.equal(withTrash.bytes, 1347 + 90000);
  const noSent = await scanMaildir(dir, { trashFolders: ['Sent', '.Trash'] });
  assert.equal(noSent.bytes, 1347 - 40, 'names without the leading dot work too');
});

test('a scan starts over when a directory changes meanwhile, and gives up after the bounded attempts', async (t) => {
  const dir = await tempRoot(t);
  await maildir(dir);
  for (let i = 0; i < 5; i++) await message(path.join(dir, 'cur'), `${i}.x.host,S=10:2,S`, 1);
  const cur = path.join(dir, 'cur');
  // A delivery lands in cur/ right after the first attempt counted it.
  const changed = await scanMaildir(dir, {
    afterDirectory: async (d, attempt) => {
      if (d === cur && attempt === 1) await message(cur, 'late.x.host,S=10:2,S', 1);
    },
  });
  assert.deepEqual(figures(changed), { bytes: 60, messages: 6, attempts: 2, stable: true });

  let n = 0;
  // Deliveries on every pass: the scan stops after maxAttempts and says the count is not stable.
  const restless = await scanMaildir(dir, {
    maxAttempts: 2,
    afterDirectory: async (d) => {
      if (d === cur) await message(path.join(dir, 'new'), `chaos-${n++}.x.host`, 1);
    },
  });
  assert.equal(n, 2);
  assert.equal(restless.attempts, 2);
  assert.equal(restless.stable, false);
});

for (const [kind, io] of IO_KINDS) test(`a trusted maildirsize is answered without scanning, with its own limits (file-system calls ${kind})`, async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'alice', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host', 999); // the file says otherwise; it is believed
  await writeFile(path.join(dir, 'maildirsize'), '10000S,100C\n2000 3\n');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: 1, io });
  const q = expectFound(await store.lookup('alice', live()));
  assert.deepEqual([q.usageBytes, q.limitBytes, q.usageMessages, q.limitMessages, q.overQuota], [2000, 10000, 3, 100, false]);
  assert.equal(store.name, `maildir:${root}`);
});

test('a fresh single-line maildirsize over quota is answered over quota', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'alice', 'Maildir');
  await maildir(dir);
  await writeFile(path.join(dir, 'maildirsize'), '1000S\n1500 2\n');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const q = expectFound(await store.lookup('alice', live()));
  assert.deepEqual([q.usageBytes, q.limitBytes, q.overQuota], [1500, 1000, true]);
});

test('a missing maildirsize is recounted, limited by the limits file, and not created when read-only', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'example.com', 'bob', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host,S=700:2,S', 1);
  await writeFile(path.join(root, 'limits'), 'bob@example.com 1K 5\n');
  const limits = new LimitsFile();
  await limits.load(path.join(root, 'limits'));
  const store = new MaildirStore({ root, mailbox: '{domain}/{local}/Maildir', defaultLimitBytes: 1, limits, writeMaildirsize: true });
  const q = expectFound(await store.lookup('bob@example.com', live()));
  assert.deepEqual([q.usageBytes, q.limitBytes, q.usageMessages, q.limitMessages, q.overQuota], [700, 1024, 1, 5, false]);
  // Even with writing on, a file is never created: it would freeze the limit into the mailbox.
  await assert.rejects(stat(path.join(dir, 'maildirsize')), { code: 'ENOENT' });
  const other = new MaildirStore({ root, mailbox: '{domain}/{local}/Maildir', defaultLimitBytes: 600 });
  const d = expectFound(await other.lookup('bob@example.com', live()));
  assert.deepEqual([d.limitBytes, d.overQuota], [600, true], 'no limits file: the default');
});

test('a large maildirsize is recounted and rewritten through tmp/ only when writing is enabled', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'carol', 'Maildir');
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, '.Sent', 'new'), '2.b.host,S=50', 1);
  const big = '5000S,10C\n' + '       10    1\n'.repeat(400);
  await writeFile(path.join(dir, 'maildirsize'), big, { mode: 0o640 });
  const readOnly = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const r = expectFound(await readOnly.lookup('carol', live()));
  assert.deepEqual([r.usageBytes, r.usageMessages, r.limitBytes, r.limitMessages], [150, 2, 5000, 10]);
  assert.equal(await readFile(path.join(dir, 'maildirsize'), 'utf8'), big, 'read-only leaves it alone');

  const writer = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, writeMaildirsize: true });
  expectFound(await writer.lookup('carol', live()));
  assert.equal(writer.lastWriteError, null);
  assert.equal(await readFile(path.join(dir, 'maildirsize'), 'utf8'), '5000S,10C\n150 2\n');
  assert.equal((await stat(path.join(dir, 'maildirsize'))).mode & 0o777, 0o640, 'mode kept');
  assert.deepEqual(await readdir(path.join(dir, 'tmp')), [], 'no temporary file left behind');
});

test('a stale over-quota maildirsize is recounted and the mailbox found under quota', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'dave', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await writeFile(path.join(dir, 'maildirsize'), '1000S\n5000 20\n');
  await ago(path.join(dir, 'maildirsize'), 20 * 60 * 1000);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const q = expectFound(await store.lookup('dave', live()));
  assert.deepEqual([q.usageBytes, q.usageMessages, q.overQuota], [100, 1, false]);
});

test('an over-quota maildirsize with several data lines is recounted', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'erin', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'new'), '1.a.host', 250);
  await writeFile(path.join(dir, 'maildirsize'), '1000S\n600 1\n600 1\n');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const q = expectFound(await store.lookup('erin', live()));
  assert.deepEqual([q.usageBytes, q.overQuota], [250, false]);
});

test('a maildirsize with negative sums is recounted', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'fay', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'new'), '1.a.host,S=321', 1);
  await writeFile(path.join(dir, 'maildirsize'), '1000S\n100 1\n-900 -4\n');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const q = expectFound(await store.lookup('fay', live()));
  assert.deepEqual([q.usageBytes, q.usageMessages, q.limitBytes], [321, 1, 1000]);
});

for (const [kind, io] of IO_KINDS) test(`a path naming a subfolder (maildirfolder present) counts the whole mailbox (file-system calls ${kind})`, async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'gus', 'Maildir');
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, '.Sent', 'cur'), '2.b.host,S=20:2,S', 1);
  await writeFile(path.join(dir, 'maildirsize'), '1000S\n120 2\n');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir/.Sent', defaultLimitBytes: null, io });
  const q = expectFound(await store.lookup('gus', live()));
  assert.deepEqual([q.usageBytes, q.limitBytes], [120, 1000]);
});

for (const [kind, io] of IO_KINDS) test(`a mailbox that does not exist, or links outside the root, is unknown (file-system calls ${kind})`, async (t) => {
  const root = await tempRoot(t);
  const outside = await tempRoot(t);
  await maildir(path.join(outside, 'Maildir'));
  await writeFile(path.join(outside, 'Maildir', 'maildirsize'), '100S\n5000 1\n');
  await mkdir(path.join(root, 'henry'));
  await symlink(outside, path.join(root, 'henry', 'x'));
  await symlink(outside, path.join(root, 'ivy'));
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, io });
  assert.deepEqual(await store.lookup('nobody', live()), { kind: 'unknown' });
  assert.deepEqual(await store.lookup('ivy', live()), { kind: 'unknown' });
  const domainStore = new MaildirStore({ root, mailbox: '{domain}/{local}/Maildir', defaultLimitBytes: null, io });
  assert.deepEqual(await domainStore.lookup('henry', live()), { kind: 'unknown' }, 'no domain in the key');
});

test('invalid keys and aborted lookups are errors with codes', async (t) => {
  const root = await tempRoot(t);
  await maildir(path.join(root, 'jo', 'Maildir'));
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  await assert.rejects(store.lookup('../etc', live()), { name: 'SourceError', code: 'SOURCE_BAD_KEY' });
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(store.lookup('jo', aborted.signal), { code: 'SOURCE_TIMEOUT' });
  assert.throws(() => new MaildirStore({ root, mailbox: 'Maildir', defaultLimitBytes: null }), /no \{user\}/);
});

test('a scan aborted midway stops with SOURCE_TIMEOUT', async (t) => {
  const dir = await tempRoot(t);
  await maildir(dir);
  for (let i = 0; i < 50; i++) await message(path.join(dir, 'cur'), `${i}.x.host`, 1);
  const ctl = new AbortController();
  const scan = scanMaildir(dir, { signal: ctl.signal, yieldEvery: 1 });
  await nextTurn();
  ctl.abort();
  await assert.rejects(scan, { code: 'SOURCE_TIMEOUT' });
});

test('a second lookup of an unchanged Maildir reads no directory and answers the same', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'kim', 'Maildir');
  await maildir(dir, '.Sent', '.Trash');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, 'new'), '2.b.host', 50);
  await message(path.join(dir, '.Sent', 'cur'), '3.c.host,S=20:2,S', 1);
  await message(path.join(dir, '.Trash', 'cur'), '4.d.host,S=9000:2,T', 1);
  await settle(dir);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: 1000 });
  const first = await lookupCounting(store, 'kim');
  assert.deepEqual([first.q.usageBytes, first.q.usageMessages], [170, 3]);
  assert.deepEqual(first.work, { scans: 1, directoriesRead: 4, directoriesReused: 0, rootListings: 1, entries: 3 });
  const second = await lookupCounting(store, 'kim');
  assert.deepEqual(second.q, first.q);
  assert.deepEqual(second.work, { scans: 1, directoriesRead: 0, directoriesReused: 4, rootListings: 0, entries: 0 });
});

test('Trash is left out by default, and the excluded folders are configurable', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'lea', 'Maildir');
  await maildir(dir, '.Trash', '.Junk');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, '.Trash', 'cur'), '2.b.host,S=20:2,T', 1);
  await message(path.join(dir, '.Junk', 'new'), '3.c.host,S=3', 1);
  const usage = async (trashFolders?: string[]) =>
    expectFound(await new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, trashFolders }).lookup('lea', live())).usageBytes;
  assert.equal(await usage(), 103);
  assert.equal(await usage(['Trash', '.Junk']), 100);
  assert.equal(await usage([]), 123);
});

test('a message delivered to cur/ right after a lookup (same second) is seen by the next one', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'max', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  assert.equal((await lookupCounting(store, 'max')).q.usageBytes, 100);
  await message(path.join(dir, 'cur'), '2.b.host,S=7:2,S', 1);
  const next = await lookupCounting(store, 'max');
  assert.deepEqual([next.q.usageBytes, next.q.usageMessages], [107, 2]);
});

test('a sub-second mtime change of a settled directory is seen (nanoseconds are compared)', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'ned', 'Maildir');
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  const whole = Math.floor(Date.now() / 1000) - 60;
  await settle(dir, whole);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  await lookupCounting(store, 'ned');
  await message(path.join(dir, 'cur'), '2.b.host,S=7:2,S', 1);
  // A file system keeping whole seconds would show the same mtime: this one shows 0.5 s more.
  await utimes(path.join(dir, 'cur'), whole, whole + 0.5);
  const next = await lookupCounting(store, 'ned');
  assert.equal(next.q.usageBytes, 107);
  assert.deepEqual([next.work.directoriesRead, next.work.directoriesReused, next.work.rootListings], [1, 3, 0], 'only cur/ read again');
});

test('an mtime a change left as it was is trusted only if it was older than the racy margin when read', async (t) => {
  const root = await tempRoot(t);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  // The same clock tick for the scan and a later delivery: simulated by putting the mtime back.
  const deliverKeepingMtime = async (cur: string, whenSeconds: number) => {
    const before = (await stat(cur, { bigint: true })).mtimeNs;
    await message(cur, 'late.x.host,S=7:2,S', 1);
    await utimes(cur, whenSeconds, whenSeconds);
    assert.equal((await stat(cur, { bigint: true })).mtimeNs, before, 'the premise: the mtime is as it was');
  };
  for (const [user, ageMs, seen] of [
    ['recent', RACY_MARGIN_MS / 4, true],
    ['old', RACY_MARGIN_MS * 30, false],
  ] as const) {
    const dir = path.join(root, user, 'Maildir');
    await maildir(dir);
    await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
    const when = Math.round(Date.now() - ageMs) / 1000;
    await settle(dir, when);
    assert.equal(expectFound(await store.lookup(user, live())).usageBytes, 100);
    await deliverKeepingMtime(path.join(dir, 'cur'), when);
    const q = expectFound(await store.lookup(user, live()));
    // Recent: read again, the delivery counted. Old: the cache's premise (unchanged mtime, nothing new).
    assert.equal(q.usageBytes, seen ? 107 : 100, user);
  }
});

test('a new folder is counted and a removed one no longer', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'olga', 'Maildir');
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, '.Sent', 'cur'), '2.b.host,S=20:2,S', 1);
  await settle(dir);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  assert.equal((await lookupCounting(store, 'olga')).q.usageBytes, 120);
  await maildir(dir, '.Projects');
  await message(path.join(dir, '.Projects', 'new'), '3.c.host,S=5', 1);
  const added = await lookupCounting(store, 'olga');
  assert.deepEqual([added.q.usageBytes, added.q.usageMessages], [125, 3]);
  assert.deepEqual([added.work.rootListings, added.work.directoriesRead], [1, 2], 'the root listed again, only the new folder read');
  await rm(path.join(dir, '.Sent'), { recursive: true });
  assert.deepEqual(
    [(await lookupCounting(store, 'olga')).q.usageBytes, (await lookupCounting(store, 'olga')).q.usageMessages],
    [105, 2],
  );
});

test('the scan cache keeps at most scanCacheMailboxes mailboxes, the least recently used dropped first', async (t) => {
  const root = await tempRoot(t);
  for (const user of ['a', 'b', 'c']) {
    const dir = path.join(root, user, 'Maildir');
    await maildir(dir);
    await message(path.join(dir, 'cur'), '1.a.host,S=10:2,S', 1);
    await settle(dir);
  }
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, scanCacheMailboxes: 2 });
  const reads = async (user: string) => (await lookupCounting(store, user)).work.directoriesRead;
  assert.deepEqual([await reads('a'), await reads('b'), await reads('c')], [2, 2, 2]);
  assert.equal(store.cachedMailboxes, 2);
  assert.equal(await reads('c'), 0);
  assert.equal(await reads('b'), 0);
  assert.equal(await reads('a'), 2, 'a was dropped when c came in');
  assert.equal(await reads('c'), 2, 'then c, the least recently used, when a came back');
  assert.equal(store.cachedMailboxes, 2);

  const none = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, scanCacheMailboxes: 0 });
  for (let i = 0; i < 2; i++) assert.equal(delta({ ...none.scanStats }, await none.lookup('a', live()).then(() => none.scanStats)).scans, 1);
  assert.equal(none.scanStats.directoriesRead, 4, 'no cache: every lookup reads');
  assert.equal(none.cachedMailboxes, 0);
  assert.throws(() => new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, scanCacheMailboxes: -1 }), /scan cache size/);
});

test('concurrent lookups of one mailbox share one scan', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'pia', 'Maildir');
  await maildir(dir);
  for (let i = 0; i < 3000; i++) await writeFile(path.join(dir, 'cur', `${i}.x.host,S=2:2,S`), '');
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const [a, b] = await Promise.all([store.lookup('pia', live()), store.lookup('pia', live())]);
  assert.deepEqual(a, b);
  assert.equal(expectFound(a).usageBytes, 6000);
  assert.equal(store.scanStats.scans, 1);
});

test('a shared scan goes on while one caller waits, and is told to stop when none is left', async () => {
  const cache = new MaildirScanCache(10);
  const result: MaildirScan = { bytes: 1, messages: 1, attempts: 1, stable: true, directoriesRead: 0, directoriesReused: 0, rootListings: 0, entries: 0 };
  const runs: { stop: StopFlag; finish: () => void }[] = [];
  const scan = (_snapshot: unknown, stop: StopFlag) =>
    new Promise<MaildirScan>((resolve) => runs.push({ stop, finish: () => resolve(result) }));

  const impatient = new AbortController();
  const gaveUp = cache.shared('/m', '.Trash', impatient.signal, scan);
  const waits = cache.shared('/m', '.Trash', live(), scan);
  assert.equal(runs.length, 1, 'the second caller joined the first scan');
  impatient.abort();
  await assert.rejects(gaveUp, { code: 'SOURCE_TIMEOUT' });
  assert.equal(runs[0]!.stop.aborted, false, 'still wanted by the other caller');
  runs[0]!.finish();
  assert.equal(await waits, result);

  const alone = new AbortController();
  const left = cache.shared('/m', '.Trash', alone.signal, scan);
  alone.abort();
  await assert.rejects(left, { code: 'SOURCE_TIMEOUT' });
  assert.equal(runs[1]!.stop.aborted, true, 'nobody waits: the scan is told to stop');
  // A caller arriving now starts afresh rather than joining a scan that is stopping.
  const fresh = cache.shared('/m', '.Trash', live(), scan);
  assert.equal(runs.length, 3);
  runs[2]!.finish();
  assert.equal(await fresh, result);
});

test('a scan cut short keeps the directories it finished for the next one', async (t) => {
  const dir = await tempRoot(t);
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'new'), '1.a.host,S=1', 1);
  await message(path.join(dir, 'cur'), '2.b.host,S=2:2,S', 1);
  await message(path.join(dir, '.Sent', 'cur'), '3.c.host,S=4:2,S', 1);
  await settle(dir);
  const snapshot = emptySnapshot('.Trash');
  const ctl = new AbortController();
  const cut = scanMaildir(dir, { snapshot, signal: ctl.signal, afterDirectory: () => ctl.abort() });
  await assert.rejects(cut, { code: 'SOURCE_TIMEOUT' });
  assert.equal(snapshot.dirs.size, 1, 'the first directory is kept');
  const rest = await scanMaildir(dir, { snapshot });
  assert.deepEqual([rest.bytes, rest.messages, rest.directoriesRead, rest.directoriesReused, rest.rootListings], [7, 3, 3, 1, 0]);
});

test('a maildirsize written into a cached mailbox is used by the next lookup', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'quinn', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await settle(dir);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  await lookupCounting(store, 'quinn');
  assert.equal((await lookupCounting(store, 'quinn')).work.directoriesRead, 0, 'cached');
  // The delivery agent starts keeping a maildirsize: the root's mtime moves, so it is looked for again.
  await writeFile(path.join(dir, 'maildirsize'), '5000S\n4000 9\n');
  const next = await lookupCounting(store, 'quinn');
  assert.deepEqual([next.q.usageBytes, next.q.usageMessages, next.q.limitBytes], [4000, 9, 5000]);
  assert.equal(next.work.scans, 0, 'a trusted maildirsize is answered without a scan');
});

test('a maildirsize that must be recounted is recounted from the cache while nothing changed', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'rosa', 'Maildir');
  await maildir(dir, '.Sent');
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  await message(path.join(dir, '.Sent', 'cur'), '2.b.host,S=50:2,S', 1);
  await writeFile(path.join(dir, 'maildirsize'), '5000S,10C\n' + '       10    1\n'.repeat(400)); // >= 5120 bytes
  await settle(dir);
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  const first = await lookupCounting(store, 'rosa');
  const second = await lookupCounting(store, 'rosa');
  assert.deepEqual(second.q, first.q);
  assert.deepEqual([second.q.usageBytes, second.q.limitBytes], [150, 5000], 'counted, with the limits of the file');
  assert.deepEqual([first.work.directoriesRead, second.work.directoriesRead, second.work.directoriesReused], [4, 0, 4]);
});

test('a limit too small to be a quota (maildirsize, or the default) is a bad answer, not a figure to refuse mail on', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'tiny', 'Maildir');
  await maildir(dir);
  await writeFile(path.join(dir, 'maildirsize'), '100S\n0 0\n');
  await maildir(path.join(root, 'plain', 'Maildir'));
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: 1 });
  await assert.rejects(store.lookup('tiny', live()), (e: Error & { code?: string }) => e.code === 'SOURCE_BAD_ANSWER' && /maildirsize names a limit of 100 bytes/.test(e.message));
  await assert.rejects(store.lookup('plain', live()), (e: Error & { code?: string }) => e.code === 'SOURCE_BAD_ANSWER' && /store.limit names a limit of 1 bytes/.test(e.message));
  const unlimited = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  assert.equal(expectFound(await unlimited.lookup('plain', live())).limitBytes, null, 'no limit is not a small limit');
});

test('a failed maildirsize rewrite is logged (at most once a minute) and the answer still given', async (t) => {
  const root = await tempRoot(t);
  const dir = path.join(root, 'kim', 'Maildir');
  await maildir(dir);
  await message(path.join(dir, 'cur'), '1.a.host,S=100:2,S', 1);
  const big = '5000S\n' + '       10    1\n'.repeat(400); // >= 5120 bytes: recounted, then rewritten
  await writeFile(path.join(dir, 'maildirsize'), big);
  await rm(path.join(dir, 'tmp'), { recursive: true });
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, writeMaildirsize: true, logger });
  for (let i = 0; i < 3; i++) assert.equal(expectFound(await store.lookup('kim', live())).usageBytes, 100);
  assert.match(String(store.lastWriteError), /tmp\/ is missing/);
  const warned = lines.filter((l) => String(l.msg).startsWith('maildirsize not rewritten'));
  assert.equal(warned.length, 1, 'once, not at every recount');
  assert.equal(warned[0]!.mailbox, dir);
  assert.match(String(warned[0]!.error), /tmp\/ is missing/);
  assert.equal(await readFile(path.join(dir, 'maildirsize'), 'utf8'), big, 'left as it was');
});
