// Proves the private-Dovecot test harness (test/helpers/dovecot.ts) works: the doveadm HTTP API
// and the doveadm CLI agree on quota before and after fill(); auth (password, API key) behaves as
// mail-stores.md says; quota-status answers DUNNO, then 452 4.2.2 once the mailbox is full; the
// quota_warning script fires upward (LMTP delivery crossing 100%) and downward (doveadm expunge),
// never on recalc; nothing is left running after stop().
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, readFile, readdir, readlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startDovecot, dovecotUnavailable, basicAuth, apiKeyAuth, type DovecotInstance } from './helpers/dovecot.js';

const unavailable = dovecotUnavailable({ lmtp: true });
if (unavailable) throw new Error(`cannot run a private Dovecot: ${unavailable}`);

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface HttpQuotaRow {
  root: string;
  type: string;
  value: string;
  limit: string;
  percent: string;
}

/** Processes whose command line names `needle` or whose cwd lies under it (this host only). */
async function processesMentioning(needles: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '');
    if (needles.some((n) => cmdline.includes(n) || cwd.startsWith(n))) found.push(`${pid} ${cmdline} (cwd ${cwd})`);
  }
  return found;
}

async function httpQuota(d: DovecotInstance, user: string): Promise<HttpQuotaRow[]> {
  const res = await d.http([['quotaGet', { user }, 't']]);
  assert.equal(res.status, 200, res.body);
  const parsed = JSON.parse(res.body) as [string, HttpQuotaRow[], string][];
  assert.equal(parsed[0]?.[0], 'doveadmResponse', res.body);
  assert.equal(parsed[0]?.[2], 't');
  return parsed[0]?.[1] ?? [];
}

/** The HTTP answer and `doveadm -f tab quota get` say the same (STORAGE in KiB). */
async function assertSameQuota(d: DovecotInstance, user: string): Promise<{ kib: number; limitKib: number | null; messages: number }> {
  const rows = await httpQuota(d, user);
  const cli = await d.quotaGet(user);
  const storage = rows.find((r) => r.type === 'STORAGE');
  const message = rows.find((r) => r.type === 'MESSAGE');
  assert.ok(storage && message, JSON.stringify(rows));
  assert.equal(storage.root, 'User quota');
  assert.equal(Number(storage.value) * 1024, cli.storageBytes);
  assert.equal(storage.limit === '-' ? null : Number(storage.limit) * 1024, cli.storageLimitBytes);
  assert.equal(Number(message.value), cli.messages);
  assert.equal(message.limit === '-' ? null : Number(message.limit), cli.messageLimit);
  return { kib: Number(storage.value), limitKib: storage.limit === '-' ? null : Number(storage.limit), messages: Number(message.value) };
}

describe('private Dovecot harness', () => {
  let store: DovecotInstance; // HTTP API + quota-status
  let warn: DovecotInstance; // LMTP + quota_warning script
  let scriptDir: TempDir;
  let warnLog: string;
  const dirs: string[] = [];
  const instanceNames: string[] = [];

  before(async () => {
    scriptDir = await tempDir('overquota-dovecot-warn-');
    warnLog = join(scriptDir.path, 'warnings.log');
    const script = join(scriptDir.path, 'quota-warning.sh');
    await writeFile(script, `#!/bin/sh\necho "$*" >> '${warnLog}'\n`);
    await chmod(script, 0o755);
    [store, warn] = await Promise.all([
      startDovecot({
        users: [{ name: 'u1' }, { name: 'u2', quota: '100K', messages: 50 }],
        doveadmPassword: 'sekret',
        doveadmApiKey: 'the-api-key',
        quotaStatusPort: true,
      }),
      startDovecot({ users: [{ name: 'w1', quota: '100K' }], lmtp: true, quotaWarningScript: { path: script } }),
    ]);
    for (const d of [store, warn]) {
      dirs.push(d.dir);
      instanceNames.push(d.instanceName);
    }
  });

  after(async () => {
    await Promise.all([store?.stop(), warn?.stop()]);
    await scriptDir?.cleanup();
  });

  it('starts with a doveadm URL, ports and uid-5000 maildirs', async () => {
    assert.equal(store.doveadmUrl, `http://127.0.0.1:${store.httpPort}/doveadm/v1`);
    assert.equal(store.password, 'sekret');
    assert.equal(store.apiKey, 'the-api-key');
    assert.ok(store.quotaStatusPort && store.quotaStatusPort > 0);
    assert.equal(store.lmtpPort, undefined);
    assert.ok(warn.lmtpPort && warn.lmtpPort > 0);
    assert.equal(warn.apiKey, undefined);
    assert.equal(store.maildir('u1'), join(store.mailRoot, 'u1', 'Maildir'));
    assert.ok(existsSync(join(store.maildir('u1'), 'cur')));
    const { statSync } = await import('node:fs');
    assert.equal(statSync(store.maildir('u1')).uid, 5000);
    assert.match(await store.doveadm('user', 'u1'), /uid\s+5000/);
  });

  it('HTTP quotaGet matches `doveadm quota get` before and after fill(), STORAGE in KiB', async () => {
    const empty = await assertSameQuota(store, 'u1');
    assert.deepEqual(empty, { kib: 0, limitKib: 1024, messages: 0 });
    assert.deepEqual(await store.quotaGet('u2'), { storageBytes: 0, storageLimitBytes: 100 * 1024, messages: 0, messageLimit: 50 });

    await store.fill('u1', 300 * 1024);
    assert.deepEqual(await assertSameQuota(store, 'u1'), { kib: 300, limitKib: 1024, messages: 1 });
    // A folder counts too; several messages.
    await store.fill('u1', 100 * 1024, { folder: 'Archive', messages: 4 });
    assert.deepEqual(await assertSameQuota(store, 'u1'), { kib: 400, limitKib: 1024, messages: 5 });
    const names = await readdir(join(store.maildir('u1'), '.Archive', 'cur'));
    assert.equal(names.length, 4);
    for (const n of names) assert.match(n, /^\d+\.M\d+P\d+Q\d+\.overquota,S=25600,W=\d+:2,$/);
    assert.match(await store.doveadm('mailbox', 'list', '-u', 'u1'), /Archive/);

    await store.empty('u1');
    assert.deepEqual(await assertSameQuota(store, 'u1'), { kib: 0, limitKib: 1024, messages: 0 });
  });

  it('unknown user: exitCode 67 over HTTP, and from the CLI', async () => {
    const res = await store.http([['quotaGet', { user: 'nobody-here' }, 't']]);
    assert.equal(res.status, 200);
    // Dovecot writes `{"type":"exitCode", "exitCode":67}` (with a space): compare parsed.
    assert.deepEqual(JSON.parse(res.body), [['error', { type: 'exitCode', exitCode: 67 }, 't']]);
    await assert.rejects(store.quotaGet('nobody-here'), (err: Error & { exitCode?: number }) => err.exitCode === 67);
  });

  it('HTTP auth: wrong password → 401, API key works, wrong key → 401', async () => {
    const body = [['quotaGet', { user: 'u1' }, 't']];
    assert.equal((await store.http(body, basicAuth('doveadm', 'wrong'))).status, 401);
    assert.equal((await store.http(body, basicAuth('admin', 'sekret'))).status, 401);
    const ok = await store.http(body, apiKeyAuth('the-api-key'));
    assert.equal(ok.status, 200);
    assert.match(ok.body, /^\[\["doveadmResponse",/);
    assert.equal((await store.http(body, apiKeyAuth('not-the-key'))).status, 401);
    // No API key configured: X-Dovecot-API is refused.
    assert.equal((await warn.http(body, apiKeyAuth('the-api-key'))).status, 401);
  });

  it('quota-status answers DUNNO, then 452 4.2.2 Mailbox full past the quota', async () => {
    assert.ok(store.quotaStatusPort);
    const client = await PolicyClient.connect(`inet:127.0.0.1:${store.quotaStatusPort}`);
    try {
      // The brief's minimal request, raw.
      const raw = (user: string): Promise<string> =>
        client.send(`request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=${user}@example.com\nsize=0\n\n`);
      assert.equal(await raw('u2'), 'DUNNO');
      await store.fill('u2', 90 * 1024);
      assert.equal(await raw('u2'), 'DUNNO');
      // size= counts: 90 KiB + 21 KiB is past 100 KiB + the 10% quota_grace (90 + 20 would still pass).
      assert.equal(await client.ask(rcpt('u2@example.com', { size: 21 * 1024 })), '452 4.2.2 Mailbox full');
      assert.equal(await client.ask(rcpt('u2@example.com', { size: 20 * 1024 })), 'DUNNO');
      await store.fill('u2', 20 * 1024);
      assert.equal((await store.quotaGet('u2')).storageBytes, 110 * 1024);
      assert.equal(await raw('u2'), '452 4.2.2 Mailbox full');
      assert.equal(await client.ask(rcpt('u1@example.com')), 'DUNNO');
      await store.empty('u2');
      assert.equal(await raw('u2'), 'DUNNO');
    } finally {
      client.close();
    }
  });

  it('quota_warning fires upward on an LMTP delivery crossing 100%, downward on doveadm expunge, never on recalc', async () => {
    const lines = async (): Promise<string[]> => (await readFile(warnLog, 'utf8').catch(() => '')).split('\n').filter(Boolean);
    const waitLines = async (n: number): Promise<string[]> => {
      const by = Date.now() + 5000;
      for (;;) {
        const l = await lines();
        if (l.length >= n) return l;
        if (Date.now() > by) assert.fail(`quota_warning script wrote ${l.length} lines, expected ${n}: ${JSON.stringify(l)}\n${await warn.log()}`);
        await delay(25);
      }
    };

    // Recalc crossing 100% in both directions fires nothing.
    await warn.fill('w1', 120 * 1024);
    assert.equal((await warn.quotaGet('w1')).storageBytes, 120 * 1024);
    await warn.empty('w1');
    await warn.fill('w1', 80 * 1024);
    // Below 100% after delivery: no warning.
    assert.match(await warn.deliver('w1', 5 * 1024), /^250 /);
    await delay(300);
    assert.deepEqual(await lines(), []);

    // 85 KiB + 20 KiB ends within the 10% grace: accepted, and usage crosses 100% upward.
    assert.match(await warn.deliver('w1', 20 * 1024), /^250 /);
    assert.deepEqual(await waitLines(1), ['+100 w1@example.com']);
    const q = await warn.quotaGet('w1');
    assert.ok(q.storageBytes >= 100 * 1024 && q.storageBytes <= 110 * 1024, JSON.stringify(q));

    // Over quota now: the next delivery is refused (no warning).
    assert.match(await warn.deliver('w1', 1024), /^552 5\.2\.2 /);

    // Downward: an expunge that takes usage below 100% (%u is the doveadm -u name here).
    await warn.expunge('w1');
    assert.deepEqual(await waitLines(2), ['+100 w1@example.com', '-100 w1']);
    assert.equal((await warn.quotaGet('w1')).storageBytes, 0);

    // Files + recalc past 100% then expunge: the expunge fires downward again (sizes from ,S=).
    await warn.fill('w1', 120 * 1024, { messages: 2 });
    await warn.expunge('w1');
    assert.deepEqual(await waitLines(3), ['+100 w1@example.com', '-100 w1', '-100 w1']);
    await delay(300);
    assert.equal((await lines()).length, 3);
  });

  it('stop() leaves no Dovecot process and removes the directory', async () => {
    assert.ok((await processesMentioning(instanceNames)).length >= 2, 'the instances were running');
    await Promise.all([store.stop(), warn.stop()]);
    await store.stop(); // idempotent
    assert.deepEqual(await processesMentioning([...instanceNames, ...dirs]), []);
    for (const d of dirs) assert.equal(existsSync(d), false, `${d} removed`);
  });
});
