/*
 * A real Exim 4.96 (unpacked from Debian's packages) whose RCPT ACL includes
 * postfix/exim/overquota.acl verbatim (only the port substituted), asking a real
 * `overquota frontend` through ${readsocket}: one connection per RCPT, the request written, the
 * socket half-closed, the answer read until overquota closes it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { EXIM_SNIPPET, eximTree, eximUnavailable, ensureEximTree, startExim, type EximInstance } from './helpers/exim.js';
import { REPO } from './helpers/package.js';
import { rcptCases, startQuotaWorld, waitForLog, type QuotaWorld } from './helpers/rcpt-cases.js';
import { sendEnvelope, simpleMessage } from './helpers/smtp.js';

const unavailable = eximUnavailable();
if (unavailable) throw new Error(`cannot run a private Exim: ${unavailable}`);

describe('Exim acl_smtp_rcpt with postfix/exim/overquota.acl -> overquota policy service', () => {
  let world: QuotaWorld;
  let exim: EximInstance;
  before(async () => {
    world = await startQuotaWorld();
    exim = await startExim({ policyPort: world.policyPort });
  });
  after(async () => {
    await exim?.stop();
    await world?.stop();
  });

  it("where README says it goes: Debian's RCPT ACL includes CHECK_RCPT_LOCAL_ACL_FILE after `require verify = recipient`", async () => {
    const acl = await fs.readFile(eximTree(await ensureEximTree()).debianRcptAcl, 'utf8');
    const verify = acl.search(/^\s*require\s*\n\s*verify = recipient\s*$/m);
    const include = acl.indexOf('.include CHECK_RCPT_LOCAL_ACL_FILE');
    assert.ok(verify > 0 && include > verify, "Debian's 30_exim4-config_check_rcpt changed: check README's Exim section");
  });

  it("README's Exim section shows the snippet's statements as they are in postfix/exim/overquota.acl", async () => {
    const snippet = await fs.readFile(EXIM_SNIPPET, 'utf8');
    const statements = snippet.slice(snippet.indexOf('  warn\n')).trimEnd();
    assert.ok((await fs.readFile(path.join(REPO, 'README.md'), 'utf8')).includes(`\n${statements}\n\`\`\``));
  });

  it('a quoted local part is the same mailbox: "full"@example.com gets 452', async () => {
    const r = await sendEnvelope({ port: exim.smtpPort, from: 'sender@test.org', rcpts: ['"full"@example.com'] });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
  });

  it("a local part in capitals reaches overquota as Exim's routers matched it (lower case), the mailbox Exim delivers to", async () => {
    const r = await sendEnvelope({ port: exim.smtpPort, from: 'capitals@test.org', rcpts: ['FuLL@Example.COM'] });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    const line = await world.frontend.waitForLog((l) => l.msg === 'decision' && l.sender === 'capitals@test.org');
    assert.equal(line.recipient, 'full@example.com');
  });

  it("a reply configured as HOLD freezes the message (Exim's hold queue), as Postfix puts it on hold", async () => {
    await world.restartFrontend(['--replies.over_quota', 'HOLD Mailbox full']);
    try {
      const r = await sendEnvelope({ port: exim.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com'], data: simpleMessage('sender@test.org', 'full@example.com') });
      assert.equal(r.rcpt[0]!.code, 250, r.transcript);
      const id = /id=(\S+)/.exec(r.data?.text ?? '')?.[1];
      assert.ok(id, r.transcript);
      await waitForLog({ log: () => exim.mainlog() }, new RegExp(` ${id} frozen by ACL\n`), 1);
    } finally {
      await world.restartFrontend([]);
    }
  });

  rcptCases({
    smtpPort: () => exim.smtpPort,
    world: () => world,
    log: () => exim.mainlog(),
    passedUnchecked: /Warning: overquota gave no answer within 3s: <full@example\.com> passed unchecked/,
  });
});
