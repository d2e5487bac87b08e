/*
 * Load generator for bench/cluster.ts: closed-loop Postfix policy load spread over several
 * policy servers, recipients drawn from a Zipf distribution over many mailboxes.
 *
 * Like bench/policy-load.ts (whose request pool it reuses): C persistent connections, each sending
 * one realistic Postfix 3.x RCPT request, waiting for the reply, then sending the next. Connection
 * i talks to target i mod N, so C connections are spread evenly over N servers and the total load
 * does not depend on N. Each connection draws its recipients from its own seeded PRNG: connection
 * i sends the same sequence of recipients whatever N is.
 *
 * Recipients are m1@example.com .. mM@example.com; mailbox k is asked with probability
 * proportional to 1/k^s (Zipf, s = --zipf).
 *
 *   node --import tsx bench/cluster-load.ts --connect inet:127.0.0.1:P1,inet:127.0.0.1:P2 \
 *     [--connections 40] [--warmup 2] [--duration 10] [--mailboxes 10000] [--zipf 1] [--seed 1] [--rate 0]
 *
 * --rate R paces the connections: each sends at most R/C requests per second (a request goes out
 * when the reply to the previous one is in and its turn has come), so the total load is R req/s
 * whatever the servers could do; still closed loop, one request in flight per connection at most.
 * 0 (the default): the next request goes out as soon as the reply is in.
 *
 * On stdout, one JSON line per event: {"event":"measure-start","at":MS} when the measured window
 * opens, {"event":"measure-end","at":MS} when it closes (MS: epoch milliseconds, fractional, from
 * performance.timeOrigin, so another process can compare its own timestamps with the window),
 * then {"event":"result",...} (ClusterLoadResult). Exit 0 without errors, 1 when a request failed,
 * 2 on a usage error or no connection.
 */
import net from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { buildRequestPool, machineJiffies, prng } from './policy-load.js';

export interface ClusterLoadResult {
  event: 'result';
  targets: string[];
  connections: number;
  /** The --rate aimed at (0: unpaced). */
  rate: number;
  warmupS: number;
  durationS: number;
  /** Epoch ms (fractional) of the measured window. */
  windowStart: number;
  windowEnd: number;
  requests: number;
  rps: number;
  /** Replies in the window per target, in --connect order. */
  perTarget: number[];
  /** Distinct mailboxes asked in the window. */
  mailboxesAsked: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
  errorSamples: string[];
  actions: Record<string, number>;
  clientCpuPct: number;
  machineIdlePct: number | null;
}

const PLACEHOLDER = 'RCPT-PLACEHOLDER@example.com';
const MAX_DISTINCT_ACTIONS = 32;

/** Ranks 1..n with P(k) ∝ 1/k^s, from a uniform [0,1) source: inverse CDF by binary search. */
export function zipfSampler(n: number, s: number, rnd: () => number): () => number {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) {
    sum += 1 / k ** s;
    cdf[k - 1] = sum;
  }
  for (let i = 0; i < n; i++) cdf[i]! /= sum;
  return () => {
    const u = rnd();
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

export function mailboxName(rank: number): string {
  return `m${rank}`;
}

function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface ClusterLoadOptions {
  targets: { host: string; port: number }[];
  connections: number;
  warmupS: number;
  durationS: number;
  mailboxes: number;
  zipf: number;
  seed: number;
  /** Total policy requests/s aimed at over all connections (each paced at rate/connections); 0: as fast as replies come. */
  rate: number;
  timeoutMs: number;
  /** Called when the measured window opens and closes. */
  onEvent?: (event: 'measure-start' | 'measure-end', at: number) => void;
}

export async function runClusterLoad(o: ClusterLoadOptions): Promise<ClusterLoadResult> {
  // The realistic requests of policy-load.ts, split around the recipient, which varies per request.
  const templates = buildRequestPool([PLACEHOLDER], 512, o.seed).map((b) => {
    const text = b.toString('latin1');
    const at = text.indexOf(PLACEHOLDER);
    return [text.slice(0, at), text.slice(at + PLACEHOLDER.length)] as const;
  });
  const histogram = createHistogram();
  const actions = new Map<string, number>();
  const errorSamples: string[] = [];
  const perTarget = new Array<number>(o.targets.length).fill(0);
  const asked = new Uint8Array(o.mailboxes + 1);
  let errors = 0;
  let measuring = false;
  let stopping = false;
  let counted = 0;

  const fail = (what: string) => {
    errors++;
    if (errorSamples.length < 10) errorSamples.push(what);
  };

  class Client {
    socket!: net.Socket;
    buffer = '';
    sentAt = 0;
    inFlight = false;
    closedByUs = false;
    next: number;
    rank = 0;
    readonly target: number;
    readonly draw: () => number;
    /** When the next request may go out (performance.now ms), with --rate. */
    due = 0;
    timer: NodeJS.Timeout | undefined;

    constructor(readonly id: number) {
      this.target = id % o.targets.length;
      this.next = (id * 97) % templates.length;
      // Its own stream: connection `id` asks the same mailboxes in the same order for every N.
      this.draw = zipfSampler(o.mailboxes, o.zipf, prng(o.seed * 1_000_003 + id));
    }

    connect(): Promise<void> {
      this.buffer = '';
      this.inFlight = false;
      this.closedByUs = false;
      const { host, port } = o.targets[this.target]!;
      const socket = net.connect({ host, port, noDelay: true });
      this.socket = socket;
      socket.setEncoding('latin1');
      socket.on('data', (text: string) => {
        if (socket === this.socket) this.onData(text);
      });
      const connected = new Promise<void>((resolve, reject) => {
        socket.once('connect', () => resolve());
        socket.once('error', reject);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (socket === this.socket && !this.closedByUs && !stopping) fail(`connection ${this.id}: ${err.code ?? err.message}`);
      });
      socket.on('close', () => {
        if (socket !== this.socket || this.closedByUs || stopping) return;
        fail(`connection ${this.id}: closed by the server${this.inFlight ? ' with a request in flight' : ''}`);
        this.replace();
      });
      return connected;
    }

    replace(): void {
      this.closedByUs = true;
      this.socket.destroy();
      if (stopping) return;
      setTimeout(() => {
        if (stopping) return;
        this.connect().then(
          () => this.send(),
          () => undefined,
        );
      }, 50);
    }

    /** The next request now, or when its turn comes with a --rate: still one in flight at most. */
    schedule(): void {
      if (interval === 0) return this.send();
      const now = performance.now();
      // Never more than one interval behind: a slow reply does not cause a burst afterwards.
      this.due = Math.max(this.due + interval, now - interval);
      const wait = this.due - now;
      if (wait < 0.5) this.send();
      else this.timer = setTimeout(() => this.send(), wait);
    }

    send(): void {
      this.timer = undefined;
      if (stopping) return;
      const [head, tail] = templates[this.next]!;
      this.next = this.next + 1 === templates.length ? 0 : this.next + 1;
      this.rank = this.draw();
      this.inFlight = true;
      this.sentAt = performance.now();
      this.socket.write(`${head}${mailboxName(this.rank)}@example.com${tail}`, 'latin1');
    }

    onData(text: string): void {
      this.buffer = this.buffer === '' ? text : this.buffer + text;
      for (let end = this.buffer.indexOf('\n\n'); end !== -1; end = this.buffer.indexOf('\n\n')) {
        const reply = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        const now = performance.now();
        if (!this.inFlight || !reply.startsWith('action=')) {
          fail(`connection ${this.id}: unexpected reply ${JSON.stringify(reply.slice(0, 80))}`);
          this.replace();
          return;
        }
        this.inFlight = false;
        if (measuring) {
          counted++;
          perTarget[this.target]!++;
          asked[this.rank] = 1;
          histogram.record(Math.max(1, Math.round((now - this.sentAt) * 1000)));
          const action = reply.slice(7);
          const seen = actions.get(action);
          if (seen !== undefined) actions.set(action, seen + 1);
          else if (actions.size < MAX_DISTINCT_ACTIONS) actions.set(action, 1);
          else actions.set('(other)', (actions.get('(other)') ?? 0) + 1);
        }
        this.schedule();
      }
    }
  }

  const interval = o.rate > 0 ? (o.connections * 1000) / o.rate : 0;
  const clients = Array.from({ length: o.connections }, (_, i) => new Client(i));
  try {
    await Promise.all(clients.map((c) => c.connect()));
  } catch (err) {
    stopping = true;
    for (const c of clients) c.socket?.destroy();
    throw new Error(`cannot connect: ${(err as Error).message}`);
  }

  const watchdog = setInterval(() => {
    const now = performance.now();
    for (const c of clients) {
      if (c.inFlight && now - c.sentAt > o.timeoutMs) {
        fail(`connection ${c.id}: no reply within ${o.timeoutMs} ms`);
        c.replace();
      }
    }
  }, 250);

  // Staggered starts, so paced connections do not send in step.
  const t = performance.now();
  for (const c of clients) {
    c.due = t + (interval * c.id) / o.connections - interval;
    c.schedule();
  }
  await sleep(o.warmupS * 1000);
  const cpu0 = process.cpuUsage();
  const m0 = machineJiffies();
  const t0 = epochMs();
  measuring = true;
  o.onEvent?.('measure-start', t0);
  await sleep(o.durationS * 1000);
  measuring = false;
  const t1 = epochMs();
  o.onEvent?.('measure-end', t1);
  const cpu1 = process.cpuUsage();
  const m1 = machineJiffies();
  stopping = true;
  for (const c of clients) clearTimeout(c.timer);

  // Let the requests in flight finish (they do not count), so the servers see clean EOFs.
  const deadline = performance.now() + o.timeoutMs;
  while (clients.some((c) => c.inFlight) && performance.now() < deadline) await sleep(10);
  clearInterval(watchdog);
  for (const c of clients) {
    if (c.inFlight) fail(`connection ${c.id}: no reply within ${o.timeoutMs} ms at the end of the run`);
    c.closedByUs = true;
    c.socket.end();
    setTimeout(() => c.socket.destroy(), 1000).unref();
  }

  const windowS = (t1 - t0) / 1000;
  const us = (v: number) => Math.round(v) / 1000;
  let mailboxesAsked = 0;
  for (const v of asked) mailboxesAsked += v;
  return {
    event: 'result',
    targets: o.targets.map((t) => `inet:${t.host}:${t.port}`),
    connections: o.connections,
    rate: o.rate,
    warmupS: o.warmupS,
    durationS: Math.round(windowS * 1000) / 1000,
    windowStart: t0,
    windowEnd: t1,
    requests: counted,
    rps: Math.round(counted / windowS),
    perTarget,
    mailboxesAsked,
    p50Ms: us(histogram.percentile(50)),
    p99Ms: us(histogram.percentile(99)),
    maxMs: us(histogram.max),
    errors,
    errorSamples,
    actions: Object.fromEntries(actions),
    clientCpuPct: Math.round(((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / 1e6 / windowS) * 1000) / 10,
    machineIdlePct: m0 && m1 ? Math.round(((m1[0] - m0[0]) / Math.max(1, m1[1] - m0[1])) * 1000) / 10 : null,
  };
}

class UsageError extends Error {}

function parseTarget(text: string): { host: string; port: number } {
  const m = /^(?:inet:)?(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw new UsageError(`--connect ${text}: expected inet:HOST:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

function num(name: string, text: string, min: number, max: number, integer = false): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
    throw new UsageError(`--${name} ${text}: expected a ${integer ? 'whole ' : ''}number from ${min} to ${max}`);
  return n;
}

async function main(): Promise<number> {
  try {
    const { values } = parseArgs({
      options: {
        connect: { type: 'string' },
        connections: { type: 'string', default: '40' },
        warmup: { type: 'string', default: '2' },
        duration: { type: 'string', default: '10' },
        mailboxes: { type: 'string', default: '10000' },
        zipf: { type: 'string', default: '1' },
        seed: { type: 'string', default: '1' },
        rate: { type: 'string', default: '0' },
        timeout: { type: 'string', default: '5000' },
        help: { type: 'boolean', default: false },
      },
    });
    if (values.help) {
      console.log('usage: cluster-load --connect inet:HOST:PORT[,inet:HOST:PORT...] [--connections 40] [--warmup 2] [--duration 10] [--mailboxes 10000] [--zipf 1] [--seed 1] [--rate REQ_PER_S] [--timeout MS]');
      return 0;
    }
    if (!values.connect) throw new UsageError('--connect inet:HOST:PORT[,...] is required');
    const targets = values.connect.split(',').filter((t) => t.trim() !== '').map(parseTarget);
    const result = await runClusterLoad({
      targets,
      connections: num('connections', values.connections, 1, 10_000, true),
      warmupS: num('warmup', values.warmup, 0, 60),
      durationS: num('duration', values.duration, 0.5, 60),
      mailboxes: num('mailboxes', values.mailboxes, 1, 10_000_000, true),
      zipf: num('zipf', values.zipf, 0, 5),
      seed: num('seed', values.seed, 0, 2 ** 31, true),
      rate: num('rate', values.rate, 0, 10_000_000),
      timeoutMs: num('timeout', values.timeout, 1, 60_000),
      onEvent: (event, at) => process.stdout.write(`${JSON.stringify({ event, at })}\n`),
    });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return result.errors > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`cluster-load: ${(err as Error).message}\n`);
    return 2;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
