/*
 * The milter listener as a process: bad clients dropped alone, many connections at once, our own
 * trouble answered with the on_error reply within the budget, and a real Postfix through smtpd_milters.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startFrontend, type Running } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { freePort } from './helpers/ports.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { MilterDecoder, type Packet } from '../src/milter/codec.js';
import { connect, mail, optneg, rcpt } from './helpers/milter-packets.js';
import { startPostfix, postfixUnavailable, type PostfixInstance } from './helpers/postfix.js';
import { sendEnvelope, simpleMessage } from './helpers/smtp.js';
import { mainCfSnippet } from './helpers/snippets.js';

/** A scripted MTA side: sends packets, reads replies. */
class FakeMta {
  private decoder = new MilterDecoder();
  private replies: Packet[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<void>;
  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.replies.push(...this.decoder.push(d));
      this.waiters.splice(0).forEach((w) => w());
    });
    socket.on('error', () => {});
    this.closed = new Promise((r) => socket.on('close', () => r()));
  }
  static async open(port: number): Promise<FakeMta> {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r, j) => s.once('connect', r).once('error', j));
    return new FakeMta(s);
  }
  send(...packets: Buffer[]) {
    this.socket.write(Buffer.concat(packets));
  }
  async reply(): Promise<string> {
    while (this.replies.length === 0) {
      const closed = this.closed.then(() => {
        throw new Error('milter closed the connection');
      });
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), closed]);
    }
    const p = this.replies.shift()!;
    return p.command + p.data.toString('latin1');
  }
  /** Negotiates v6 and opens a transaction. */
  async begin(sender = '<a@example.net>') {
    this.send(optneg(), connect(), mail(sender));
    assert.equal((await this.reply())[0], 'O');
  }
}

describe('the milter listener', () => {
  let tmp: TempDir;
  let fe: Running;
  let port: number;
  before(async () => {
    tmp = await tempDir('overquota-milter-');
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    port = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--store.limit', '1000']);
  });
  after(async () => {
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('runs without a policy listener, milter only', async () => {
    await fe.waitForLog((l) => l.msg === 'milter service ready');
    assert.equal(fe.logs.some((l) => l.msg === 'policy service ready'), false);
  });

  it('junk, a bad length, a truncated packet or an unknown command drop that connection only', async () => {
    const good = await FakeMta.open(port);
    await good.begin();
    const cases: [Buffer, string][] = [
      [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 'LENGTH_TOO_LARGE'],
      [Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), 'LENGTH_TOO_LARGE'],
      [Buffer.from([0, 0, 0, 0]), 'LENGTH_ZERO'],
      [Buffer.concat([optneg(), Buffer.from([0, 0, 0, 1, 0x5a])]), 'UNKNOWN_COMMAND'],
      [Buffer.from([0, 0, 0, 50, 0x52, 0x3c]), 'TRUNCATED'],
    ];
    for (const [bytes, code] of cases) {
      const bad = await FakeMta.open(port);
      bad.socket.end(bytes);
      await bad.closed;
      await fe.waitForLog((l) => l.code === code);
    }
    good.send(rcpt('<full@example.com>'));
    assert.match(await good.reply(), /^y452 4\.2\.2 Mailbox full/);
    good.socket.destroy();
  });

  it('answers 300 concurrent connections, each with its own transaction', async () => {
    const mtas = await Promise.all(Array.from({ length: 300 }, () => FakeMta.open(port)));
    await Promise.all(mtas.map((m) => m.begin()));
    mtas.forEach((m, i) => m.send(rcpt(i % 2 ? '<full@example.com>' : `<room${i}@example.com>`)));
    const replies = await Promise.all(mtas.map((m) => m.reply()));
    replies.forEach((r, i) => assert.equal(r[0], i % 2 ? 'y' : 'c', `connection ${i}`));
    mtas.forEach((m) => m.socket.destroy());
  });
});

describe('milter: our own trouble', () => {
  let hung: Backend;
  let fe: Running;
  let port: number;
  before(async () => {
    hung = await startBackend(() => {
      /* never answers */
    });
    port = await freePort();
    fe = await startFrontend(['--milter.listen', `inet:${port}@127.0.0.1`, '--policy.listen', '', '--source.type', 'http', '--source.url', hung.url(), '--latency_budget', '500ms']);
  });
  after(async () => {
    await fe?.stop();
    await hung?.close();
  });

  it('a source that never answers gets the on_error reply (continue) once the budget is spent', async () => {
    const m = await FakeMta.open(port);
    await m.begin();
    m.send(rcpt('<a@example.com>'));
    assert.equal(await m.reply(), 'c');
    const line = await fe.waitForLog((l) => l.msg === 'decision');
    assert.equal(line.error, 'SOURCE_TIMEOUT');
    m.socket.destroy();
  });
});

const unavailable = postfixUnavailable();
if (unavailable) throw new Error(`cannot run a private Postfix: ${unavailable}`);

describe('Postfix smtpd_milters -> overquota milter', () => {
  let tmp: TempDir;
  let fe: Running & { listeners: string[] };
  let pf: PostfixInstance;
  before(async () => {
    tmp = await tempDir('overquota-pf-milter-');
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    const port = await freePort();
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--store.limit', '1000']);
    // postfix/milter.cf's smtpd_milters line as operators paste it, pointed at this port.
    const milters = mainCfSnippet('smtpd_milters', 'milter.cf');
    assert.match(milters, /inet:127\.0\.0\.1:10034/);
    pf = await startPostfix({ smtpdRecipientRestrictions: 'reject_unauth_destination, permit', milters: milters.replace('10034', String(port)) });
  });
  after(async () => {
    await pf?.stop();
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('a full mailbox gets 452 4.2.2 with our text; a mailbox with room in the same transaction gets 250 and the message is delivered', async () => {
    const r = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com', 'room@example.com'], data: simpleMessage('sender@test.org', 'room@example.com') });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
    assert.equal(r.rcpt[0]!.text, '4.2.2 Mailbox full, try again later');
    assert.equal(r.rcpt[1]!.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    await pf.waitForLog(/to=<room@example\.com>.*status=sent/);
    assert.doesNotMatch(await pf.maillog(), /warning: .*milter/);
  });

  it('SIZE= larger than the whole quota gets 552 5.2.3 through the milter', async () => {
    const r = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', mailArgs: 'SIZE=2000', rcpts: ['room@example.com'] });
    assert.equal(r.rcpt[0]!.code, 552, r.transcript);
    assert.match(r.rcpt[0]!.text, /^5\.2\.3 /);
  });
});
