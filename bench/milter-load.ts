/*
 * Load client for bench/milter-wire.ts: N persistent milter connections speaking the protocol as
 * Postfix does, each running transactions back to back (closed loop), counting those completed
 * in the measured window. It must never send a milter what Postfix would not: it negotiates v6
 * with every action and step offered (Postfix 3.7 offers 0x1FF / 0x1FFFFF) and then follows the
 * milter's answer: a step the milter skips (SMFIP_NO*) is not sent, a reply the milter said it
 * will not give (SMFIP_NR_*) is not waited for, and with a v6 symbol list only the macros asked
 * for are sent (Postfix: "Send the macros for this event, even when we're not reporting the
 * event itself", milter8.c: macros go out for skipped steps too).
 *
 * One transaction = one message to one recipient on a kept milter connection, as Postfix sends
 * it for each message of an SMTP session: macros + MAIL, macros + RCPT, macros + DATA, one header
 * and end of header, a body (each only when the milter did not skip it), macros + end of message,
 * then ABORT (Postfix sends one after every message). Once per connection, before the
 * measurement: TCP connect, OPTNEG, macros + CONNECT, macros + HELO. (Not a whole session per
 * transaction: ending one on a kept socket takes QUIT_NC, which Postfix never sends and pymilter
 * cannot serve without a connect callback: its per-connection object is made at negotiation.)
 * Packets that need no answer go out in the same write as the next one that does.
 *
 *   node --import tsx bench/milter-load.ts --connect inet:127.0.0.1:PORT [--connections 50]
 *     [--warmup 2] [--duration 8] [--recipients 200] [--server-pid PID] [--json]
 *
 * Every recipient is expected to pass (CONTINUE); EOM may be CONTINUE or ACCEPT. Any other reply,
 * a closed connection or a transaction not finished in --timeout ms is an error (exit status 1).
 */
import net from 'node:net';
import { parseArgs } from 'node:util';
import { MilterDecoder, encodePacket } from '../src/faces/milter/codec.js';
import { Cmd, Proto, Reply, Stage } from '../src/faces/milter/constants.js';
import { parseTarget } from './closed-loop.js';
import { cpuPct, idlePct, intArg, isMain, machineJiffies, processCpuSeconds, sleep } from './shared.js';

export interface MilterLoadOptions {
  host: string;
  port: number;
  connections: number;
  warmupS: number;
  durationS: number;
  /** How many distinct recipients the transactions cycle through (user0@example.com ...). */
  recipients: number;
  timeoutMs: number;
  serverPid?: number;
}

export interface MilterLoadResult {
  connections: number;
  durationS: number;
  transactions: number;
  tps: number;
  errors: number;
  errorSamples: string[];
  /** What the milter negotiated (connection 0), in hex. */
  negotiated: { version: number; actions: string; protocol: string };
  /** Packets each transaction wrote, and how many of them waited for a reply. */
  packetsPerTransaction: number;
  repliesPerTransaction: number;
  clientCpuPct: number;
  serverCpuPct: number | null;
  machineIdlePct: number | null;
}

/** Postfix 3.7's offer: protocol 6, every action, every step. */
const OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff };

/** Postfix's default macros per stage (milter_*_macros) as a session without TLS or AUTH sends them. */
function defaultMacros(recipient: string): Record<string, [string, string][]> {
  const queueId = '4XyZ1c2Q3pz9';
  return {
    C: [['j', 'mx.example.com'], ['{daemon_name}', 'smtpd'], ['{daemon_addr}', '127.0.0.1'], ['v', 'Postfix 3.7.11'], ['_', 'client.example.org [192.0.2.10]']],
    H: [],
    M: [['i', queueId], ['{mail_addr}', 'sender@example.net'], ['{mail_host}', 'example.net'], ['{mail_mailer}', 'smtp']],
    R: [['i', queueId], ['{rcpt_addr}', recipient], ['{rcpt_host}', 'example.com'], ['{rcpt_mailer}', 'virtual']],
    T: [['i', queueId]],
    E: [['i', queueId]],
  };
}

/** Command byte of a stage -> its SMFIM_ number in a v6 symbol list. */
const SYMBOL_STAGE: Record<string, number> = { C: Stage.CONNECT, H: Stage.HELO, M: Stage.ENVFROM, R: Stage.ENVRCPT, T: Stage.DATA, E: Stage.EOM, N: Stage.EOH };

interface Negotiated {
  version: number;
  actions: number;
  protocol: number;
  /** SMFIM stage -> macro names the milter asked for. */
  symbols: Map<number, Set<string>>;
}

function parseOptneg(data: Buffer): Negotiated {
  if (data.length < 12) throw new Error(`OPTNEG reply of ${data.length} bytes`);
  const symbols = new Map<number, Set<string>>();
  let at = 12;
  while (at + 4 < data.length) {
    const stage = data.readUInt32BE(at);
    const end = data.indexOf(0, at + 4);
    const stop = end === -1 ? data.length : end;
    symbols.set(stage, new Set(data.toString('latin1', at + 4, stop).split(' ').filter(Boolean)));
    at = stop + 1;
  }
  return { version: data.readUInt32BE(0), actions: data.readUInt32BE(4), protocol: data.readUInt32BE(8), symbols };
}

const z = (...s: string[]) => Buffer.from(s.map((x) => `${x}\0`).join(''), 'latin1');

/** One step of a session: its packet, the bit that skips it, the bit that spares its reply. */
interface Step {
  command: string;
  data: Buffer;
  skip: number;
  noReply: number;
}

/** The writes of some steps: each ends with a packet that is answered. */
interface Writes {
  writes: Buffer[];
  /** Unanswered packets after the last answered one: sent in front of the next write. */
  tail: Buffer;
  packets: number;
}

function writesOf(n: Negotiated, steps: Step[], macros: Record<string, [string, string][]>, after: Buffer[] = []): Writes {
  const writes: Buffer[] = [];
  let pending: Buffer[] = [];
  let packets = after.length;
  for (const step of steps) {
    const list = macros[step.command];
    if (list) {
      const wanted = n.version >= 6 ? n.symbols.get(SYMBOL_STAGE[step.command]!) : undefined;
      const pairs = list.filter(([name]) => !wanted || wanted.has(name));
      pending.push(encodePacket(Cmd.MACRO, Buffer.concat([Buffer.from(step.command, 'latin1'), z(...pairs.flat())])));
      packets++;
    }
    if (n.protocol & step.skip) continue;
    pending.push(encodePacket(step.command, step.data));
    packets++;
    if (!(n.protocol & step.noReply)) {
      writes.push(Buffer.concat(pending));
      pending = [];
    }
  }
  return { writes, tail: Buffer.concat([...pending, ...after]), packets };
}

/** Once per connection, after OPTNEG: macros + CONNECT, macros + HELO. */
export function sessionStart(n: Negotiated): Writes {
  const port = Buffer.alloc(2);
  port.writeUInt16BE(40000, 0);
  const steps: Step[] = [
    { command: Cmd.CONNECT, data: Buffer.concat([z('client.example.org'), Buffer.from('4'), port, z('192.0.2.10')]), skip: Proto.NOCONNECT, noReply: Proto.NR_CONN },
    { command: Cmd.HELO, data: z('client.example.org'), skip: Proto.NOHELO, noReply: Proto.NR_HELO },
  ];
  return writesOf(n, steps, defaultMacros(''));
}

/** One transaction: macros + MAIL ... macros + end of message, then ABORT (Postfix sends one after each message). */
export function transaction(n: Negotiated, recipient: string): Writes {
  const steps: Step[] = [
    { command: Cmd.MAIL, data: z('<sender@example.net>', 'SIZE=1024'), skip: Proto.NOMAIL, noReply: Proto.NR_MAIL },
    { command: Cmd.RCPT, data: z(`<${recipient}>`), skip: Proto.NORCPT, noReply: Proto.NR_RCPT },
    { command: Cmd.DATA, data: Buffer.alloc(0), skip: Proto.NODATA, noReply: Proto.NR_DATA },
    { command: Cmd.HEADER, data: z('Subject', ' bench'), skip: Proto.NOHDRS, noReply: Proto.NR_HDR },
    { command: Cmd.EOH, data: Buffer.alloc(0), skip: Proto.NOEOH, noReply: Proto.NR_EOH },
    { command: Cmd.BODY, data: Buffer.from('a short body\r\n'), skip: Proto.NOBODY, noReply: Proto.NR_BODY },
    { command: Cmd.BODYEOB, data: Buffer.alloc(0), skip: 0, noReply: 0 },
  ];
  return writesOf(n, steps, defaultMacros(recipient), [encodePacket(Cmd.ABORT)]);
}

/** Replies that let a transaction go on: CONTINUE everywhere, ACCEPT also at end of message. */
function acceptable(reply: string, endOfMessage: boolean): boolean {
  return reply === Reply.CONTINUE || (endOfMessage && reply === Reply.ACCEPT);
}

export async function runMilterLoad(o: MilterLoadOptions): Promise<MilterLoadResult> {
  const offer = Buffer.alloc(12);
  offer.writeUInt32BE(OFFER.version, 0);
  offer.writeUInt32BE(OFFER.actions, 4);
  offer.writeUInt32BE(OFFER.protocol, 8);
  const offerPacket = encodePacket(Cmd.OPTNEG, offer);
  let measuring = false;
  let stopping = false;
  let transactions = 0;
  let errors = 0;
  const errorSamples: string[] = [];
  const fail = (what: string) => {
    errors++;
    if (errorSamples.length < 10) errorSamples.push(what);
  };
  let first: Negotiated | null = null;
  let perTransaction = { packets: 0, replies: 0 };

  const runConnection = (id: number) =>
    new Promise<void>((resolve) => {
      const socket = net.connect({ host: o.host, port: o.port, noDelay: true });
      const decoder = new MilterDecoder(1 << 20);
      /** Per recipient: its transaction, and its first write with the last transaction's tail in front. */
      let plan: (Writes & { afterTail: Buffer })[] = [];
      // What is being answered: the OPTNEG reply, the session start's writes, then transactions.
      let phase: 'optneg' | 'start' | 'mail' = 'optneg';
      let writes: Buffer[] = [];
      let step = 0;
      /** Unanswered packets to send in front of the next transaction: the session start's, else null (the plan's afterTail). */
      let carry: Buffer | null = null;
      let txn = id % o.recipients;
      let deadline = 0;
      const watchdog = setInterval(() => {
        if (deadline && Date.now() > deadline) {
          fail(`connection ${id}: no reply in ${o.timeoutMs} ms`);
          socket.destroy();
        }
      }, 500);
      const finish = () => {
        clearInterval(watchdog);
        socket.destroy();
        resolve();
      };
      const send = (b: Buffer) => {
        deadline = Date.now() + o.timeoutMs;
        socket.write(b);
      };
      const nextTransaction = () => {
        const t = plan[txn]!;
        txn = (txn + 1) % o.recipients;
        phase = 'mail';
        writes = t.writes;
        step = 0;
        send(carry ? Buffer.concat([carry, writes[0]!]) : t.afterTail);
        carry = null;
      };
      socket.once('connect', () => send(offerPacket));
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
            first ??= n;
            plan = Array.from({ length: o.recipients }, (_, i) => {
              const t = transaction(n, `user${i}@example.com`);
              return { ...t, afterTail: Buffer.concat([t.tail, t.writes[0]!]) };
            });
            perTransaction = { packets: plan[0]!.packets, replies: plan[0]!.writes.length };
            const start = sessionStart(n);
            carry = start.tail;
            if (start.writes.length === 0) {
              nextTransaction();
            } else {
              phase = 'start';
              writes = start.writes;
              step = 0;
              send(writes[0]!);
            }
            continue;
          }
          const last = step === writes.length - 1;
          if (!acceptable(p.command, phase === 'mail' && last)) fail(`connection ${id}: reply ${JSON.stringify(p.command + p.data.toString('latin1').replace(/\0$/, ''))} (${phase}, step ${step})`);
          if (!last) {
            send(writes[++step]!);
            continue;
          }
          if (phase === 'mail' && measuring) transactions++;
          if (stopping) {
            deadline = 0;
            socket.end(encodePacket(Cmd.QUIT));
            return finish();
          }
          nextTransaction();
        }
      });
      socket.on('error', (err) => {
        if (!stopping) fail(`connection ${id}: ${err.message}`);
        finish();
      });
      socket.on('close', () => {
        if (!stopping) fail(`connection ${id}: closed by the milter`);
        finish();
      });
    });

  const done = Promise.all(Array.from({ length: o.connections }, (_, i) => runConnection(i)));
  await sleep(o.warmupS * 1000);
  const cpu0 = process.cpuUsage();
  const server0 = o.serverPid ? processCpuSeconds(o.serverPid) : null;
  const idle0 = machineJiffies();
  const t0 = performance.now();
  measuring = true;
  await sleep(o.durationS * 1000);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = process.cpuUsage(cpu0);
  const server1 = o.serverPid ? processCpuSeconds(o.serverPid) : null;
  const idle1 = machineJiffies();
  stopping = true;
  await done;
  const n = first as Negotiated | null;
  return {
    connections: o.connections,
    durationS: Math.round(seconds * 1000) / 1000,
    transactions,
    tps: transactions / seconds,
    errors,
    errorSamples,
    negotiated: { version: n?.version ?? 0, actions: `0x${(n?.actions ?? 0).toString(16)}`, protocol: `0x${(n?.protocol ?? 0).toString(16)}` },
    packetsPerTransaction: perTransaction.packets,
    repliesPerTransaction: perTransaction.replies,
    clientCpuPct: Math.round(((cpu1.user + cpu1.system) / 1e6 / seconds) * 1000) / 10,
    serverCpuPct: cpuPct(server0, server1, seconds),
    machineIdlePct: idlePct(idle0, idle1),
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      connect: { type: 'string' },
      connections: { type: 'string', default: '50' },
      warmup: { type: 'string', default: '2' },
      duration: { type: 'string', default: '8' },
      recipients: { type: 'string', default: '200' },
      timeout: { type: 'string', default: '5000' },
      'server-pid': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (!values.connect) {
    console.error('usage: node --import tsx bench/milter-load.ts --connect inet:HOST:PORT [--connections 50] [--warmup 2] [--duration 8] [--recipients 200] [--server-pid PID] [--json]');
    return 2;
  }
  const r = await runMilterLoad({
    ...parseTarget(values.connect),
    connections: intArg('connections', values.connections, 1, 10_000),
    warmupS: intArg('warmup', values.warmup, 0, 600),
    durationS: intArg('duration', values.duration, 1, 3600),
    recipients: intArg('recipients', values.recipients, 1, 100_000),
    timeoutMs: intArg('timeout', values.timeout, 100, 600_000),
    serverPid: values['server-pid'] ? intArg('server-pid', values['server-pid'], 1, 2 ** 31) : undefined,
  });
  console.log(values.json ? JSON.stringify(r) : `${Math.round(r.tps)} transactions/s over ${r.connections} connections, ${r.errors} errors; client CPU ${r.clientCpuPct}%, milter CPU ${r.serverCpuPct ?? '?'}%; negotiated ${JSON.stringify(r.negotiated)}${r.errorSamples.length ? `\n${r.errorSamples.join('\n')}` : ''}`);
  return r.errors > 0 ? 1 : 0;
}

if (isMain(import.meta.url)) {
  main().then(
    (code) => (process.exitCode = code),
    (err: unknown) => {
      console.error(`milter-load: ${(err as Error).message}`);
      process.exitCode = 2;
    },
  );
}
