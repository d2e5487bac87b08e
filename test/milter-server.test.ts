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
import { redisUnavailable, startRedis } from './helpers/redis.js';
import { cgiAnswer, startBackend, type Backend } from './helpers/http-backend.js';
import { MilterDecoder, encodePacket, type Packet } from '../src/faces/milter/codec.js';
import { MAX_MACRO_BYTES, MAX_MACROS } from '../src/faces/milter/constants.js';
import { abort, connect, eob, macro, mail, optneg, rcpt } from './helpers/milter-packets.js';
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

/** A milter-only frontend over an mbox spool where "full" is over its 1000-byte limit and every other mailbox has room. */
function withStoreFrontend(prefix: string): { fe: () => Running; port: () => number } {
  let tmp: TempDir;
  let fe: Running;
  let port: number;
  before(async () => {
    tmp = await tempDir(prefix);
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    port = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--store.limit', '1000']);
  });
  after(async () => {
    await fe?.stop();
    await tmp?.cleanup();
  });
  return { fe: () => fe, port: () => port };
}

describe('the milter listener', () => {
  const started = withStoreFrontend('overquota-milter-');
  let fe: Running;
  let port: number;
  before(() => {
    fe = started.fe();
    port = started.port();
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

describe('milter: idle connections', () => {
  let tmp: TempDir;
  let fe: Running;
  let port: number;
  before(async () => {
    tmp = await tempDir('overquota-milter-idle-');
    port = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--milter.idle_timeout', '1500ms']);
  });
  after(async () => {
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('a connection is closed by the milter only after milter.idle_timeout without a packet', async () => {
    const mta = await FakeMta.open(port);
    const opened = Date.now();
    let closedAt = 0;
    void mta.closed.then(() => (closedAt = Date.now()));
    await mta.begin();
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(closedAt, 0, 'closed before idle_timeout');
    // A packet 1 s in: the idle time starts again from here.
    const again = Date.now();
    mta.send(rcpt('<room@example.com>'));
    assert.equal((await mta.reply())[0], 'c');
    await mta.closed;
    // At the earliest ~1,500 ms (the sweep's turns are 150 ms apart); 1,400 allows for clock rounding.
    assert.ok(closedAt - again >= 1400, `closed ${closedAt - again} ms after the last packet`);
    assert.ok(closedAt - opened < 10_000);
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
    // An idle timeout shorter than the budget: a connection waiting for its answer is not idle.
    fe = await startFrontend(['--milter.listen', `inet:${port}@127.0.0.1`, '--policy.listen', '', '--source.type', 'http', '--source.url', hung.url(), '--latency_budget', '500ms', '--milter.idle_timeout', '200ms']);
  });
  after(async () => {
    await fe?.stop();
    await hung?.close();
  });

  it('a source that never answers gets the on_error reply (continue) once the budget is spent, past milter.idle_timeout', async () => {
    const m = await FakeMta.open(port);
    await m.begin();
    m.send(rcpt('<a@example.com>'));
    assert.equal(await m.reply(), 'c');
    const line = await fe.waitForLog((l) => l.msg === 'decision');
    assert.equal(line.error, 'SOURCE_TIMEOUT');
    m.socket.destroy();
  });
});

/** Highest resident memory of a process so far, in MB (VmHWM of /proc/PID/status). */
async function peakRssMB(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)![1]) / 1024;
}

describe('milter: what one connection may hold', () => {
  // A frontend of its own: its peak memory is this test's alone.
  const started = withStoreFrontend('overquota-milter-flood-');
  let fe: Running;
  let port: number;
  before(() => {
    fe = started.fe();
    port = started.port();
  });

  it(`clients flooding tiny macros under every code are dropped and logged at the bound (${MAX_MACROS} macros, ${MAX_MACRO_BYTES} bytes), memory stays bounded, other connections are served`, async () => {
    const good = await FakeMta.open(port);
    await good.begin();
    // The flood: one packet of tiny macros under each of the 256 codes, 16.8 MB; it held
    // 135-152 MB per connection, and 24 of them ran the frontend out of heap.
    let names = '';
    for (let i = 0; names.length < 65_000; i++) names += `${i.toString(36)}\0v\0`;
    const tiny = Buffer.from(names, 'latin1');
    const flood = Buffer.concat([optneg(), ...Array.from({ length: 256 }, (_, code) => encodePacket('D', Buffer.concat([Buffer.from([code]), tiny])))]);
    const floods = 6;
    await Promise.all(
      Array.from({ length: floods }, async () => {
        const m = await FakeMta.open(port);
        m.socket.end(flood);
        await m.closed;
      }),
    );
    for (let i = 0; i < 100 && fe.logs.filter((l) => l.code === 'MACROS_OVER_LIMIT').length < floods; i++) await new Promise((r) => setTimeout(r, 50));
    const peak = await peakRssMB(fe.proc.pid!);
    assert.ok(peak < 250, `the frontend peaked at ${peak.toFixed(0)} MB resident`);
    const dropped = fe.logs.filter((l) => l.code === 'MACROS_OVER_LIMIT');
    assert.equal(dropped.length, floods, 'every flooding connection is dropped and logged');
    assert.match(String(dropped[0]!.msg), /milter connection dropped: macros .* over the limit/);
    good.send(rcpt('<full@example.com>'));
    assert.match(await good.reply(), /^y452 4\.2\.2 Mailbox full/);
    good.socket.destroy();
  });
});

describe('milter: a client that half-closes', () => {
  let slow: Backend;
  let fe: Running;
  let port: number;
  before(async () => {
    // A cache miss that takes a while: the answer is ready well after the client's FIN arrived.
    slow = await startBackend((url, req, res) => setTimeout(() => cgiAnswer({ full: 5000 }, 1000)(url, req, res), 200));
    port = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--source.type', 'http', '--source.url', slow.url(), '--latency_budget', '5s']);
  });
  after(async () => {
    await fe?.stop();
    await slow?.close();
  });

  it('gets the answer to every packet it sent before its FIN, then the milter closes', { timeout: 20_000 }, async () => {
    const m = await FakeMta.open(port);
    m.socket.end(Buffer.concat([optneg(), connect(), mail('<a@example.net>'), rcpt('<full@example.com>'), rcpt('<room@example.com>')]));
    assert.equal((await m.reply())[0], 'O');
    assert.match(await m.reply(), /^y452 4\.2\.2 Mailbox full/);
    assert.equal(await m.reply(), 'c');
    await m.closed;
    assert.equal(slow.requests.length, 2, 'both were cache misses');
  });
});

const unavailable = postfixUnavailable();
if (unavailable) throw new Error(`cannot run a private Postfix: ${unavailable}`);

describe('milter: mail on its way counts (reservations)', () => {
  const LIMIT = 1024 * 1024;
  const MESSAGE = 50 * 1024;
  let tmp: TempDir;
  let fe: Running;
  let port: number;
  before(async () => {
    tmp = await tempDir('overquota-milter-reservations-');
    // burst: room for three messages; abort, eom: room for one.
    await fs.writeFile(path.join(tmp.path, 'burst'), Buffer.alloc(LIMIT - 3 * MESSAGE - 1000));
    await fs.writeFile(path.join(tmp.path, 'abort'), Buffer.alloc(LIMIT - MESSAGE - 1000));
    await fs.writeFile(path.join(tmp.path, 'eom'), Buffer.alloc(LIMIT - MESSAGE - 1000));
    port = await freePort();
    fe = await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--store.limit', String(LIMIT)]);
  });
  after(async () => {
    await fe?.stop();
    await tmp?.cleanup();
  });

  it('ten sessions at once, each a message with SIZE= to a mailbox with room for three: three accepted', async () => {
    const mtas = await Promise.all(Array.from({ length: 10 }, () => FakeMta.open(port)));
    await Promise.all(mtas.map((m) => m.begin()));
    mtas.forEach((m) => m.send(mail('<a@example.net>', `SIZE=${MESSAGE}`), rcpt('<burst@example.com>')));
    const replies = await Promise.all(mtas.map((m) => m.reply()));
    assert.equal(replies.filter((r) => r === 'c').length, 3);
    assert.equal(replies.filter((r) => /^y452 4\.2\.2/.test(r)).length, 7);
    mtas.forEach((m) => m.socket.destroy());
  });

  it('a message aborted before its end gives back what its recipients reserved', async () => {
    const m = await FakeMta.open(port);
    await m.begin();
    m.send(mail('<a@example.net>', `SIZE=${MESSAGE}`), rcpt('<abort@example.com>'));
    assert.equal(await m.reply(), 'c');
    const other = await FakeMta.open(port);
    await other.begin();
    other.send(mail('<b@example.net>', `SIZE=${MESSAGE}`), rcpt('<abort@example.com>'));
    assert.match(await other.reply(), /^y452/, 'the first message holds the room');
    // The ABORT has no reply: a RCPT after it (another message) shows it was handled.
    m.send(abort(), mail('<a@example.net>'), rcpt('<elsewhere@example.com>'));
    assert.equal(await m.reply(), 'c');
    other.send(abort(), mail('<b@example.net>', `SIZE=${MESSAGE}`), rcpt('<abort@example.com>'));
    assert.equal(await other.reply(), 'c', 'the aborted message no longer holds it');
    m.socket.destroy();
    other.socket.destroy();
  });

  it('at end of message {msg_size} gives the reservation the real size', async () => {
    const m = await FakeMta.open(port);
    await m.begin();
    m.send(mail('<a@example.net>', `SIZE=${MESSAGE}`), rcpt('<eom@example.com>'));
    assert.equal(await m.reply(), 'c');
    m.send(macro('E', 'i', 'ABC123', '{msg_size}', '2000'), eob());
    assert.equal(await m.reply(), 'c');
    m.send(mail('<a@example.net>', `SIZE=${MESSAGE - 5000}`), rcpt('<eom@example.com>'));
    assert.equal(await m.reply(), 'c', '2,000 bytes on their way, not 51,200: the second message fits');
    m.socket.destroy();
  });
});

describe('two milter frontends on one host sharing Redis', () => {
  it('each counts the other\'s message on its way: a mailbox with room for one takes one', async () => {
    const why = redisUnavailable();
    if (why) throw new Error(why);
    const [LIMIT, MESSAGE] = [1024 * 1024, 50 * 1024];
    const tmp = await tempDir('overquota-milter-two-');
    const redis = await startRedis();
    const frontends: Running[] = [];
    try {
      await fs.writeFile(path.join(tmp.path, 'one'), Buffer.alloc(LIMIT - MESSAGE - 1000));
      const ports = [await freePort(), await freePort()];
      for (const port of ports) frontends.push(await startFrontend(['--policy.listen', '', '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', tmp.path, '--store.limit', String(LIMIT), '--redis.url', redis.url]));
      // The first session of each process, its first message: the same name if it were per process only.
      const [a, b] = [await FakeMta.open(ports[0]!), await FakeMta.open(ports[1]!)];
      await a.begin();
      await b.begin();
      a.send(mail('<a@example.net>', `SIZE=${MESSAGE}`), rcpt('<one@example.com>'));
      assert.equal(await a.reply(), 'c');
      b.send(mail('<b@example.net>', `SIZE=${MESSAGE}`), rcpt('<one@example.com>'));
      assert.match(await b.reply(), /^y452 4\.2\.2/, 'the other frontend\'s message holds the room');
      a.socket.destroy();
      b.socket.destroy();
    } finally {
      await Promise.all(frontends.map((f) => f.stop()));
      await redis.stop();
      await tmp.cleanup();
    }
  });
});

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
