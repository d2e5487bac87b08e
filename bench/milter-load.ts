/*
 * The milter load client of bench/milter-wire.ts (`node --import tsx bench/milter-load.ts milter
 * JSON`, bench/harness.ts runClient): N persistent milter connections speaking the protocol as
 * Postfix does, each running transactions back to back. It must never send a milter what Postfix
 * would not: it offers what Postfix 3.7 offers (v6, every action and step), then follows the
 * milter's answer: a skipped step (SMFIP_NO*) is not sent, a declined reply (SMFIP_NR_*) not
 * awaited, and with a v6 symbol list only the macros asked for go out, also for skipped steps
 * (milter8.c: "Send the macros for this event, even when we're not reporting the event itself").
 *
 * One transaction = one message to one recipient on a kept connection, as Postfix sends each
 * message of a session: macros + MAIL, macros + RCPT, macros + DATA, a header, end of header, a
 * body, macros + end of message, then ABORT. Once per connection first: OPTNEG, macros + CONNECT,
 * macros + HELO (not a session per transaction: that takes QUIT_NC, which Postfix never sends).
 * Packets that need no answer share the write of the next one that does. Every reply must be
 * CONTINUE (ACCEPT allowed at end of message); anything else, a closed connection or no reply
 * within timeoutMs is an error.
 */
import net from 'node:net';
import { MilterDecoder, encodePacket } from '../src/faces/milter/codec.js';
import { Cmd, Proto, Reply, Stage } from '../src/faces/milter/constants.js';
import { clientMain, isMain, sleep } from './harness.js';

/** Postfix 3.7's offer: protocol 6, every action, every step. */
const OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff };
const QUEUE_ID = '4XyZ1c2Q3pz9';
const z = (...s: string[]) => Buffer.from(s.map((x) => `${x}\0`).join(''), 'latin1');

/** Postfix's default macros per stage (milter_*_macros) in a session without TLS or AUTH. */
const macros = (rcpt: string): Record<string, [string, string][]> => ({
  C: [['j', 'mx.example.com'], ['{daemon_name}', 'smtpd'], ['{daemon_addr}', '127.0.0.1'], ['v', 'Postfix 3.7.11'], ['_', 'client.example.org [192.0.2.10]']],
  H: [],
  M: [['i', QUEUE_ID], ['{mail_addr}', 'sender@example.net'], ['{mail_host}', 'example.net'], ['{mail_mailer}', 'smtp']],
  R: [['i', QUEUE_ID], ['{rcpt_addr}', rcpt], ['{rcpt_host}', 'example.com'], ['{rcpt_mailer}', 'virtual']],
  T: [['i', QUEUE_ID]],
  E: [['i', QUEUE_ID]],
});
/** A stage's command byte -> its SMFIM_ number in a v6 symbol list. */
const SYMBOL_STAGE: Record<string, number> = { C: Stage.CONNECT, H: Stage.HELO, M: Stage.ENVFROM, R: Stage.ENVRCPT, T: Stage.DATA, E: Stage.EOM, N: Stage.EOH };

interface Negotiated {
  version: number;
  actions: number;
  protocol: number;
  /** SMFIM stage -> the macro names the milter asked for. */
  symbols: Map<number, Set<string>>;
}

function parseOptneg(data: Buffer): Negotiated {
  if (data.length < 12) throw new Error(`OPTNEG reply of ${data.length} bytes`);
  const symbols = new Map<number, Set<string>>();
  for (let at = 12; at + 4 < data.length; ) {
    const end = data.indexOf(0, at + 4) === -1 ? data.length : data.indexOf(0, at + 4);
    symbols.set(data.readUInt32BE(at), new Set(data.toString('latin1', at + 4, end).split(' ').filter(Boolean)));
    at = end + 1;
  }
  return { version: data.readUInt32BE(0), actions: data.readUInt32BE(4), protocol: data.readUInt32BE(8), symbols };
}

/** A step: command, data, the bit that skips it, the bit that spares its reply. */
type Step = [string, Buffer, number, number];
/** The writes of some steps, each ending with an answered packet; `tail`: the unanswered ones after the last. */
interface Writes {
  writes: Buffer[];
  tail: Buffer;
  packets: number;
}

function writesOf(n: Negotiated, steps: Step[], rcpt: string, after: Buffer[] = []): Writes {
  const [writes, all] = [[] as Buffer[], macros(rcpt)];
  let [pending, packets] = [[] as Buffer[], after.length];
  for (const [command, data, skip, noReply] of steps) {
    const wanted = n.version >= 6 ? n.symbols.get(SYMBOL_STAGE[command]!) : undefined;
    if (all[command]) pending.push(encodePacket(Cmd.MACRO, Buffer.concat([Buffer.from(command, 'latin1'), z(...all[command].filter(([k]) => !wanted || wanted.has(k)).flat())])));
    if (all[command]) packets++;
    if (n.protocol & skip) continue;
    pending.push(encodePacket(command, data));
    packets++;
    if (!(n.protocol & noReply)) [writes[writes.length], pending] = [Buffer.concat(pending), []];
  }
  return { writes, tail: Buffer.concat([...pending, ...after]), packets };
}

const port = Buffer.from([0x9c, 0x40]); // 40000
const sessionStart = (n: Negotiated) =>
  writesOf(n, [[Cmd.CONNECT, Buffer.concat([z('client.example.org'), Buffer.from('4'), port, z('192.0.2.10')]), Proto.NOCONNECT, Proto.NR_CONN], [Cmd.HELO, z('client.example.org'), Proto.NOHELO, Proto.NR_HELO]], '');
const transaction = (n: Negotiated, rcpt: string) =>
  writesOf(n, [
    [Cmd.MAIL, z('<sender@example.net>', 'SIZE=1024'), Proto.NOMAIL, Proto.NR_MAIL],
    [Cmd.RCPT, z(`<${rcpt}>`), Proto.NORCPT, Proto.NR_RCPT],
    [Cmd.DATA, Buffer.alloc(0), Proto.NODATA, Proto.NR_DATA],
    [Cmd.HEADER, z('Subject', ' bench'), Proto.NOHDRS, Proto.NR_HDR],
    [Cmd.EOH, Buffer.alloc(0), Proto.NOEOH, Proto.NR_EOH],
    [Cmd.BODY, Buffer.from('a short body\r\n'), Proto.NOBODY, Proto.NR_BODY],
    [Cmd.BODYEOB, Buffer.alloc(0), 0, 0],
  ], rcpt, [encodePacket(Cmd.ABORT)]);

export interface MilterLoad {
  port: number;
  connections: number;
  warmupS: number;
  durationS: number;
  /** Distinct recipients the transactions cycle through (user0@example.com ...). */
  recipients: number;
  timeoutMs: number;
}

export type MilterLoadResult = Awaited<ReturnType<typeof milterLoad>>;

async function milterLoad(o: MilterLoad, mark: (event: 'start' | 'end') => void) {
  const offer = Buffer.alloc(12);
  [OFFER.version, OFFER.actions, OFFER.protocol].forEach((x, i) => offer.writeUInt32BE(x, i * 4));
  let [measuring, stopping, transactions, errors, protocol, shape] = [false, false, 0, 0, 0, [0, 0]];
  const errorSamples: string[] = [];
  const fail = (what: string) => void (errors++ < 10 && errorSamples.push(what));

  const connection = (id: number) =>
    new Promise<void>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: o.port, noDelay: true });
      const decoder = new MilterDecoder(1 << 20);
      /** Per recipient: its transaction, and its first write with the last transaction's tail in front. */
      let plan: (Writes & { afterTail: Buffer })[] = [];
      let [phase, writes, step, txn, deadline] = ['optneg' as 'optneg' | 'start' | 'mail', [] as Buffer[], 0, id % o.recipients, 0];
      /** The session start's unanswered packets, sent in front of the first transaction. */
      let carry: Buffer | null = null;
      let finished = false;
      const watchdog = setInterval(() => {
        if (!deadline || Date.now() <= deadline) return;
        fail(`connection ${id}: no reply in ${o.timeoutMs} ms`);
        finish();
      }, 500);
      const finish = () => {
        finished = true;
        clearInterval(watchdog);
        socket.destroy();
        resolve();
      };
      const send = (b: Buffer) => {
        deadline = Date.now() + o.timeoutMs;
        socket.write(b);
      };
      const next = () => {
        const t = plan[txn]!;
        txn = (txn + 1) % o.recipients;
        phase = 'mail';
        writes = t.writes;
        step = 0;
        send(carry ? Buffer.concat([carry, writes[0]!]) : t.afterTail);
        carry = null;
      };
      socket.once('connect', () => send(encodePacket(Cmd.OPTNEG, offer)));
      socket.on('data', (chunk: Buffer) => {
        let packets;
        try {
          // Mostly one whole reply per read (one is awaited at a time): no need to copy it out.
          const whole = !decoder.midPacket && chunk.length > 4 && chunk.readUInt32BE(0) + 4 === chunk.length;
          packets = whole ? [{ command: String.fromCharCode(chunk[4]!), data: chunk.subarray(5) }] : decoder.push(chunk);
        } catch (err) {
          fail(`connection ${id}: ${(err as Error).message}`);
          return finish();
        }
        for (const p of packets) {
          if (phase === 'optneg') {
            if (p.command !== Reply.OPTNEG) {
              fail(`connection ${id}: ${JSON.stringify(p.command)} instead of the OPTNEG reply`);
              return finish();
            }
            const n = parseOptneg(p.data);
            plan = Array.from({ length: o.recipients }, (_, i) => transaction(n, `user${i}@example.com`)).map((t) => ({ ...t, afterTail: Buffer.concat([t.tail, t.writes[0]!]) }));
            [protocol, shape] = [n.protocol, [plan[0]!.packets, plan[0]!.writes.length]];
            const start = sessionStart(n);
            carry = start.tail;
            if (start.writes.length === 0) next();
            else {
              [phase, writes, step] = ['start', start.writes, 0];
              send(writes[0]!);
            }
            continue;
          }
          const last = step === writes.length - 1;
          if (p.command !== Reply.CONTINUE && !(phase === 'mail' && last && p.command === Reply.ACCEPT)) fail(`connection ${id}: reply ${JSON.stringify(p.command + p.data.toString('latin1').replace(/\0$/, ''))} (${phase}, step ${step})`);
          if (!last) {
            send(writes[++step]!);
            continue;
          }
          if (phase === 'mail' && measuring) transactions++;
          if (!stopping) next();
          else {
            socket.end(encodePacket(Cmd.QUIT));
            return finish();
          }
        }
      });
      socket.on('error', (err) => {
        if (!stopping && !finished) fail(`connection ${id}: ${err.message}`);
        finish();
      });
      socket.on('close', () => {
        if (!stopping && !finished) fail(`connection ${id}: closed by the milter`);
        finish();
      });
    });

  const done = Promise.all(Array.from({ length: o.connections }, (_, i) => connection(i)));
  await sleep(o.warmupS * 1000);
  const t0 = performance.now();
  mark('start');
  measuring = true;
  await sleep(o.durationS * 1000);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  mark('end');
  stopping = true;
  await done;
  // protocol: what the milter negotiated, in hex.
  return { transactions, tps: transactions / seconds, errors, errorSamples, protocol: `0x${protocol.toString(16)}`, packetsPerTransaction: shape[0]!, repliesPerTransaction: shape[1]! };
}

if (isMain(import.meta.url)) clientMain({ milter: milterLoad });
