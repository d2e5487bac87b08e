// Proves the real-Sendmail test harness (test/helpers/sendmail.ts, smtp.ts) works: a trivial milter
// of our own answers `452 4.2.2 Mailbox full` at RCPT for full@example.com, Sendmail passes that
// to our SMTP client, other recipients are accepted and delivered to the sink mailer, F=T tempfails
// when the milter is down, and nothing is left running after.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { execFile } from 'node:child_process';
import { readlinkSync, existsSync } from 'node:fs';
import { freePort } from './helpers/ports.js';
import { startSendmail, sendmailUnavailable, type SendmailInstance } from './helpers/sendmail.js';
import { sendEnvelope, simpleMessage } from './helpers/smtp.js';

const unavailable = sendmailUnavailable();
if (unavailable) throw new Error(`cannot run a private Sendmail: ${unavailable}`);

const FULL_REPLY = '452 4.2.2 Mailbox full';
// SMFIP_NOHELO | NOBODY | NOHDRS | NOEOH | NOUNKNOWN | NODATA: only connect, MAIL, RCPT, end of body.
const WANTED_PROTOCOL = 0x2 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200;

interface MilterCommand {
  cmd: string;
  /** NUL-separated strings of the packet (argv for M/R), without the trailing empty one. */
  args: string[];
}

/** One reply packet in one buffer: uint32 BE length (command byte + data), command byte, data. */
function packet(cmd: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(data.length + 1, 0);
  head.write(cmd, 4, 'latin1');
  return Buffer.concat([head, data]);
}

/**
 * Minimal milter: v6 negotiation without actions, `y 452 4.2.2 Mailbox full` at RCPT for
 * full@example.com, `a` at end of body, `c` for every other command that expects a reply.
 */
async function startMilter(): Promise<{ port: number; commands: MilterCommand[]; offered: number[]; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const commands: MilterCommand[] = [];
  const offered: number[] = [];
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 5) {
        const len = buf.readUInt32BE(0);
        if (len < 1 || len > 1 << 20) return sock.destroy();
        if (buf.length < 4 + len) break;
        const cmd = String.fromCharCode(buf[4] ?? 0);
        const data = buf.subarray(5, 4 + len);
        buf = buf.subarray(4 + len);
        const args = data.toString('latin1').split('\0').slice(0, -1);
        commands.push({ cmd, args });
        switch (cmd) {
          case 'O': {
            const [version, actions, protocol] = [data.readUInt32BE(0), data.readUInt32BE(4), data.readUInt32BE(8)];
            offered.push(version, actions, protocol);
            const reply = Buffer.alloc(12);
            reply.writeUInt32BE(Math.min(6, version), 0);
            reply.writeUInt32BE(0, 4);
            reply.writeUInt32BE(WANTED_PROTOCOL & protocol, 8);
            sock.write(packet('O', reply));
            break;
          }
          case 'D': // macros
          case 'A': // abort
          case 'Q': // quit
          case 'K': // quit, new connection follows
            break;
          case 'R':
            sock.write((args[0] ?? '').toLowerCase() === '<full@example.com>' ? packet('y', Buffer.from(`${FULL_REPLY}\0`, 'latin1')) : packet('c'));
            break;
          case 'E':
            sock.write(packet('a'));
            break;
          default:
            sock.write(packet('c'));
        }
      }
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    port,
    commands,
    offered,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** pids of running `sendmail` processes (by command name). */
function sendmailPids(): Promise<number[]> {
  return new Promise((resolve) => {
    execFile('pgrep', ['-x', 'sendmail'], { encoding: 'utf8' }, (_err, stdout) =>
      resolve(stdout.split('\n').filter(Boolean).map(Number)),
    );
  });
}

describe('private Sendmail with a milter (test/helpers/sendmail.ts)', () => {
  let milter: Awaited<ReturnType<typeof startMilter>>;
  let mta: SendmailInstance;
  let dir = '';
  let pid = 0;

  before(async () => {
    milter = await startMilter();
    mta = await startSendmail({ milterPort: milter.port });
    dir = mta.dir;
    pid = mta.pid;
  });

  after(async () => {
    await milter?.close();
    await mta?.stop();
  });

  it('passes the milter’s 452 4.2.2 for a full mailbox and accepts the next recipient in the same transaction', async () => {
    const r = await sendEnvelope({ port: mta.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com', 'ok@example.com'] });
    assert.equal(r.mail.code, 250, r.transcript);
    assert.equal(r.rcpt.length, 2, r.transcript);
    assert.equal(r.rcpt[0]?.code, 452, r.transcript);
    assert.match(r.rcpt[0]?.text ?? '', /4\.2\.2/, r.transcript);
    assert.match(r.rcpt[0]?.text ?? '', /Mailbox full/, r.transcript);
    assert.equal(r.rcpt[1]?.code, 250, r.transcript);
    const rcpts = milter.commands.filter((c) => c.cmd === 'R').map((c) => c.args[0]);
    assert.ok(rcpts.includes('<full@example.com>') && rcpts.includes('<ok@example.com>'), JSON.stringify(milter.commands));
    // Sendmail offered v6 with every action and protocol bit, and honoured our NO* bits.
    assert.deepEqual(milter.offered.slice(0, 3), [6, 0x1ff, 0x1fffff]);
    assert.equal(milter.commands.some((c) => c.cmd === 'H' || c.cmd === 'L' || c.cmd === 'B'), false, JSON.stringify(milter.commands));
  });

  it('accepts a message for ok@ (the milter accepts at end of body) and delivers it to the sink', async () => {
    const r = await sendEnvelope({
      port: mta.smtpPort,
      from: 'sender@test.org',
      rcpts: ['ok@example.com'],
      data: simpleMessage('sender@test.org', 'ok@example.com'),
    });
    assert.equal(r.rcpt[0]?.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    assert.ok(milter.commands.some((c) => c.cmd === 'E'), 'the milter saw the end of the body');
    assert.deepEqual(await mta.delivered(), ['ok']);
    assert.match(await mta.traffic(), /<<< RCPT TO:<ok@example\.com>/);
  });

  it('with F=T and the milter down, tempfails at MAIL FROM with 451 4.3.2', async () => {
    await milter.close();
    const r = await sendEnvelope({ port: mta.smtpPort, from: 'sender@test.org', rcpts: ['ok@example.com'] });
    assert.equal(r.mail.code, 451, r.transcript);
    assert.match(r.mail.text, /^4\.3\.2 Please try again later$/, r.transcript);
    assert.equal(r.rcpt.length, 0, r.transcript);
  });

  it('leaves no Sendmail process and no instance directory after stop()', async () => {
    await mta.stop();
    assert.ok(pid > 1, 'the daemon pid was read from its pid file');
    assert.equal(existsSync(`/proc/${pid}`), false, `sendmail daemon ${pid} still running`);
    // Other test files may run their own instances: only ours count (Sendmail chdirs to its queue).
    const ours = (await sendmailPids()).filter((p) => {
      try {
        return readlinkSync(`/proc/${p}/cwd`).startsWith(dir);
      } catch {
        return false;
      }
    });
    assert.deepEqual(ours, []);
    assert.equal(existsSync(dir), false, `${dir} still exists`);
  });
});
