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
import { parseArgs } from 'node:util';
import { ClosedLoop, parseTarget } from './closed-loop.js';
import { buildRequestPool } from './policy-load.js';
import { epochMs, idlePct, intArg, isMain, machineJiffies, numArg, prng, sleep } from './shared.js';

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
  const perTarget = new Array<number>(o.targets.length).fill(0);
  const asked = new Uint8Array(o.mailboxes + 1);
  const loop = new ClosedLoop({
    connections: o.connections,
    timeoutMs: o.timeoutMs,
    rate: o.rate,
    connection: (id) => {
      const target = id % o.targets.length;
      let next = (id * 97) % templates.length;
      let rank = 0;
      // Its own stream: connection `id` asks the same mailboxes in the same order for every N.
      const draw = zipfSampler(o.mailboxes, o.zipf, prng(o.seed * 1_000_003 + id));
      return {
        ...o.targets[target]!,
        request: () => {
          const [head, tail] = templates[next]!;
          next = next + 1 === templates.length ? 0 : next + 1;
          rank = draw();
          return `${head}${mailboxName(rank)}@example.com${tail}`;
        },
        measured: () => {
          perTarget[target]!++;
          asked[rank] = 1;
        },
      };
    },
  });
  try {
    await loop.connect();
  } catch (err) {
    throw new Error(`cannot connect: ${(err as Error).message}`);
  }

  loop.start();
  await sleep(o.warmupS * 1000);
  const cpu0 = process.cpuUsage();
  const m0 = machineJiffies();
  const t0 = epochMs();
  loop.measuring = true;
  o.onEvent?.('measure-start', t0);
  await sleep(o.durationS * 1000);
  loop.measuring = false;
  const t1 = epochMs();
  o.onEvent?.('measure-end', t1);
  const cpu1 = process.cpuUsage();
  const m1 = machineJiffies();
  await loop.stop();

  const windowS = (t1 - t0) / 1000;
  const us = (v: number) => Math.round(v) / 1000;
  const { histogram } = loop;
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
    requests: loop.counted,
    rps: Math.round(loop.counted / windowS),
    perTarget,
    mailboxesAsked,
    p50Ms: us(histogram.percentile(50)),
    p99Ms: us(histogram.percentile(99)),
    maxMs: us(histogram.max),
    errors: loop.errors,
    errorSamples: loop.errorSamples,
    actions: Object.fromEntries(loop.actions),
    clientCpuPct: Math.round(((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / 1e6 / windowS) * 1000) / 10,
    machineIdlePct: idlePct(m0, m1),
  };
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
    if (!values.connect) throw new Error('--connect inet:HOST:PORT[,...] is required');
    const targets = values.connect.split(',').filter((t) => t.trim() !== '').map(parseTarget);
    const result = await runClusterLoad({
      targets,
      connections: intArg('connections', values.connections, 1, 10_000),
      warmupS: numArg('warmup', values.warmup, 0, 60),
      durationS: numArg('duration', values.duration, 0.5, 60),
      mailboxes: intArg('mailboxes', values.mailboxes, 1, 10_000_000),
      zipf: numArg('zipf', values.zipf, 0, 5),
      seed: intArg('seed', values.seed, 0, 2 ** 31),
      rate: numArg('rate', values.rate, 0, 10_000_000),
      timeoutMs: numArg('timeout', values.timeout, 1, 60_000),
      onEvent: (event, at) => process.stdout.write(`${JSON.stringify({ event, at })}\n`),
    });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return result.errors > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`cluster-load: ${(err as Error).message}\n`);
    return 2;
  }
}

if (isMain(import.meta.url)) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
