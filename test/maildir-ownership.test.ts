/*
 * Who may rewrite maildirsize: the quota service and the Maildir store run as users other than
 * the mailbox's (the packaged unit runs as `overquota`, without CAP_CHOWN), as the mailbox's user,
 * and as root with and without CAP_CHOWN. Dovecot runs as the mailbox's user and reopens
 * maildirsize read-write at every delivery: after a recount the file must keep its owner, group
 * and mode, or not be written at all; the answer comes from the recount either way, and a Maildir
 * that cannot be written is not rescanned at every lookup.
 *
 * Real processes under real uids: the tests run as root, make each Maildir owned by MAILBOX_UID and
 * start the quota service (or a small script running the store, to read its scan counters) under
 * setpriv(1) as another uid. They must never touch files outside their temporary directory.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, readFile, readdir, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MaildirStore } from '../src/stores/maildir/store.js';
import { runOverquota, spawnableInstall } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';

/** The mailbox's user (Dovecot's vmail), and a service user that is not it (as `overquota`). */
const MAILBOX_UID = 12345;
const SERVICE_UID = 54321;
const SETPRIV = '/usr/bin/setpriv';

/** Courier's recount threshold passed (>= 5120 bytes), and its figures (4,000 bytes) below the 10,000-byte limit. */
const STALE_MAILDIRSIZE = '10000S\n' + '       10    1\n'.repeat(400);
/** What a recount finds: two messages of 6,000 bytes (by their ,S= names), over the limit. */
const RECOUNTED = '10000S\n12000 2\n';

let install: TempDir;
let cli: string;

before(async () => {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (they chown Maildirs and drop to other uids)');
  install = await tempDir('overquota-owner-install-');
  cli = await spawnableInstall(install.path);
  // Runs the built store as whoever starts it: 3 lookups, the scan counters after each, the log.
  await writeFile(
    path.join(install.path, 'lookups.mjs'),
    `import { MaildirStore } from './dist/stores/maildir/store.js';
const [root, user] = process.argv.slice(2);
const log = [];
const store = new MaildirStore({ root, mailbox: '{user}/Maildir', defaultLimitBytes: null, writeMaildirsize: true, logger: { warn: (o, msg) => log.push({ ...o, msg }) } });
const lookups = [];
for (let i = 0; i < 3; i++) {
  const q = await store.lookup(user, new AbortController().signal);
  lookups.push({ usageBytes: q.usageBytes, overQuota: q.overQuota, directoriesRead: store.scanStats.directoriesRead });
}
console.log(JSON.stringify({ lookups, log, lastWriteError: store.lastWriteError && store.lastWriteError.code }));
`,
  );
});
after(() => install?.cleanup());

interface Owned {
  uid: number;
  gid: number;
  /** Mode of every directory of the mailbox (and its user directory). */
  dirMode: number;
  /** Mode of maildirsize. */
  fileMode: number;
}

/**
 * ROOT/USER/Maildir holding two messages and a maildirsize Courier's rules say to recount, all
 * owned as asked, with mtimes a minute old (a mailbox nobody touched lately: the scan cache may
 * keep its counts). Returns the Maildir's path.
 */
async function ownedMaildir(root: string, user: string, o: Owned): Promise<string> {
  const dir = path.join(root, user, 'Maildir');
  for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(dir, sub), { recursive: true });
  await writeFile(path.join(dir, 'cur', '1700000000.M1P1.host,S=6000:2,S'), '');
  await writeFile(path.join(dir, 'new', '1700000001.M2P1.host,S=6000'), '');
  await writeFile(path.join(dir, 'maildirsize'), STALE_MAILDIRSIZE);
  for (const p of [path.join(root, user), dir, ...['cur', 'new', 'tmp'].map((s) => path.join(dir, s))]) {
    await chown(p, o.uid, o.gid);
    await chmod(p, o.dirMode);
  }
  for (const f of ['cur/1700000000.M1P1.host,S=6000:2,S', 'new/1700000001.M2P1.host,S=6000', 'maildirsize']) await chown(path.join(dir, f), o.uid, o.gid);
  await chmod(path.join(dir, 'maildirsize'), o.fileMode);
  const minuteAgo = Math.floor(Date.now() / 1000) - 60;
  for (const d of ['cur', 'new', 'tmp', '']) await utimes(path.join(dir, d), minuteAgo, minuteAgo);
  return dir;
}

/** A store root other uids can enter (mkdtemp makes it 0700). */
async function storeRoot(prefix: string): Promise<TempDir> {
  const t = await tempDir(prefix);
  await chmod(t.path, 0o755);
  return t;
}

async function fileState(file: string): Promise<{ uid: number; gid: number; mode: number; text: string }> {
  const st = await lstat(file);
  return { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777, text: await readFile(file, 'utf8') };
}

/** setpriv arguments for a user: its own group, plus the extra groups given (none: cleared). */
function as(uid: number, gid: number, groups: number[] = []): string[] {
  return [SETPRIV, `--reuid=${uid}`, `--regid=${gid}`, groups.length ? `--groups=${groups.join(',')}` : '--clear-groups'];
}

interface LookupsResult {
  lookups: { usageBytes: number; overQuota: boolean; directoriesRead: number }[];
  log: Record<string, unknown>[];
  lastWriteError: string | null;
}

/** Runs lookups.mjs (three lookups of one mailbox) under `prefix` (setpriv ...). */
function lookupsAs(prefix: string[], root: string, user: string): Promise<LookupsResult> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = [...prefix, process.execPath, path.join(install.path, 'lookups.mjs'), root, user];
    const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`lookups.mjs exited ${code}: ${err}`));
      else resolve(JSON.parse(out) as LookupsResult);
    });
  });
}

const notOwnerLine = (l: Record<string, unknown>) => /^maildirsize files of other users are not rewritten/.test(String(l.msg));
const failedLine = (l: Record<string, unknown>) => /^maildirsize not rewritten/.test(String(l.msg));

test('the quota service as another user (as packaged) answers from the recount and leaves maildirsize, its owner and mode to the mailbox', async () => {
  const t = await storeRoot('overquota-owner-qs-');
  let qs;
  try {
    // Shared with the service's group, writable by it (as the unit's comment once advised): the
    // service could write tmp/ and rename over maildirsize, but could not give the file back.
    const owned = { uid: MAILBOX_UID, gid: MAILBOX_UID, dirMode: 0o770, fileMode: 0o660 };
    const dirs = [await ownedMaildir(t.path, 'alice', owned), await ownedMaildir(t.path, 'bob', owned)];
    qs = runOverquota(
      ['quota-service', '--quota_service.listen', '127.0.0.1:0', '--store.type', 'maildir', '--store.path', t.path, '--store.mailbox', '{user}/Maildir'],
      {},
      [...as(SERVICE_UID, SERVICE_UID, [MAILBOX_UID]), process.execPath, cli],
    );
    const ready = await qs.waitForLog((l) => l.msg === 'quota service ready');
    for (let i = 0; i < 3; i++) {
      for (const user of ['alice', 'bob']) {
        const res = await fetch(`http://${String(ready.listen)}/quota?u=${user}`);
        assert.equal(await res.text(), `OVERQUOTA ${user} 12000 10000\n`, 'the recount, not the file (4,000 bytes)');
      }
    }
    for (const dir of dirs) {
      assert.deepEqual(await fileState(path.join(dir, 'maildirsize')), { uid: MAILBOX_UID, gid: MAILBOX_UID, mode: 0o660, text: STALE_MAILDIRSIZE }, 'left to its owner');
      assert.deepEqual(await readdir(path.join(dir, 'tmp')), [], 'nothing written in tmp/');
    }
    await qs.waitForLog(notOwnerLine);
    await qs.stop(); // every line logged is read by then
    const said = qs.logs.filter(notOwnerLine);
    assert.equal(said.length, 1, 'said once, not at each of the 6 recounts');
    assert.deepEqual([said[0]!.file_uid, said[0]!.our_uid], [MAILBOX_UID, SERVICE_UID]);
    assert.equal(qs.logs.filter(failedLine).length, 0, 'nothing was tried, so nothing failed');
  } finally {
    await qs?.stop();
    await t.cleanup();
  }
});

test('the quota service as the mailbox user rewrites maildirsize with the same owner, group and mode', async () => {
  const t = await storeRoot('overquota-owner-self-');
  let qs;
  try {
    const dir = await ownedMaildir(t.path, 'carol', { uid: MAILBOX_UID, gid: MAILBOX_UID, dirMode: 0o700, fileMode: 0o600 });
    qs = runOverquota(
      ['quota-service', '--quota_service.listen', '127.0.0.1:0', '--store.type', 'maildir', '--store.path', t.path, '--store.mailbox', '{user}/Maildir'],
      {},
      [...as(MAILBOX_UID, MAILBOX_UID), process.execPath, cli],
    );
    const ready = await qs.waitForLog((l) => l.msg === 'quota service ready');
    const res = await fetch(`http://${String(ready.listen)}/quota?u=carol`);
    assert.equal(await res.text(), 'OVERQUOTA carol 12000 10000\n');
    assert.deepEqual(await fileState(path.join(dir, 'maildirsize')), { uid: MAILBOX_UID, gid: MAILBOX_UID, mode: 0o600, text: RECOUNTED });
    assert.deepEqual(await readdir(path.join(dir, 'tmp')), []);
    await qs.stop(); // every line logged is read by then
    assert.equal(qs.logs.filter((l) => notOwnerLine(l) || failedLine(l)).length, 0);
  } finally {
    await qs?.stop();
    await t.cleanup();
  }
});

test('as root, a rewritten maildirsize goes back to its owner; root without CAP_CHOWN leaves it as it was', async () => {
  const t = await storeRoot('overquota-owner-root-');
  try {
    const owned = { uid: MAILBOX_UID, gid: MAILBOX_UID, dirMode: 0o700, fileMode: 0o640 };
    const dave = await ownedMaildir(t.path, 'dave', owned);
    const store = new MaildirStore({ root: t.path, mailbox: '{user}/Maildir', defaultLimitBytes: null, writeMaildirsize: true });
    const q = await store.lookup('dave', new AbortController().signal);
    assert.deepEqual(q.kind === 'found' && [q.usageBytes, q.overQuota], [12000, true]);
    assert.equal(store.lastWriteError, null);
    assert.deepEqual(await fileState(path.join(dave, 'maildirsize')), { uid: MAILBOX_UID, gid: MAILBOX_UID, mode: 0o640, text: RECOUNTED }, 'not root\'s');

    // A root whose chown fails (CAP_CHOWN dropped, or a seccomp filter) must not rename a root-owned file in.
    const erin = await ownedMaildir(t.path, 'erin', owned);
    const r = await lookupsAs([SETPRIV, '--bounding-set=-chown', '--inh-caps=-chown'], t.path, 'erin');
    assert.deepEqual(r.lookups.map((l) => [l.usageBytes, l.overQuota]), [[12000, true], [12000, true], [12000, true]]);
    assert.equal(r.lastWriteError, 'EPERM');
    assert.deepEqual(await fileState(path.join(erin, 'maildirsize')), { uid: MAILBOX_UID, gid: MAILBOX_UID, mode: 0o640, text: STALE_MAILDIRSIZE });
    assert.deepEqual(await readdir(path.join(erin, 'tmp')), [], 'the temporary file removed');
    assert.equal(r.log.filter(failedLine).length, 1, 'logged once for three failed rewrites');
  } finally {
    await t.cleanup();
  }
});

test('a Maildir that cannot be written back is answered from the recount and not rescanned at each lookup', async () => {
  const t = await storeRoot('overquota-owner-ro-');
  try {
    const owned = { uid: MAILBOX_UID, gid: MAILBOX_UID, dirMode: 0o750, fileMode: 0o640 };
    // Another user (the packaged case): not tried at all.
    await ownedMaildir(t.path, 'fay', owned);
    const other = await lookupsAs(as(SERVICE_UID, SERVICE_UID, [MAILBOX_UID]), t.path, 'fay');
    // The mailbox's own user with a tmp/ it cannot write (a read-only mailbox): tried, failed.
    const gus = await ownedMaildir(t.path, 'gus', owned);
    await chmod(path.join(gus, 'tmp'), 0o500);
    const readOnly = await lookupsAs(as(MAILBOX_UID, MAILBOX_UID), t.path, 'gus');

    for (const r of [other, readOnly]) {
      assert.deepEqual(r.lookups.map((l) => [l.usageBytes, l.overQuota]), [[12000, true], [12000, true], [12000, true]], 'every answer from the recount');
      // cur/ and new/ read once; the two later recounts only stat them (unchanged mtimes).
      assert.deepEqual(r.lookups.map((l) => l.directoriesRead), [2, 2, 2]);
    }
    assert.equal(other.log.filter(notOwnerLine).length, 1);
    assert.equal(other.lastWriteError, null);
    assert.equal(readOnly.log.filter(failedLine).length, 1, 'logged once for three failed rewrites');
    assert.equal(readOnly.lastWriteError, 'EACCES');
    for (const user of ['fay', 'gus']) {
      assert.deepEqual(await fileState(path.join(t.path, user, 'Maildir', 'maildirsize')), { uid: MAILBOX_UID, gid: MAILBOX_UID, mode: 0o640, text: STALE_MAILDIRSIZE });
    }
  } finally {
    await t.cleanup();
  }
});
