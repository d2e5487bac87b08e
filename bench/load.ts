/*
 * The Postfix policy load of the benches: the requests smtpd sends, the closed loop that sends them
 * over persistent connections (one request in flight each: smtpd never pipelines policy requests),
 * and the fixed-answer server, the Node ceiling. As a program (bench/harness.ts runClient):
 *   node --import tsx bench/load.ts policy JSON   the load client in its own process
 *   node --import tsx bench/load.ts fixed JSON    the fixed server: action=DUNNO to everything
 * The client must spend its CPU on the wire, not on text (its requests are built before the run),
 * and never have two requests in flight on one connection.
 */
import net from 'node:net';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { createHistogram } from 'node:perf_hooks';
import { PolicyConnection } from '../src/faces/policy/connection.js';
import { loadSettings } from '../src/config/load.js';
import { ROOT, clientMain, epochMs, freePort, isMain, prng, scratch, sleep, startServer } from './harness.js';

/** Reply actions kept apart in the counts; more distinct ones go to "(other)". */
const MAX_DISTINCT_ACTIONS = 32;
const QUEUE_ID_CHARS = 'BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789';
const PLACEHOLDER = 'RCPT-PLACEHOLDER@example.com';

/**
 * Realistic Postfix 3.x RCPT requests: the 31 attributes smtpd_check.c sends, in its order.
 * Postfix opens the queue file at the first accepted RCPT, so queue_id is empty for a message's
 * first recipient; size is MAIL FROM's SIZE= or 0.
 */
export function requestPool(recipients: string[], count = 512, seed = 42): Buffer[] {
  const rnd = prng(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)]!;
  const senders = ['news@lists.example.net', 'alerts@monitoring.example.org', 'bob.smith@partner.example', '', 'bounces+abc123@mailer.example.com'];
  const clients = [['192.0.2.17', 'mx1.partner.example', 'mx1.partner.example'], ['198.51.100.42', 'unknown', 'ylmf-pc'], ['203.0.113.5', 'out.mailer.example.com', 'out.mailer.example.com'], ['2001:db8::25', 'smtp.example.org', 'smtp.example.org']];
  return Array.from({ length: count }, (_, i) => {
    const [addr, name, helo] = pick(clients);
    const rcptIndex = Math.floor(rnd() * 3);
    const queueId = rcptIndex ? Array.from({ length: 12 }, () => pick([...QUEUE_ID_CHARS])).join('') : '';
    const [size, tls] = [rnd() < 0.6 ? 0 : 100 + Math.floor(rnd() * 300), rnd() < 0.7];
    const attributes = {
      request: 'smtpd_access_policy', protocol_state: 'RCPT', protocol_name: 'ESMTP', client_address: addr, client_name: name, client_port: 1024 + Math.floor(rnd() * 60000),
      reverse_client_name: name, server_address: '192.0.2.1', server_port: 25, helo_name: helo, sender: pick(senders), recipient: pick(recipients), recipient_count: rcptIndex,
      queue_id: queueId, instance: `${(0x1000 + i).toString(16)}.${(0x65f1c0de + i).toString(16)}.${Math.floor(rnd() * 0xfffff).toString(16)}.${rcptIndex}`, size,
      etrn_domain: '', stress: '', sasl_method: '', sasl_username: '', sasl_sender: '', ccert_subject: '', ccert_issuer: '', ccert_fingerprint: '', ccert_pubkey_fingerprint: '',
      encryption_protocol: tls ? 'TLSv1.3' : '', encryption_cipher: tls ? 'TLS_AES_256_GCM_SHA384' : '', encryption_keysize: tls ? 256 : 0, policy_context: '', compatibility_level: '3.6', mail_version: '3.7.11',
    };
    return Buffer.from(`${Object.entries(attributes).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`, 'latin1');
  });
}

/** Ranks 1..n with P(k) ∝ 1/k^s, from `rnd`: inverse CDF by binary search. */
export function zipfSampler(n: number, s: number, rnd: () => number): () => number {
  const cdf = new Float64Array(n);
  for (let k = 1, sum = 0; k <= n; k++) cdf[k - 1] = sum += 1 / k ** s;
  const total = cdf[n - 1]!;
  return () => {
    const u = rnd() * total;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cdf[mid]! > u) hi = mid;
      else lo = mid + 1;
    }
    return lo + 1;
  };
}
export const mailboxName = (rank: number): string => `m${rank}`;

export interface LoopOptions {
  /** Connection i goes to port i mod the number of ports (127.0.0.1). */
  ports: number[];
  connections: number;
  /** A request unanswered this long is an error; its connection is replaced. */
  timeoutMs: number;
  /** Requests/s aimed at over all connections (each paced at rate/connections); 0: unpaced. */
  rate?: number;
  /** The next request of connection `id` (a whole request, ending in an empty line). */
  request(id: number): Buffer | string;
  /** A reply of connection `id` counted in the measured window. */
  measured?(id: number): void;
}

interface Conn {
  id: number;
  socket?: net.Socket;
  buffer: string;
  sentAt: number;
  inFlight: boolean;
  due: number;
  timer?: NodeJS.Timeout;
}

/** N persistent connections, each sending its next request when the reply to the last is in. */
export class ClosedLoop {
  /** Latency of the measured replies, µs: from writing a request to reading its whole reply. */
  readonly histogram = createHistogram();
  readonly actions = new Map<string, number>();
  readonly errorSamples: string[] = [];
  errors = 0;
  /** Replies while `measuring` (set by the caller around its window). */
  counted = 0;
  measuring = false;
  private stopping = false;
  private readonly interval: number;
  private readonly conns: Conn[];
  private watchdog?: NodeJS.Timeout;

  constructor(private readonly o: LoopOptions) {
    this.interval = o.rate ? (o.connections * 1000) / o.rate : 0;
    this.conns = Array.from({ length: o.connections }, (_, id) => ({ id, buffer: '', sentAt: 0, inFlight: false, due: 0 }));
  }

  async connect(): Promise<void> {
    await Promise.all(this.conns.map((c) => this.open(c))).catch((err: Error) => {
      this.stopping = true;
      this.conns.forEach((c) => c.socket?.destroy());
      throw new Error(`cannot connect: ${err.message}`);
    });
  }

  /** The watchdog and the first requests (staggered when paced, so they do not go in step). */
  start(): void {
    this.watchdog = setInterval(() => {
      for (const c of this.conns) if (c.inFlight && performance.now() - c.sentAt > this.o.timeoutMs) this.broken(c, `no reply within ${this.o.timeoutMs} ms`);
    }, 250);
    const t = performance.now();
    for (const c of this.conns) {
      c.due = t + (this.interval * c.id) / this.o.connections - this.interval;
      this.schedule(c);
    }
  }

  /** Sends no more; lets the requests in flight finish (uncounted), so the servers see clean EOFs. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.conns.forEach((c) => clearTimeout(c.timer));
    for (const deadline = performance.now() + this.o.timeoutMs; this.conns.some((c) => c.inFlight) && performance.now() < deadline; ) await sleep(10);
    clearInterval(this.watchdog);
    for (const c of this.conns) {
      if (c.inFlight) this.fail(`connection ${c.id}: no reply within ${this.o.timeoutMs} ms at the end of the run`);
      c.socket?.end();
      setTimeout(() => c.socket?.destroy(), 1000).unref();
    }
  }

  private fail(what: string): void {
    if (this.errors++ < 10) this.errorSamples.push(what);
  }

  private open(c: Conn): Promise<void> {
    const socket = net.connect({ host: '127.0.0.1', port: this.o.ports[c.id % this.o.ports.length]!, noDelay: true }).setEncoding('latin1');
    Object.assign(c, { socket, buffer: '', inFlight: false });
    socket.on('data', (text: string) => socket === c.socket && this.onData(c, text));
    socket.on('close', () => socket === c.socket && !this.stopping && this.broken(c, `closed by the server${c.inFlight ? ' with a request in flight' : ''}`));
    socket.on('error', (err: NodeJS.ErrnoException) => socket === c.socket && !this.stopping && this.broken(c, err.code ?? err.message));
    return new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  }

  /** Counted as an error and replaced after 50 ms. */
  private broken(c: Conn, what: string): void {
    this.fail(`connection ${c.id}: ${what}`);
    const old = c.socket;
    c.socket = undefined;
    c.inFlight = false;
    old?.destroy();
    setTimeout(() => !this.stopping && this.open(c).then(() => this.send(c), () => undefined), 50);
  }

  private schedule(c: Conn): void {
    if (!this.interval) return this.send(c);
    const now = performance.now();
    // Never more than one interval behind: a slow reply does not cause a burst afterwards.
    c.due = Math.max(c.due + this.interval, now - this.interval);
    if (c.due - now < 0.5) this.send(c);
    else c.timer = setTimeout(() => this.send(c), c.due - now);
  }

  private send(c: Conn): void {
    if (this.stopping || !c.socket) return;
    c.inFlight = true;
    c.sentAt = performance.now();
    c.socket.write(this.o.request(c.id));
  }

  private onData(c: Conn, text: string): void {
    c.buffer += text;
    for (let end = c.buffer.indexOf('\n\n'); end !== -1; end = c.buffer.indexOf('\n\n')) {
      const reply = c.buffer.slice(0, end);
      c.buffer = c.buffer.slice(end + 2);
      if (!c.inFlight || !reply.startsWith('action=')) return this.broken(c, `unexpected reply ${JSON.stringify(reply.slice(0, 80))}`);
      c.inFlight = false;
      if (this.measuring) {
        this.counted++;
        this.o.measured?.(c.id);
        this.histogram.record(Math.max(1, Math.round((performance.now() - c.sentAt) * 1000)));
        const action = reply.slice(7);
        const key = this.actions.has(action) || this.actions.size < MAX_DISTINCT_ACTIONS ? action : '(other)';
        this.actions.set(key, (this.actions.get(key) ?? 0) + 1);
      }
      this.schedule(c);
    }
  }
}

export interface PolicyLoad {
  ports: number[];
  connections: number;
  warmupS: number;
  durationS: number;
  timeoutMs: number;
  rate?: number;
  /** Recipients the requests are drawn from (a warm cache after the warm-up) ... */
  recipients?: string[];
  /** ... or Zipf (s) over m1..mN@example.com, each connection its own seeded stream: connection i asks the same mailboxes whatever the number of ports. */
  zipf?: { mailboxes: number; s: number; seed: number };
}

/** What the client reports: windowStart and windowEnd are epoch ms, so the bench can compare its own timestamps. */
export type PolicyLoadResult = Awaited<ReturnType<typeof policyLoad>>;

async function policyLoad(o: PolicyLoad, mark: (event: 'start' | 'end') => void) {
  const pool = requestPool(o.recipients ?? [PLACEHOLDER], 512, o.zipf?.seed ?? 42);
  const templates = pool.map((b) => b.toString('latin1').split(PLACEHOLDER) as [string, string]);
  const cursor = Array.from({ length: o.connections }, (_, id) => (id * 97) % pool.length);
  const draws = Array.from({ length: o.zipf ? o.connections : 0 }, (_, id) => zipfSampler(o.zipf!.mailboxes, o.zipf!.s, prng(o.zipf!.seed * 1_000_003 + id)));
  const [ranks, perPort, asked] = [new Array<number>(o.connections).fill(0), o.ports.map(() => 0), new Set<number>()];
  const loop = new ClosedLoop({
    ...o,
    request: (id) => {
      const i = cursor[id]!;
      cursor[id] = i + 1 === pool.length ? 0 : i + 1;
      if (!o.zipf) return pool[i]!;
      ranks[id] = draws[id]!();
      return `${templates[i]![0]}${mailboxName(ranks[id]!)}@example.com${templates[i]![1]}`;
    },
    measured: (id) => {
      perPort[id % o.ports.length]!++;
      asked.add(ranks[id]!);
    },
  });
  await loop.connect();
  loop.start();
  await sleep(o.warmupS * 1000);
  const windowStart = epochMs();
  mark('start');
  loop.measuring = true;
  await sleep(o.durationS * 1000);
  loop.measuring = false;
  const windowEnd = epochMs();
  mark('end');
  await loop.stop();
  const ms = (us: number) => Math.round(us) / 1000;
  const { histogram: h, counted, errors, errorSamples } = loop;
  const rps = counted / ((windowEnd - windowStart) / 1000);
  return { requests: counted, rps, p50Ms: ms(h.percentile(50)), p99Ms: ms(h.percentile(99)), maxMs: ms(h.max), errors, errorSamples, actions: Object.fromEntries(loop.actions), windowStart, windowEnd, perPort, mailboxesAsked: o.zipf ? asked.size : 0 };
}

/**
 * The fixed-answer server: node:net, reads lines until the empty one and answers action=DUNNO. It
 * parses and decides nothing: what overquota does on top (decoding, the cache lookup, the decision,
 * its log line) is what the policy bench measures against it. `workUs` (calibration) burns that
 * much CPU per request. `decoder`: overquota's own decoder and connection (src/faces/policy) read
 * the requests, each gets DUNNO undecided: what reading a request costs, apart from deciding it.
 * On SIGUSR2 it prints {"requests":N}, the requests answered so far.
 */
function fixedServer(o: { port: number; workUs: number; decoder?: boolean }): Promise<object> {
  const reply = Buffer.from('action=DUNNO\n\n', 'latin1');
  let answered = 0;
  const { policy } = loadSettings({ env: {} }); // the decoder's bounds: the frontend's defaults
  net
    .createServer({ noDelay: true }, (socket) => {
      socket.on('error', () => socket.destroy());
      const conn = o.decoder && new PolicyConnection({ maxLineLength: policy.max_line_length, maxAttributes: policy.max_attributes, maxRequestSize: policy.max_request_size }, () => (answered++, 'DUNNO'), { write: (b: Buffer) => socket.write(b), pause() {}, resume() {}, drop: () => socket.destroy(), end: () => socket.end() });
      if (conn) return void socket.on('data', (chunk: Buffer) => conn.receive(chunk));
      // What the line in progress holds (a request may end across reads): 0 nothing, 1 a lone CR, 2 more.
      let carry = 0;
      socket.on('data', (chunk: Buffer) => {
        let replies = 0;
        let start = 0;
        let state = carry;
        for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, nl + 1)) {
          const len = nl - start;
          // An empty line (LF or CR LF) ends a request.
          if (state === 0 ? len === 0 || (len === 1 && chunk[start] === 13) : state === 1 && len === 0) replies++;
          state = 0;
          start = nl + 1;
        }
        const rest = chunk.length - start;
        carry = rest === 0 ? state : state === 0 && rest === 1 && chunk[start] === 13 ? 1 : 2;
        answered += replies;
        for (const until = performance.now() + (o.workUs * replies) / 1000; o.workUs && performance.now() < until; );
        if (replies) socket.write(replies === 1 ? reply : Buffer.concat(Array<Buffer>(replies).fill(reply)));
      });
    })
    .listen(o.port, '127.0.0.1');
  process.on('SIGUSR2', () => process.stdout.write(`${JSON.stringify({ requests: answered })}\n`));
  return new Promise(() => undefined); // serves until stopped
}

/** The fixed server in its own process (the bench's CPU is not its); requests(): those answered so far. */
export async function startFixed(workUs = 0, decoder = false): Promise<{ pid: number; port: number; requests(): Promise<number> }> {
  const port = await freePort();
  const logFile = path.join(await scratch(), `fixed-${workUs}us-${port}.log`);
  const proc = await startServer(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench', 'load.ts'), 'fixed', JSON.stringify({ port, workUs, decoder })], logFile, port);
  const lines = async () => (await readFile(logFile, 'utf8')).split('\n').filter((l) => l.startsWith('{'));
  return {
    pid: proc.pid!,
    port,
    requests: async () => {
      const before = (await lines()).length;
      proc.kill('SIGUSR2');
      let now = await lines();
      for (; now.length <= before; now = await lines()) await sleep(10);
      return (JSON.parse(now.at(-1)!) as { requests: number }).requests;
    },
  };
}

if (isMain(import.meta.url)) clientMain({ policy: policyLoad, fixed: fixedServer });
