/*
 * The whole path with a real Postfix: smtpd -> check_policy_service -> overquota frontend ->
 * HTTP -> overquota quota-service -> mbox files. Asserted from the SMTP client's side.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { startPostfix, postfixUnavailable, type PostfixInstance } from './helpers/postfix.js';
import { sendEnvelope, simpleMessage, type EnvelopeResult } from './helpers/smtp.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { startFrontend, startQuotaServiceProcess, spawnableInstall, type Running } from './helpers/overquota.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { mainCfSnippet, masterCfSnippet, masterCfCompanionMain } from './helpers/snippets.js';

const unavailable = postfixUnavailable();
if (unavailable) throw new Error(`cannot run a private Postfix: ${unavailable}`);

/** 1 MB quota: small enough for SIZE= cases under Postfix's message_size_limit (10240000). */
const QUOTA = 1_000_000;
const NODE_FOR_NOBODY = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath;
const FULL = /^4\.2\.2 <full@example\.com>: Recipient address rejected: Mailbox full, try again later$/;

let tmp: TempDir;
let mail: string;

async function mailbox(name: string, bytes: number) {
  await fs.writeFile(path.join(mail, name), Buffer.alloc(bytes, 'x'));
}

before(async () => {
  tmp = await tempDir('overquota-e2e-');
  await fs.chmod(tmp.path, 0o755);
  mail = path.join(tmp.path, 'mail');
  await fs.mkdir(mail);
  await mailbox('full', QUOTA + 10);
  await mailbox('room', 600_000);
});
after(async () => {
  await tmp?.cleanup();
});

const envelope = (pf: PostfixInstance, rcpts: string[], mailArgs?: string) =>
  sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts, mailArgs });

function assertScenario(r: EnvelopeResult) {
  assert.equal(r.rcpt[0]!.code, 452, r.transcript);
  assert.match(r.rcpt[0]!.text, FULL, r.transcript);
  assert.equal(r.rcpt[1]!.code, 250, r.transcript);
}

/** postfix/main.cf's restriction list exactly as operators paste it, pointed at this frontend's port. */
function restrictionsFor(fe: { listeners: string[] }): string {
  const snippet = mainCfSnippet('smtpd_recipient_restrictions');
  assert.match(snippet, /inet:127\.0\.0\.1:10033/);
  return snippet.replace('inet:127.0.0.1:10033', fe.listeners[0]!);
}

describe('Postfix check_policy_service inet: -> frontend -> quota service over HTTP', () => {
  let quota: Running & { baseUrl: string };
  let frontend: Running & { listeners: string[] };
  let pf: PostfixInstance;
  let hung: Backend;

  before(async () => {
    quota = await startQuotaServiceProcess(['--store.path', mail, '--store.limit', String(QUOTA)]);
    frontend = await startFrontend([
      '--policy.listen', 'inet:127.0.0.1:0',
      '--source.type', 'http',
      '--source.url', `${quota.baseUrl}/quota?u={key}`,
      '--latency_budget', '1s',
      '--cache.ttl.under_quota', '0',
      '--cache.ttl.over_quota', '0',
    ]);
    pf = await startPostfix({ smtpdRecipientRestrictions: restrictionsFor(frontend) });
  });
  after(async () => {
    await pf?.stop();
    await frontend?.stop();
    await quota?.stop();
    await hung?.close();
  });

  it('a full mailbox gets 452 4.2.2 Mailbox full; a mailbox with room in the same transaction gets 250', async () => {
    assertScenario(await envelope(pf, ['full@example.com', 'room@example.com']));
  });

  it('the extension and case of the address do not hide a full mailbox', async () => {
    const r = await envelope(pf, ['Full+lists@Example.com']);
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
  });

  it('a SIZE= larger than the room left gets 452; a SIZE= that fits gets 250', async () => {
    const tooBig = await envelope(pf, ['room@example.com'], `SIZE=${QUOTA - 600_000 + 1}`);
    assert.equal(tooBig.rcpt[0]!.code, 452, tooBig.transcript);
    assert.match(tooBig.rcpt[0]!.text, /^4\.2\.2 .*Mailbox full/);
    const fits = await envelope(pf, ['room@example.com'], `SIZE=${QUOTA - 600_000 - 1000}`);
    assert.equal(fits.rcpt[0]!.code, 250, fits.transcript);
  });

  it('a message larger than the whole quota gets the permanent 552 5.2.3', async () => {
    const r = await envelope(pf, ['room@example.com'], `SIZE=${QUOTA + 1}`);
    assert.equal(r.rcpt[0]!.code, 552, r.transcript);
    assert.match(r.rcpt[0]!.text, /^5\.2\.3 <room@example\.com>: Recipient address rejected: Message is larger than the mailbox quota$/);
  });

  it('a message to a mailbox with room is delivered', async () => {
    const r = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['room@example.com'], data: simpleMessage('sender@test.org', 'room@example.com') });
    assert.equal(r.data?.code, 250, r.transcript);
  });

  it('freed space is seen: the mailbox is accepted once it shrinks', async () => {
    await mailbox('shrinks', QUOTA + 1);
    assert.equal((await envelope(pf, ['shrinks@example.com'])).rcpt[0]!.code, 452);
    await mailbox('shrinks', 10);
    assert.equal((await envelope(pf, ['shrinks@example.com'])).rcpt[0]!.code, 250);
  });

  it('with the quota service stopped, mail is accepted (on_error DUNNO) and the error is logged', async () => {
    await quota.stop();
    const r = await envelope(pf, ['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    const line = await frontend.waitForLog((l) => l.msg === 'decision' && l.verdict === 'error');
    assert.equal(line.error, 'SOURCE_UNREACHABLE');
  });

  it('with a backend that never answers, mail is accepted once the latency budget is spent', async () => {
    hung = await startBackend(() => {
      /* accepts the request, never answers */
    });
    // A second frontend, pointed at a backend that accepts the request and never answers.
    const second = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', hung.url(), '--latency_budget', '1s']);
    try {
      await pf.postconf('-e', `smtpd_recipient_restrictions = ${restrictionsFor(second)}`);
      await pf.reload();
      const r = await envelope(pf, ['full@example.com']);
      assert.equal(r.rcpt[0]!.code, 250, r.transcript);
      const line = await second.waitForLog((l) => l.msg === 'decision');
      assert.equal(line.verdict, 'error');
      assert.equal(line.error, 'SOURCE_TIMEOUT');
      assert.equal(hung.requests.length, 1);
    } finally {
      await second.stop();
    }
  });
});

describe('Postfix spawn(8) service running `overquota frontend --stdio`', () => {
  let quota: Running & { baseUrl: string };
  let pf: PostfixInstance;
  let logFile: string;

  before(async () => {
    quota = await startQuotaServiceProcess(['--store.path', mail, '--store.limit', String(QUOTA)]);
    const cli = await spawnableInstall(path.join(tmp.path, 'install'));
    const logs = path.join(tmp.path, 'logs');
    await fs.mkdir(logs, { mode: 0o777 });
    await fs.chmod(logs, 0o777);
    logFile = path.join(logs, 'spawn.log');
    const config = path.join(tmp.path, 'frontend.json');
    await fs.writeFile(config, JSON.stringify({ source: { type: 'http', url: `${quota.baseUrl}/quota?u={key}` }, log: { file: logFile }, cache: { ttl: { over_quota: '0s' } } }));
    await fs.chmod(config, 0o644);
    // postfix/master.cf and its main.cf companion lines, with this machine's paths.
    const companion = masterCfCompanionMain();
    // The package's command and its user are not installed on this host: node on the copy above,
    // as nobody, in their place.
    assert.match(masterCfSnippet(), / user=overquota argv=\/usr\/bin\/overquota frontend --stdio --config \/etc\/overquota\/frontend\.json$/);
    const service = masterCfSnippet()
      .replace('user=overquota', 'user=nobody')
      .replace('/usr/bin/overquota', `${NODE_FOR_NOBODY} ${cli}`)
      .replace('/etc/overquota/frontend.json', config);
    pf = await startPostfix({
      smtpdRecipientRestrictions: companion.get('smtpd_recipient_restrictions')!,
      extraMain: { overquota_time_limit: companion.get('overquota_time_limit')! },
      extraMaster: [service],
    });
  });
  after(async () => {
    await pf?.stop();
    await quota?.stop();
  });

  it('gives the same answers: 452 4.2.2 for a full mailbox, 250 for one with room, 452 and 552 by SIZE=', async () => {
    assertScenario(await envelope(pf, ['full@example.com', 'room@example.com']));
    assert.equal((await envelope(pf, ['room@example.com'], `SIZE=${QUOTA - 600_000 + 1}`)).rcpt[0]!.code, 452);
    assert.equal((await envelope(pf, ['room@example.com'], `SIZE=${QUOTA + 1}`)).rcpt[0]!.code, 552);
  });

  it('logs its decisions to log.file, and Postfix logs no warning about the policy service', async () => {
    // Log lines go out in batches (at most FLUSH_AFTER_MS late), and the spawned process may still
    // be serving its smtpd: wait a little for the line rather than read once.
    const deadline = Date.now() + 5000;
    const decisionLogged = async () => {
      const text = await fs.readFile(logFile, 'utf8').catch(() => '');
      // Whole lines only: a batch being written may be seen half-way.
      const lines = text.split('\n').slice(0, -1).map((l) => JSON.parse(l) as Record<string, unknown>);
      return lines.some((l) => l.msg === 'decision' && l.verdict === 'over_quota' && l.mailbox === 'full');
    };
    while (!(await decisionLogged()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(await decisionLogged(), 'the over-quota decision is in log.file');
    assert.doesNotMatch(await pf.maillog(), /warning: .*(policy|overquota)/);
  });

  it('accepts mail when the quota service is stopped', async () => {
    await quota.stop();
    const r = await envelope(pf, ['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
  });
});
