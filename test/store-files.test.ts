/*
 * Files a mailbox owner controls, in the places a store reads: a FIFO or a device node named
 * `maildirsize` must never hold the quota service or a frontend's thread pool (never opened in a
 * way that waits, never read), and a hard link must never report the size of a file from outside
 * the mailbox. Real FIFOs and device nodes (mknod: needs root), real processes.
 * A hang shows as a failed assertion after HANG_MS, never as a test that does not end.
 * These tests must never touch files outside their own temporary directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { tempDir } from './helpers/tmp.js';
import { MaildirStore } from '../src/stores/maildir/store.js';
import { MboxStore } from '../src/stores/mbox.js';
import { startQuotaService } from '../src/faces/quota-service/server.js';
import { SourceError } from '../src/quota.js';
import { blockingIo, threadPoolIo } from '../src/stores/io.js';

/** How long an answer may take before the test calls it a hang (far above any real answer). */
const HANG_MS = 5000;
const FULL = '452 4.2.2 Mailbox full, try again later';
const IO_KINDS = [
  ['on the thread pool', threadPoolIo],
  ['blocking, as the quota service', blockingIo],
] as const;

if (process.getuid?.() !== 0) throw new Error('these tests need root (mknod, chown)');

/** A Maildir holding 12,000 bytes of mail (limit 10K: full), its maildirsize as `kind` says. */
async function mailbox(root: string, user: string, kind: 'fifo' | 'null' | 'zero' | 'none'): Promise<string> {
  const dir = path.join(root, user, 'Maildir');
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub), { recursive: true });
  await fs.writeFile(path.join(dir, 'cur', '1700000000.M1P1.host,S=6000:2,S'), '');
  await fs.writeFile(path.join(dir, 'new', '1700000001.M2P1.host,S=6000'), '');
  const file = path.join(dir, 'maildirsize');
  if (kind === 'fifo') execFileSync('mkfifo', [file]);
  // The same devices as /dev/null (1,3) and /dev/zero (1,5): an open of either succeeds at once,
  // and a read of /dev/zero never ends short of the read limit.
  if (kind === 'null') execFileSync('mknod', [file, 'c', '1', '3']);
  if (kind === 'zero') execFileSync('mknod', [file, 'c', '1', '5']);
  return dir;
}

async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${HANG_MS} ms (hung)`)), HANG_MS);
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGTERM and the exit code; a process that ignores it is killed (and the test fails on the code). */
async function stopOrKill(p: Running): Promise<number | string | null> {
  const exited = new Promise<number | string | null>((resolve) => p.proc.once('exit', (code, signal) => resolve(code ?? signal)));
  if (p.proc.exitCode !== null || p.proc.signalCode !== null) return p.proc.exitCode ?? p.proc.signalCode;
  p.proc.kill('SIGTERM');
  const timer = setTimeout(() => p.proc.kill('SIGKILL'), HANG_MS);
  try {
    return await exited;
  } finally {
    clearTimeout(timer);
  }
}

test('a FIFO or a device named maildirsize never holds the quota service: those mailboxes are recounted, /health and others answer, SIGTERM ends it', async () => {
  const tmp = await tempDir('overquota-fifo-qs-');
  await mailbox(tmp.path, 'fifo', 'fifo');
  await mailbox(tmp.path, 'null', 'null');
  await mailbox(tmp.path, 'zero', 'zero');
  const ok = await mailbox(tmp.path, 'plain', 'none');
  await fs.writeFile(path.join(ok, 'maildirsize'), '100000S\n12000 2\n');
  const qs = await startQuotaServiceProcess(['--store.type', 'maildir', '--store.path', tmp.path, '--store.mailbox', '{user}/Maildir', '--store.limit', '10K']);
  try {
    const get = (target: string) => within(fetch(`${qs.baseUrl}${target}`).then(async (r) => [r.status, await r.text()]), target);
    assert.deepEqual(await get('/quota?u=fifo'), [200, 'OVERQUOTA fifo 12000 10240\n'], 'counted from its messages');
    assert.deepEqual(await get('/quota?u=null'), [200, 'OVERQUOTA null 12000 10240\n']);
    assert.deepEqual(await get('/quota?u=zero'), [200, 'OVERQUOTA zero 12000 10240\n']);
    assert.deepEqual(await get('/quota?u=plain'), [200, 'OK plain 12000 100000\n']);
    assert.equal((await get('/health'))[0], 200);
    // Still FIFOs and devices: nothing was written through them or over them.
    assert.ok((await fs.lstat(path.join(tmp.path, 'fifo', 'Maildir', 'maildirsize'))).isFIFO());
    assert.ok((await fs.lstat(path.join(tmp.path, 'zero', 'Maildir', 'maildirsize'))).isCharacterDevice());
    assert.equal(await stopOrKill(qs), 0);
  } finally {
    await stopOrKill(qs);
    await tmp.cleanup();
  }
});

test('FIFOs named maildirsize never use up a frontend\'s thread pool (source.type local): every lookup answers 452, SIGTERM ends it', async () => {
  const tmp = await tempDir('overquota-fifo-fe-');
  // More than libuv's 4 pool threads: each blocked open would hold one.
  const users = ['fifo0', 'fifo1', 'fifo2', 'fifo3', 'fifo4', 'fifo5'];
  for (const u of users) await mailbox(tmp.path, u, 'fifo');
  await mailbox(tmp.path, 'device', 'null');
  await mailbox(tmp.path, 'full', 'none');
  const fe = await startFrontend([
    '--policy.listen', 'inet:127.0.0.1:0',
    '--store.type', 'maildir', '--store.path', tmp.path, '--store.mailbox', '{user}/Maildir', '--store.limit', '10K',
  ]);
  try {
    const client = await PolicyClient.connect(fe.listeners[0]!);
    for (const u of [...users, 'device', 'full']) {
      assert.equal(await within(client.ask(rcpt(`${u}@example.com`)), u), FULL, u);
    }
    client.close();
    assert.equal(await stopOrKill(fe), 0);
  } finally {
    await stopOrKill(fe);
    await tmp.cleanup();
  }
});

/** A file outside the store, owned by someone else, `bytes` long (its size is the secret). */
async function outsideFile(base: string, text: string): Promise<string> {
  const outside = path.join(base, 'outside');
  await fs.mkdir(outside, { recursive: true });
  const file = path.join(outside, `secret-${text.length}`);
  await fs.writeFile(file, text);
  await fs.chown(file, 4321, 4321);
  return file;
}

const live = () => new AbortController().signal;

for (const [kind, io] of IO_KINDS) {
  test(`an mbox with a second hard link is an error, never the size of the file it shares (file-system calls ${kind})`, async (t) => {
    const tmp = await tempDir('overquota-link-mbox-');
    t.after(() => tmp.cleanup());
    const spool = path.join(tmp.path, 'spool');
    await fs.mkdir(spool);
    const secret = await outsideFile(tmp.path, 'x'.repeat(987_654));
    await fs.link(secret, path.join(spool, 'alice'));
    await fs.writeFile(path.join(spool, 'bob'), 'x'.repeat(1234));
    const store = new MboxStore({ root: spool, defaultLimitBytes: 1_000_000, io });
    await assert.rejects(store.lookup('alice', live()), (e: SourceError) => e.code === 'SOURCE_IO' && /2 hard links/.test(e.message));
    assert.equal((await store.lookup('bob', live())).kind, 'found');
  });

  test(`a maildirsize with a second hard link is not believed: the mailbox is recounted (file-system calls ${kind})`, async (t) => {
    const tmp = await tempDir('overquota-link-mds-');
    t.after(() => tmp.cleanup());
    const dir = await mailbox(tmp.path, 'alice', 'none');
    // Claims 987,654 bytes used of 1,000,000: believed, it would say "full" for a 20 KB message.
    await fs.link(await outsideFile(tmp.path, '1000000S\n987654 1\n'), path.join(dir, 'maildirsize'));
    const store = new MaildirStore({ root: tmp.path, mailbox: '{user}/Maildir', defaultLimitBytes: 10 * 1024 * 1024, io });
    const q = await store.lookup('alice', live());
    assert.deepEqual(q.kind === 'found' && [q.usageBytes, q.usageMessages, q.limitBytes], [12000, 2, 10 * 1024 * 1024]);
  });
}

test('a message without ,S= that is a hard link to someone else\'s file is not counted; a link owned like its folder (a Dovecot copy) is', async (t) => {
  const tmp = await tempDir('overquota-link-msg-');
  t.after(() => tmp.cleanup());
  const dir = await mailbox(tmp.path, 'alice', 'none');
  await fs.mkdir(path.join(dir, '.Archive', 'cur'), { recursive: true });
  await fs.link(await outsideFile(tmp.path, 'y'.repeat(987_654)), path.join(dir, 'cur', '1700000002.M3P1.host:2,S'));
  // A copy by hard link, as Dovecot's maildir_copy_with_hardlinks makes: same owner as the folders.
  await fs.writeFile(path.join(dir, 'cur', '1700000003.M4P1.host:2,S'), 'z'.repeat(500));
  await fs.link(path.join(dir, 'cur', '1700000003.M4P1.host:2,S'), path.join(dir, '.Archive', 'cur', '1700000003.M4P1.host:2,S'));
  const store = new MaildirStore({ root: tmp.path, mailbox: '{user}/Maildir', defaultLimitBytes: 10 * 1024 * 1024 });
  const q = await store.lookup('alice', live());
  assert.deepEqual(q.kind === 'found' && [q.usageBytes, q.usageMessages], [12000 + 500 + 500, 4]);
});

test('the quota service answers 503 for an mbox with a second hard link, without the linked file\'s size', async (t) => {
  const tmp = await tempDir('overquota-link-qs-');
  t.after(() => tmp.cleanup());
  const spool = path.join(tmp.path, 'spool');
  await fs.mkdir(spool);
  await fs.link(await outsideFile(tmp.path, 'x'.repeat(987_654)), path.join(spool, 'alice'));
  const svc = await startQuotaService({ host: '127.0.0.1', port: 0, store: new MboxStore({ root: spool, defaultLimitBytes: 1_000_000 }), logger: pino({ level: 'silent' }) });
  t.after(() => svc.close());
  const res = await fetch(`http://127.0.0.1:${svc.port}/quota?u=alice`);
  const body = await res.text();
  assert.equal(res.status, 503);
  assert.match(body, /hard links/);
  assert.doesNotMatch(body, /987654/);
});
