/*
 * A real Sendmail (unpacked from Debian's packages, private .cf built with m4) with
 * INPUT_MAIL_FILTER pointing at `overquota frontend --milter.listen inet:PORT@127.0.0.1`.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startFrontend, type Running } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { freePort } from './helpers/ports.js';
import { startSendmail, sendmailUnavailable, type SendmailInstance } from './helpers/sendmail.js';
import { sendEnvelope, simpleMessage } from './helpers/smtp.js';
import { sendmailFilterSnippet } from './helpers/snippets.js';

const unavailable = sendmailUnavailable();
if (unavailable) throw new Error(`cannot run a private Sendmail: ${unavailable}`);

describe('Sendmail INPUT_MAIL_FILTER -> overquota milter', () => {
  let tmp: TempDir;
  let fe: Running;
  let sm: SendmailInstance;
  let milterPort: number;
  before(async () => {
    tmp = await tempDir('overquota-sendmail-e2e-');
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    await fs.writeFile(path.join(tmp.path, 'pct'), Buffer.alloc(5000));
    milterPort = await freePort();
    fe = await startFrontend([
      '--policy.listen', '',
      // Sendmail's own spelling of the socket, as in INPUT_MAIL_FILTER(`quota', `S=inet:PORT@127.0.0.1').
      '--milter.listen', `inet:${milterPort}@127.0.0.1`,
      '--store.path', tmp.path, '--store.limit', '1000',
    ]);
    // postfix/sendmail.mc's INPUT_MAIL_FILTER flags and timeouts, as operators paste them.
    const snippet = sendmailFilterSnippet();
    assert.equal(snippet.socket, 'inet:10034@127.0.0.1');
    sm = await startSendmail({ milterPort, milterFlags: snippet.flags, milterTimeouts: snippet.timeouts });
  });
  after(async () => {
    await sm?.stop();
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('a full mailbox gets 452 4.2.2 with our text; a mailbox with room in the same transaction gets 250 and is delivered', async () => {
    const r = await sendEnvelope({ port: sm.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com', 'room@example.com'], data: simpleMessage('sender@test.org', 'room@example.com') });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full, try again later');
    assert.equal(r.rcpt[1]!.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    assert.deepEqual(await sm.delivered(), ['room']);
  });

  it('the permanent too-large answer reaches the client as 552 5.2.3', async () => {
    const r = await sendEnvelope({ port: sm.smtpPort, from: 'sender@test.org', mailArgs: 'SIZE=2000', rcpts: ['room@example.com'] });
    assert.equal(r.rcpt[0]!.code, 552, r.transcript);
    assert.match(r.rcpt[0]!.text, /^5\.2\.3 /);
  });

  it('with the milter stopped, F=T makes Sendmail answer 451 4.3.2 at MAIL FROM: the sender retries, nothing bounces', async () => {
    await fe.stop();
    const r = await sendEnvelope({ port: sm.smtpPort, from: 'sender@test.org', rcpts: ['room@example.com'] });
    assert.equal(r.mail.code, 451, r.transcript);
    assert.match(r.mail.text, /^4\.3\.2 Please try again later/);
  });
});

describe('Sendmail: a reply text with % is doubled, so Sendmail does not turn it into 550 5.7.1', () => {
  let tmp: TempDir;
  let fe: Running;
  let sm: SendmailInstance;
  before(async () => {
    tmp = await tempDir('overquota-sendmail-pct-');
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    const milterPort = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:${milterPort}@127.0.0.1`, '--store.path', tmp.path, '--store.limit', '1000', '--replies.over_quota', '452 4.2.2 Mailbox full ({percent}% used), try again later']);
    sm = await startSendmail({ milterPort });
  });
  after(async () => {
    await sm?.stop();
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('the client sees "500% used"', async () => {
    const r = await sendEnvelope({ port: sm.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com'] });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full (500% used), try again later');
  });
});
