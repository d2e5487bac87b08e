/*
 * The RCPT cases every MTA face of overquota must pass end to end, the same for each MTA (Exim,
 * Haraka): a real overquota frontend on a free port reading an mbox store, a real MTA asking it
 * (started by the test file), and our SMTP client (smtp.ts) saying what a sending server sees.
 *
 * The mailboxes (limit 1000 bytes each): full (5000 used), half (600 used), burst (100 used),
 * room (no file: empty); the alias team@example.com -> full@example.com in aliases.file.
 * The last cases restart the frontend with other replies (Postfix access(5) actions), replace it
 * by a stand-in answering an action overquota never sends, then stop it (fail open): a test file
 * registers its own cases first.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { startFrontend, type Running } from './overquota.js';
import { freePort } from './ports.js';
import { sendEnvelope, simpleMessage, SmtpConnection, type Reply } from './smtp.js';
import { tempDir, type TempDir } from './tmp.js';

/** Bytes each mailbox may hold. */
export const LIMIT = 1000;
const SENDER = 'sender@test.org';

export interface QuotaWorld {
  /** Where the frontend's policy service listens (127.0.0.1): the MTA is pointed here. */
  policyPort: number;
  /** The frontend answering now. */
  frontend: Running;
  /** Stop the frontend and start another on the same port with `args` added. */
  restartFrontend(args: string[]): Promise<void>;
  /** Replace the frontend by a listener on its port that accepts and never answers (a hung overquota). */
  hangPolicyService(): Promise<void>;
  /**
   * Replace the frontend by a stand-in on its port that answers every request with `action`, as
   * overquota does (in order; closing when the client half-closes): for actions overquota never
   * sends, which another policy server, or a later overquota, could.
   */
  answerPolicyWith(action: string): Promise<void>;
  /** Stop the frontend or its stand-in: nothing answers on policyPort. */
  stopPolicyService(): Promise<void>;
  /** Stop whatever answers on policyPort and remove the files. Idempotent. */
  stop(): Promise<void>;
}

/** The store, the alias map and a frontend on a free port; `args` are added to the frontend's. */
export async function startQuotaWorld(args: string[] = []): Promise<QuotaWorld> {
  const tmp: TempDir = await tempDir('overquota-mta-');
  const store = path.join(tmp.path, 'mail');
  await fs.mkdir(store);
  await fs.writeFile(path.join(store, 'full'), Buffer.alloc(5000));
  await fs.writeFile(path.join(store, 'half'), Buffer.alloc(600));
  await fs.writeFile(path.join(store, 'burst'), Buffer.alloc(100));
  const aliases = path.join(tmp.path, 'virtual');
  await fs.writeFile(aliases, 'team@example.com full@example.com\n');
  const policyPort = await freePort();
  const start = (more: string[]) =>
    startFrontend([
      '--policy.listen', `inet:127.0.0.1:${policyPort}`,
      '--store.path', store, '--store.limit', String(LIMIT), '--aliases.file', aliases, ...args, ...more,
    ]);
  let standIn: net.Server | undefined;
  const held = new Set<net.Socket>();
  /** The frontend and any stand-in stopped: policyPort is free. */
  const stopPolicyService = async () => {
    await world.frontend.stop();
    for (const s of held) s.destroy();
    await new Promise<void>((resolve) => (standIn ? standIn.close(() => resolve()) : resolve()));
    standIn = undefined;
  };
  /** A stand-in on policyPort; `answer` is what it does with each connection. */
  const replaceWith = async (answer: (socket: net.Socket) => void) => {
    await stopPolicyService();
    standIn = net.createServer((socket) => {
      held.add(socket);
      socket.on('close', () => held.delete(socket));
      answer(socket);
    });
    await new Promise<void>((resolve, reject) => standIn!.once('error', reject).listen(policyPort, '127.0.0.1', resolve));
  };
  const world: QuotaWorld = {
    policyPort,
    frontend: await start([]),
    async restartFrontend(more) {
      await stopPolicyService();
      world.frontend = await start(more);
    },
    hangPolicyService: () => replaceWith(() => {}),
    answerPolicyWith: (action) =>
      replaceWith((socket) => {
        let pending = '';
        socket.setEncoding('utf8');
        socket.on('data', (text: string) => {
          pending += text;
          for (let end = pending.indexOf('\n\n'); end >= 0; end = pending.indexOf('\n\n')) {
            pending = pending.slice(end + 2);
            socket.write(`action=${action}\n\n`);
          }
        });
        socket.on('end', () => socket.end());
        socket.on('error', () => socket.destroy());
      }),
    stopPolicyService,
    async stop() {
      await stopPolicyService();
      await tmp.cleanup();
    },
  };
  return world;
}

/** One transaction on an open connection: MAIL (with `mailArgs`), RCPT each, then RSET. */
export async function transaction(conn: SmtpConnection, rcpts: string[], mailArgs = ''): Promise<Reply[]> {
  const mail = await conn.command(`MAIL FROM:<${SENDER}>${mailArgs ? ` ${mailArgs}` : ''}`);
  assert.equal(mail.code, 250, conn.transcript);
  const replies: Reply[] = [];
  for (const r of rcpts) replies.push(await conn.command(`RCPT TO:<${r}>`));
  assert.equal((await conn.command('RSET')).code, 250, conn.transcript);
  return replies;
}

export interface MtaUnderTest {
  /** The MTA's SMTP port (read when a case runs). */
  smtpPort(): number;
  world(): QuotaWorld;
  /** The MTA's log so far, and the line it writes for a recipient passed unchecked. */
  log(): Promise<string>;
  passedUnchecked: RegExp;
}

/** Registers the shared cases (node:test `it`), in this order; from the DEFER_IF_PERMIT case on they replace the frontend. */
export function rcptCases(mta: MtaUnderTest): void {
  const send = (rcpts: string[], mailArgs?: string, data?: string) =>
    sendEnvelope({ port: mta.smtpPort(), from: SENDER, rcpts, ...(mailArgs ? { mailArgs } : {}), ...(data ? { data } : {}) });

  it('a full mailbox gets 452 4.2.2 with our text; a mailbox with room in the same message gets 250 and the message is taken', async () => {
    const r = await send(['full@example.com', 'room@example.com'], undefined, simpleMessage(SENDER, 'room@example.com'));
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full, try again later');
    assert.equal(r.rcpt[1]!.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    // What the MTA told overquota about the refused recipient.
    const line = await mta.world().frontend.waitForLog((l) => l.msg === 'decision' && l.recipient === 'full@example.com');
    assert.equal(line.sender, SENDER);
    assert.equal(line.client_address, '127.0.0.1');
    assert.equal(line.state, 'RCPT');
  });

  it('SIZE= over the room left gets 452; a SIZE= that fits gets 250', async () => {
    const over = await send(['half@example.com'], 'SIZE=500');
    assert.equal(over.rcpt[0]!.code, 452, over.transcript);
    assert.equal(over.rcpt[0]!.text, '4.2.2 Mailbox full, try again later');
    const fits = await send(['half@example.com'], 'SIZE=300');
    assert.equal(fits.rcpt[0]!.code, 250, fits.transcript);
  });

  it('a message larger than the whole quota gets the permanent 552 5.2.3: it can never be delivered', async () => {
    const r = await send(['room@example.com'], `SIZE=${LIMIT * 2}`);
    assert.equal(r.rcpt[0]!.code, 552, r.transcript);
    assert.equal(r.rcpt[0]!.text, '5.2.3 Message is larger than the mailbox quota');
  });

  it('an alias is resolved before the check: team@ -> full@ gets 452', async () => {
    const r = await send(['team@example.com']);
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full, try again later');
  });

  it('two RCPTs of one message to one mailbox reserve its size once; a burst of messages is cut at the room left', async () => {
    // burst: 100 of 1000 bytes used, messages of 400: room for two.
    const conn = await SmtpConnection.open(mta.smtpPort());
    try {
      assert.equal((await conn.readReply('the greeting')).code, 220, conn.transcript);
      assert.equal((await conn.command('EHLO client.example.org')).code, 250, conn.transcript);
      const one = await transaction(conn, ['burst+a@example.com', 'burst+b@example.com'], 'SIZE=400');
      assert.deepEqual(one.map((r) => r.code), [250, 250], conn.transcript);
      const two = await transaction(conn, ['burst@example.com'], 'SIZE=400');
      assert.equal(two[0]!.code, 250, `the first message reserved twice?\n${conn.transcript}`);
      const three = await transaction(conn, ['burst@example.com'], 'SIZE=400');
      assert.equal(three[0]!.code, 452, `the first two messages were not both counted\n${conn.transcript}`);
    } finally {
      await conn.quit();
    }
  });

  // Replies configured as Postfix access(5) named actions (README, Decisions): the client must get
  // what Postfix would answer (smtpd_check.c), not a silent 250.
  it('a reply configured as DEFER_IF_PERMIT with a status code defers a full mailbox: 450 (access_map_defer_code) with its status and text', async () => {
    await mta.world().restartFrontend(['--replies.over_quota', 'DEFER_IF_PERMIT 4.2.2 Mailbox full']);
    const r = await send(['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 450, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full');
  });

  it("named actions without a code, status or text, in any case, get Postfix's defaults: 450 4.7.1 Service unavailable, 554 5.7.1 Access denied", async () => {
    await mta.world().restartFrontend(['--replies.over_quota', 'defer_if_permit', '--replies.too_large', 'Reject']);
    const full = await send(['full@example.com']);
    assert.equal(full.rcpt[0]!.code, 450, full.transcript);
    assert.equal(full.rcpt[0]!.text, '4.7.1 Service unavailable');
    const large = await send(['room@example.com'], `SIZE=${LIMIT * 2}`);
    assert.equal(large.rcpt[0]!.code, 554, large.transcript);
    assert.equal(large.rcpt[0]!.text, '5.7.1 Access denied');
  });

  it('a reply configured as HOLD lets the recipient pass (250) and the MTA logs it', async () => {
    await mta.world().restartFrontend(['--replies.over_quota', 'HOLD Mailbox full']);
    const held = /overquota: HOLD Mailbox full/;
    const before = (await mta.log()).split(held).length - 1; // a test file's own HOLD cases
    const r = await send(['full@example.com'], undefined, simpleMessage(SENDER, 'full@example.com'));
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    await waitForLog(mta, held, before + 1);
  });

  it('dry run (WARN): a full mailbox passes (250) and the MTA logs what overquota would have answered', async () => {
    await mta.world().restartFrontend(['--dry_run', 'true']);
    const r = await send(['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    await waitForLog(mta, /overquota: WARN overquota dry run: 4\.2\.2 Mailbox full, try again later/, 1);
  });

  it('an action the MTA does not know passes on (250) and the MTA logs it', async () => {
    await mta.world().answerPolicyWith('FILTER smtp:[127.0.0.1]:10025');
    const r = await send(['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    await waitForLog(mta, /overquota: unknown action "FILTER smtp:\[127\.0\.0\.1\]:10025": <full@example\.com> passed on/, 1);
  });

  it('overquota stopped: the recipient passes (250) and the MTA logs that it passed unchecked', async () => {
    await mta.world().stopPolicyService();
    const r = await send(['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    await waitForLog(mta, mta.passedUnchecked, 1);
  });

  it('overquota hung (accepts, never answers): the recipient passes after the timeout, within the SMTP session', async () => {
    await mta.world().hangPolicyService();
    const r = await send(['full@example.com']);
    assert.equal(r.rcpt[0]!.code, 250, r.transcript);
    await waitForLog(mta, mta.passedUnchecked, 2);
  });
}

/** How long an MTA may take to write a log line it wrote before or just after its reply. */
const LOG_WAIT_MS = 5000;

/** Waits until the MTA's log holds `count` lines matching `line`. */
export async function waitForLog(mta: Pick<MtaUnderTest, 'log'>, line: RegExp, count: number): Promise<void> {
  const by = Date.now() + LOG_WAIT_MS;
  let text = await mta.log();
  while (text.split(line).length - 1 < count && Date.now() < by) {
    await new Promise((r) => setTimeout(r, 50));
    text = await mta.log();
  }
  assert.equal(text.split(line).length - 1, count, `the MTA's log:\n${text.split('\n').slice(-30).join('\n')}`);
}
