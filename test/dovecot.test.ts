/*
 * Dovecot as a quota source, with a real private Dovecot: the doveadm HTTP API from a frontend
 * and from the quota service, and push invalidation from Dovecot's quota_warning through a real
 * Postfix.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startDovecot, dovecotUnavailable, type DovecotInstance } from './helpers/dovecot.js';
import { DoveadmSource } from '../src/sources/doveadm.js';
import { startFrontend, startQuotaServiceProcess, CLI, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startRedis, type RedisServer } from './helpers/redis.js';
import { startPostfix, type PostfixInstance } from './helpers/postfix.js';
import { sendEnvelope } from './helpers/smtp.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { mainCfSnippet } from './helpers/snippets.js';

const unavailable = dovecotUnavailable();
if (unavailable) throw new Error(`cannot run a private Dovecot: ${unavailable}`);

const signal = () => AbortSignal.timeout(5000);

describe('the doveadm HTTP API as a quota source', () => {
  let dc: DovecotInstance;
  before(async () => {
    dc = await startDovecot({ users: [{ name: 'u1', quota: '1M' }, { name: 'u2', quota: '1M', messages: 3 }], doveadmApiKey: 'api-s3cret' });
    await dc.fill('u1', 300 * 1024);
    await dc.fill('u2', 1200 * 1024, { messages: 4 });
  });
  after(async () => {
    await dc?.stop();
  });

  it("our figures equal `doveadm quota get`'s for the same users", async () => {
    const source = new DoveadmSource({ url: dc.doveadmUrl, password: dc.password, maxConnections: 2 });
    try {
      for (const user of ['u1', 'u2']) {
        const ours = await source.lookup(user, signal());
        const theirs = await dc.quotaGet(user);
        assert.equal(ours.kind, 'found');
        if (ours.kind !== 'found') return;
        assert.equal(ours.usageBytes, theirs.storageBytes, user);
        assert.equal(ours.limitBytes, theirs.storageLimitBytes, user);
        assert.equal(ours.usageMessages, theirs.messages, user);
        assert.equal(ours.limitMessages, theirs.messageLimit, user);
      }
    } finally {
      await source.close();
    }
  });

  it('the API key works as well as the password', async () => {
    const source = new DoveadmSource({ url: dc.doveadmUrl, apiKey: 'api-s3cret', maxConnections: 1 });
    try {
      assert.equal((await source.lookup('u1', signal())).kind, 'found');
    } finally {
      await source.close();
    }
  });

  it('a frontend asking Dovecot: full gets 452, room gets DUNNO, an unknown user gets the unknown reply, a wrong password the on_error reply and a log line', async () => {
    const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'doveadm', '--doveadm.url', dc.doveadmUrl, '--doveadm.password', dc.password, '--replies.unknown', 'DUNNO']);
    const wrong = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'doveadm', '--doveadm.url', dc.doveadmUrl, '--doveadm.password', 'wrong', '--replies.on_error', '451 4.3.0 Quota check unavailable']);
    try {
      const c = await PolicyClient.connect(fe.listeners[0]!);
      assert.equal(await c.ask(rcpt('u2@example.com')), '452 4.2.2 Mailbox full, try again later');
      assert.equal(await c.ask(rcpt('u1@example.com')), 'DUNNO');
      assert.equal(await c.ask(rcpt('u1@example.com', { size: 800 * 1024 })), '452 4.2.2 Mailbox full, try again later');
      assert.equal(await c.ask(rcpt('ghost@example.com')), 'DUNNO');
      const ghost = await fe.waitForLog((l) => l.msg === 'decision' && l.mailbox === 'ghost');
      assert.equal(ghost.verdict, 'unknown_mailbox');
      c.close();
      const w = await PolicyClient.connect(wrong.listeners[0]!);
      assert.equal(await w.ask(rcpt('u1@example.com')), '451 4.3.0 Quota check unavailable');
      const line = await wrong.waitForLog((l) => l.msg === 'decision' && l.verdict === 'error');
      assert.equal(line.error, 'SOURCE_HTTP_STATUS');
      assert.match(String(line.reason), /refused our credentials/);
      w.close();
    } finally {
      await fe.stop();
      await wrong.stop();
    }
  });

  it('the quota service answers from Dovecot with store.type doveadm, in the seed CGI format', async () => {
    const qs = await startQuotaServiceProcess(['--store.type', 'doveadm', '--doveadm.url', dc.doveadmUrl, '--doveadm.password', dc.password]);
    try {
      const u1 = await dc.quotaGet('u1');
      assert.equal(await (await fetch(`${qs.baseUrl}/quota?u=u1`)).text(), `OK u1 ${u1.storageBytes} ${u1.storageLimitBytes}\n`);
      assert.match(await (await fetch(`${qs.baseUrl}/quota?u=u2`)).text(), /^OVERQUOTA u2 /);
      const ghost = await fetch(`${qs.baseUrl}/quota?u=ghost`);
      assert.equal(ghost.status, 404);
    } finally {
      await qs.stop();
    }
  });
});

describe("Dovecot's quota_warning -> overquota notify -> every frontend forgets, through a real Postfix", () => {
  let tmp: TempDir;
  let redis: RedisServer;
  let dc: DovecotInstance;
  let fe: Running & { listeners: string[] };
  let pf: PostfixInstance;
  let notifyLog: string;
  before(async () => {
    tmp = await tempDir('overquota-notify-');
    await fs.chmod(tmp.path, 0o755);
    redis = await startRedis();
    // The wrapper of postfix/dovecot/overquota-notify, with this machine's paths.
    notifyLog = path.join(tmp.path, 'notify.log');
    const script = path.join(tmp.path, 'overquota-notify');
    const wrapper = await fs.readFile(new URL('../postfix/dovecot/overquota-notify', import.meta.url), 'utf8');
    assert.match(wrapper, /^exec \/usr\/bin\/overquota notify --config \/etc\/overquota\/notify\.json "\$@"$/m);
    const config = path.join(tmp.path, 'notify.json');
    await fs.writeFile(config, JSON.stringify({ redis: { url: redis.url } }));
    await fs.writeFile(
      script,
      wrapper
        .replace(/^exec \/usr\/bin\/overquota /m, `exec ${process.execPath} ${CLI} `)
        .replace('/etc/overquota/notify.json', config)
        .replace(/"\$@"$/m, `"$@" >> ${notifyLog} 2>&1`),
      { mode: 0o755 },
    );
    // As in postfix/dovecot/90-overquota.conf: node needs more address space than the default vsz_limit.
    const snippet = await fs.readFile(new URL('../postfix/dovecot/90-overquota.conf', import.meta.url), 'utf8');
    const vsz = /^\s*vsz_limit = .*$/m.exec(snippet);
    assert.ok(vsz, 'the Dovecot snippet lifts vsz_limit for the quota-warning service');
    dc = await startDovecot({ users: [{ name: 'w1', quota: '100K' }], quotaWarningScript: { path: script }, extraConfig: `service quota-warning {\n${vsz[0]}\n}\n` });
    fe = await startFrontend([
      '--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'doveadm', '--doveadm.url', dc.doveadmUrl, '--doveadm.password', dc.password,
      '--redis.url', redis.url, '--cache.memory_ttl', '5m', '--cache.ttl.over_quota', '5m',
    ]);
    await fe.waitForLog((l) => l.msg === 'redis connected: shared cache in use' && l.role === undefined);
    pf = await startPostfix({ smtpdRecipientRestrictions: mainCfSnippet('smtpd_recipient_restrictions').replace('inet:127.0.0.1:10033', fe.listeners[0]!) });
  });
  after(async () => {
    await pf?.stop();
    await fe?.stop();
    await dc?.stop();
    await redis?.stop();
    await tmp?.cleanup();
  });

  it('a filled mailbox gets 452; after mail is deleted the next RCPT is accepted at once, not after the 5-minute TTL', async () => {
    await dc.fill('w1', 150 * 1024);
    const full = await sendEnvelope({ port: pf.smtpPort, from: 'a@test.org', rcpts: ['w1@example.com'] });
    assert.equal(full.rcpt[0]!.code, 452, full.transcript);
    await dc.expunge('w1');
    // Dovecot runs the quota-warning script after the expunge returns: wait for its effect.
    await fe.waitForLog((l) => l.msg === 'invalidation received' && l.mailbox === 'w1').catch(async (err) => {
      const notified = await fs.readFile(notifyLog, 'utf8').catch(() => '(no notify log)');
      throw new Error(`${(err as Error).message}\nnotify log: ${notified}\ndovecot log: ${(await dc.log()).slice(-2000)}`);
    });
    // The script prints its result after publishing, so the frontend may hear it first.
    let printed = '';
    for (let i = 0; i < 100 && !printed.includes('\n'); i++) {
      printed = await fs.readFile(notifyLog, 'utf8').catch(() => '');
      if (!printed.includes('\n')) await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(printed, /mailbox w1: dropped from Redis, every frontend told/);
    const accepted = await sendEnvelope({ port: pf.smtpPort, from: 'a@test.org', rcpts: ['w1@example.com'] });
    assert.equal(accepted.rcpt[0]!.code, 250, accepted.transcript);
  });
});

describe('postfix/dovecot/90-overquota.conf', () => {
  it('is configuration Dovecot accepts (doveconf), with the doveadm HTTP listener and both warnings', async () => {
    const tmp = await tempDir('overquota-doveconf-');
    try {
      const conf = path.join(tmp.path, 'dovecot.conf');
      const snippet = new URL('../postfix/dovecot/90-overquota.conf', import.meta.url).pathname;
      await fs.writeFile(conf, `base_dir = ${tmp.path}/run\nstate_dir = ${tmp.path}/state\nprotocols = none\n!include ${snippet}\n`);
      const { execFile } = await import('node:child_process');
      const out = await new Promise<string>((resolve, reject) =>
        execFile('doveconf', ['-c', conf, '-n'], (err, stdout, stderr) => (err ? reject(new Error(stderr || String(err))) : resolve(stdout))),
      );
      assert.match(out, /service doveadm \{\s+inet_listener http \{\s+address = 127\.0\.0\.1\s+port = 8080/);
      assert.match(out, /quota_warning = storage=100%% quota-warning \+100 %u/);
      assert.match(out, /quota_warning2 = -storage=100%% quota-warning -100 %u/);
      assert.match(out, /service quota-warning \{[^}]*executable = script \/usr\/local\/bin\/overquota-notify/);
    } finally {
      await tmp.cleanup();
    }
  });
});
