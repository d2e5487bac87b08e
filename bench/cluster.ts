/*
 * Backend (source) requests per second as overquota frontends go 1 -> 2 -> 4 under the same load,
 * sharing one Redis: with the shared tier the backends should see about the same load whatever the
 * number of frontends (target: at most 1.1x the 1-frontend figure).
 *
 * One invocation starts, on loopback:
 *   - a private Redis (test/helpers/redis.ts);
 *   - an HTTP quota backend in this process (test/helpers/http-backend.ts) answering the seed CGI's
 *     text ("OK user size quota" / "OVERQUOTA ..."), after --latency-ms of artificial latency; it
 *     notes when each request arrived and was answered, and for which mailbox;
 *   - for N in --frontends (1,2,4): N `overquota frontend` processes with the same settings, all on
 *     that Redis, with short TTLs (under quota 2s, over quota 1s, memory tier 200ms) so entries keep
 *     expiring and the backend keeps being asked; Redis is flushed (FLUSHALL) before each N;
 *   - then, as a contrast, --contrast frontends (2) without Redis (each its own memory cache).
 * The load (bench/cluster-load.ts, its own process) is the same for every N: --connections (40)
 * closed-loop policy connections spread evenly over the N frontends, paced to --rate (6000)
 * requests/s in all, recipients drawn from a Zipf distribution (s = --zipf, 1.0) over --mailboxes
 * (10,000) mailboxes, 1 in 10 over quota; each connection has its own seeded PRNG, so every N sees
 * the same recipient sequences. Paced, because the backend rate follows the policy rate (colder
 * mailboxes are asked more often when more requests come in), and unpaced the policy rate depends
 * on N (one frontend is one core; four share the cores with Redis and the load generator).
 *
 *   npm run bench                 # build, then bench/policy.ts, this and bench/milter.ts, with --write
 *   node --import tsx bench/cluster.ts [--frontends 1,2,4] [--contrast 2] [--connections 40] [--rate 6000]
 *        [--warmup 2] [--duration 10] [--mailboxes 10000] [--zipf 1] [--latency-ms 2] [--retries 1]
 *        [--write] [--keep]
 *
 * Before each run it waits up to 10 s for the machine to be idle; a run during which other
 * processes used more than 20% of a core is run again (--retries), while the whole bench stays
 * under about 2 minutes.
 *
 * Reports per run: policy requests/s, backend requests/s, backend requests per 1000 policy requests,
 * the ratio backend req/s (N) / backend req/s (1 frontend), and "redundant" backend requests: a
 * mailbox asked again while its previous answer should still be cached (less than its TTL - 100 ms
 * after that answer), or while another request for it was still in flight. One frontend with Redis
 * has none; each of them is a backend request the shared tier failed to save.
 * --write puts the tables into BENCHMARKS.md between the bench:cluster markers. With
 * OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/cluster.json (bench/results.ts): every run's
 * policy and backend requests/s, and the checks "≤ 1.1× one frontend", for bench/summary.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startRedis, redisUnavailable, type RedisServer } from '../test/helpers/redis.js';
import { startBackend, cgiAnswer, type Backend } from '../test/helpers/http-backend.js';
import { mailboxName, type ClusterLoadResult } from './cluster-load.js';
import { ratioCheck, saveResults, type ClusterFigure, type ResultsOfRun } from './results.js';
import {
  CLI,
  NOISY_OTHER_CPU,
  ROOT,
  COMMON_OPTIONS,
  commandLine,
  cpuPct,
  epochMs,
  fmtInt,
  freePort,
  kernelThreadsCpuSeconds,
  intArg,
  log,
  makeTmpDir,
  nodeArgsForTs,
  noiseNote,
  numArg,
  processCpuSeconds,
  removeTmpDir,
  requireBuild,
  runBench,
  runProcess,
  stopChild,
  stopChildren,
  sectionHead,
  table,
  textFooter,
  tmp,
  track,
  viaNpm,
  waitAccepting,
  waitForQuiet,
  printReport,
} from './shared.js';

const TARGET_RATIO = 1.1;
const TTL_UNDER_MS = 2000;
const TTL_OVER_MS = 1000;
const MEMORY_TTL_MS = 200;
/** A backend request less than TTL - this after the previous answer for the mailbox is redundant. */
const REDUNDANT_SLACK_MS = 100;
/** Bytes: every mailbox has this quota; 1 in 10 uses twice that (OVERQUOTA), the others 1000. */
const QUOTA = 1_000_000;
/** A noisy run is run again only while the whole bench stays under this. */
const TIME_BUDGET_MS = 110_000;

const isOver = (rank: number) => rank % 10 === 7;

interface Config {
  frontends: number;
  redis: boolean;
}

interface Fetch {
  mailbox: string;
  start: number;
  done: number;
}

interface Run {
  config: Config;
  load: ClusterLoadResult;
  backendRequests: number;
  backendRps: number;
  redundant: number;
  /** Of the redundant ones: asked within 50 ms of the previous answer. */
  redundantRightAfter: number;
  /** Of the redundant ones: asked while another request for the mailbox was in flight. */
  redundantOverlap: number;
  redundantGapP50Ms: number | null;
  mailboxesFetched: number;
  frontendCpu: number[];
  redisCpu: number | null;
  backendCpu: number;
  kernelCpu: number | null;
  otherCpu: number | null;
}

let redis: RedisServer | null = null;
let backend: Backend | null = null;
const started = Date.now();

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      frontends: { type: 'string', default: '1,2,4' },
      contrast: { type: 'string', default: '2' },
      connections: { type: 'string', default: '40' },
      warmup: { type: 'string', default: '2' },
      duration: { type: 'string', default: '10' },
      mailboxes: { type: 'string', default: '10000' },
      zipf: { type: 'string', default: '1' },
      'latency-ms': { type: 'string', default: '2' },
      seed: { type: 'string', default: '1' },
      rate: { type: 'string', default: '6000' },
      retries: { type: 'string', default: '1' },
      ...COMMON_OPTIONS,
    },
  });
  if (values.help) {
    console.log(
      'usage: node --import tsx bench/cluster.ts [--frontends 1,2,4] [--contrast 2] [--connections 40] [--warmup 2] [--duration 10] [--mailboxes 10000] [--zipf 1] [--latency-ms 2] [--rate 6000] [--seed 1] [--retries 1] [--write] [--keep]',
    );
    return 0;
  }
  const counts = values.frontends.split(',').map((w) => intArg('frontends', w.trim(), 1, 16));
  if (counts[0] !== 1) throw new Error('--frontends must start with 1 (the ratio is against one frontend)');
  const contrast = intArg('contrast', values.contrast, 0, 16);
  const connections = intArg('connections', values.connections, 1, 1000);
  const warmup = numArg('warmup', values.warmup, 0, 30);
  const duration = numArg('duration', values.duration, 0.5, 60);
  const mailboxes = intArg('mailboxes', values.mailboxes, 1, 1_000_000);
  const zipf = numArg('zipf', values.zipf, 0, 5);
  const latencyMs = numArg('latency-ms', values['latency-ms'], 0, 1000);
  const seed = intArg('seed', values.seed, 0, 2 ** 31);
  const rate = numArg('rate', values.rate, 0, 1_000_000);
  const retries = intArg('retries', values.retries, 0, 3);
  tmp.keep = values.keep;
  const configs: Config[] = counts.map((n) => ({ frontends: n, redis: true }));
  if (contrast > 0) configs.push({ frontends: contrast, redis: false });
  const estimate = configs.length * (warmup + duration + 5);
  if (estimate > 600) throw new Error(`about ${Math.round(estimate)} s of load: lower --duration or fewer --frontends`);
  requireBuild();
  const why = redisUnavailable();
  if (why) throw new Error(why);

  const tmpDir = await makeTmpDir('overquota-bench-cluster-');
  redis = await startRedis();
  log(`redis on ${redis.url} (pid ${redis.pid}); temp dir ${tmpDir}`);

  // The backend: the seed CGI's answer after `latencyMs`; every request noted.
  const usage: Record<string, number> = {};
  for (let k = 1; k <= mailboxes; k++) usage[mailboxName(k)] = isOver(k) ? 2 * QUOTA : 1000;
  const cgi = cgiAnswer(usage, QUOTA);
  let fetches: Fetch[] = [];
  backend = await startBackend((url, req, res) => {
    const start = epochMs();
    setTimeout(() => {
      cgi(url, req, res);
      fetches.push({ mailbox: url.searchParams.get('u') ?? '', start, done: epochMs() });
    }, latencyMs);
  });
  const sourceUrl = backend.url('/quota?u={key}');
  log(`backend on ${sourceUrl}, ${latencyMs} ms per answer`);

  const runs: Run[] = [];
  for (const [i, config] of configs.entries()) {
    const label = describe(config);
    log(`[${i + 1}/${configs.length}] ${label}: ${connections} connections, ${warmup} s warm-up, ${duration} s measured`);
    let run: Run;
    for (let attempt = 0; ; attempt++) {
      if (config.redis) await redis.cli('FLUSHALL');
      const frontends = await startFrontends(config, sourceUrl, `run${i + 1}-${attempt}`);
      try {
        await waitForQuiet();
        fetches = [];
        backend.requests.length = 0;
        const measured = await runLoadProcess(frontends, { connections, warmup, duration, mailboxes, zipf, seed, rate });
        run = analyse(config, measured, fetches);
      } finally {
        await Promise.all(frontends.map((f) => stopChild(f.proc)));
      }
      log(
        `    policy ${fmtInt(run.load.rps)} req/s, backend ${fmtInt(run.backendRps)} req/s (${perThousand(run).toFixed(1)} per 1000), redundant ${pct(run.redundant, run.backendRequests)}, errors ${run.load.errors}; other CPU ${run.otherCpu ?? '?'}%`,
      );
      const noisy = (run.otherCpu ?? 0) > NOISY_OTHER_CPU;
      const room = Date.now() - started + (warmup + duration + 5) * 1000 < TIME_BUDGET_MS;
      if (!noisy || attempt >= retries || !room) break;
      log(`    noisy: other processes used ${run.otherCpu}% of a core; running it again`);
    }
    runs.push(run);
  }

  const report = buildReport({ runs, connections, warmup, duration, mailboxes, zipf, latencyMs, rate, argv: process.argv.slice(2) });
  printReport(report, values.write, 'cluster', 'Several frontends on one Redis: backend requests per second', INTRO);
  saveResults('cluster', report.results);
  const errors = runs.reduce((n, r) => n + r.load.errors, 0);
  if (errors > 0) {
    log(`${errors} request(s) failed: the figures are not trustworthy`);
    return 1;
  }
  return 0;
}

function describe(c: Config): string {
  return `${c.frontends} frontend${c.frontends > 1 ? 's' : ''}, ${c.redis ? 'shared Redis' : 'no Redis (memory only)'}`;
}

// ---------------------------------------------------------------- processes

interface Frontend {
  proc: ChildProcess;
  port: number;
  logFile: string;
}

async function startFrontends(config: Config, sourceUrl: string, tag: string): Promise<Frontend[]> {
  const list: Frontend[] = [];
  try {
    for (let i = 0; i < config.frontends; i++) {
      const port = await freePort();
      const logFile = path.join(tmp.dir!, `${tag}-frontend${i + 1}.log`);
      const out = openSync(logFile, 'w');
      const args = [
        CLI,
        'frontend',
        '--policy.listen',
        `inet:127.0.0.1:${port}`,
        '--source.type',
        'http',
        '--source.url',
        sourceUrl,
        ...(config.redis ? ['--redis.url', redis!.url] : []),
        '--cache.ttl.under_quota',
        `${TTL_UNDER_MS}ms`,
        '--cache.ttl.over_quota',
        `${TTL_OVER_MS}ms`,
        '--cache.memory_ttl',
        `${MEMORY_TTL_MS}ms`,
        '--log.level',
        'warn',
      ];
      const proc = track(spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', out, out] }));
      closeSync(out);
      list.push({ proc, port, logFile });
    }
    // The ready line is logged at info: at warn, wait until each port accepts.
    for (const f of list) await waitAccepting(f.port, f.proc, async () => (await readFile(f.logFile, 'utf8').catch(() => '')).trim() || 'no output');
  } catch (err) {
    await Promise.all(list.map((f) => stopChild(f.proc)));
    throw err;
  }
  return list;
}

/** The load generator in its own process; CPU of frontends, Redis and this process over its window. */
async function runLoadProcess(
  frontends: Frontend[],
  o: { connections: number; warmup: number; duration: number; mailboxes: number; zipf: number; seed: number; rate: number },
): Promise<{ load: ClusterLoadResult; cpu: { frontends: number[]; redis: number | null; backend: number; kernel: number | null } }> {
  const args = [
    ...nodeArgsForTs('cluster-load.ts'),
    '--connect',
    frontends.map((f) => `inet:127.0.0.1:${f.port}`).join(','),
    '--connections',
    String(o.connections),
    '--warmup',
    String(o.warmup),
    '--duration',
    String(o.duration),
    '--mailboxes',
    String(o.mailboxes),
    '--zipf',
    String(o.zipf),
    '--seed',
    String(o.seed),
    '--rate',
    String(o.rate),
  ];
  type Snap = { at: number; frontends: (number | null)[]; redis: number | null; self: NodeJS.CpuUsage; kernel: number | null };
  const snap = (): Snap => ({
    at: performance.now(),
    frontends: frontends.map((f) => processCpuSeconds(f.proc.pid!)),
    redis: redis ? processCpuSeconds(redis.pid) : null,
    self: process.cpuUsage(),
    kernel: kernelThreadsCpuSeconds(),
  });
  let first: Snap | null = null;
  let last: Snap | null = null;
  let result: ClusterLoadResult | null = null;
  let partial = '';
  const onStdout = (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      const event = JSON.parse(line) as { event: string };
      if (event.event === 'measure-start') first = snap();
      else if (event.event === 'measure-end') last = snap();
      else if (event.event === 'result') result = event as ClusterLoadResult;
    }
  };
  const { code, err } = await runProcess(process.execPath, args, { cwd: ROOT, limitMs: (o.warmup + o.duration + 20) * 1000, onStdout });
  if ((code !== 0 && code !== 1) || !result || !first || !last) throw new Error(`load generator failed (exit ${code}): ${err.trim()}`);
  for (const f of frontends) if (f.proc.exitCode !== null || f.proc.signalCode !== null) throw new Error(`frontend on port ${f.port} died during the run`);
  const a: Snap = first;
  const b: Snap = last;
  const secs = (b.at - a.at) / 1000;
  const pctOf = (x: number | null, y: number | null) => cpuPct(x, y, secs);
  return {
    load: result,
    cpu: {
      frontends: a.frontends.map((x, i) => pctOf(x, b.frontends[i] ?? null) ?? 0),
      redis: pctOf(a.redis, b.redis),
      backend: Math.round(((b.self.user + b.self.system - a.self.user - a.self.system) / 1e6 / secs) * 1000) / 10,
      kernel: pctOf(a.kernel, b.kernel),
    },
  };
}

// ---------------------------------------------------------------- analysis

function analyse(config: Config, measured: Awaited<ReturnType<typeof runLoadProcess>>, fetches: Fetch[]): Run {
  const { load, cpu } = measured;
  const inWindow = (f: Fetch) => f.start >= load.windowStart && f.start < load.windowEnd;
  // Each backend request against the previous one for the same mailbox (warm-up included).
  const sorted = [...fetches].sort((x, y) => x.start - y.start);
  const previous = new Map<string, Fetch>();
  let count = 0;
  let redundant = 0;
  let rightAfter = 0;
  let overlap = 0;
  const gaps: number[] = [];
  const fetched = new Set<string>();
  for (const f of sorted) {
    const prev = previous.get(f.mailbox);
    previous.set(f.mailbox, f);
    if (!inWindow(f)) continue;
    count++;
    fetched.add(f.mailbox);
    if (!prev) continue;
    const rank = Number(f.mailbox.slice(1));
    const ttl = isOver(rank) ? TTL_OVER_MS : TTL_UNDER_MS;
    if (f.start < prev.done) {
      redundant++;
      overlap++;
    } else if (f.start - prev.done < ttl - REDUNDANT_SLACK_MS) {
      redundant++;
      gaps.push(f.start - prev.done);
      if (f.start - prev.done < 50) rightAfter++;
    }
  }
  gaps.sort((x, y) => x - y);
  const windowS = (load.windowEnd - load.windowStart) / 1000;
  const ours = cpu.frontends.reduce((x, y) => x + y, 0) + (cpu.redis ?? 0) + cpu.backend + load.clientCpuPct + (cpu.kernel ?? 0);
  const otherCpu =
    load.machineIdlePct === null ? null : Math.round(((100 - load.machineIdlePct) * os.availableParallelism()) - ours);
  return {
    config,
    load,
    backendRequests: count,
    backendRps: Math.round(count / windowS),
    redundant,
    redundantRightAfter: rightAfter,
    redundantOverlap: overlap,
    redundantGapP50Ms: gaps.length ? Math.round(gaps[Math.floor(gaps.length / 2)]! * 10) / 10 : null,
    mailboxesFetched: fetched.size,
    frontendCpu: cpu.frontends,
    redisCpu: cpu.redis,
    backendCpu: cpu.backend,
    kernelCpu: cpu.kernel,
    otherCpu,
  };
}

// ---------------------------------------------------------------- report

const INTRO = `
**What is measured.** Backend (quota source) requests per second as the number of \`overquota
frontend\` processes sharing one Redis goes 1 → 2 → 4 under the same policy load (target: **flat, at
most 1.1× the 1-frontend figure**), and 2 frontends without Redis as a contrast: what the shared
tier saves. All in one invocation of \`bench/cluster.ts\`.

- **Load** (\`bench/cluster-load.ts\`, its own process): 40 closed-loop policy connections in all,
  spread evenly over the frontends (connection i → frontend i mod N), each sending the realistic
  Postfix RCPT requests of \`bench/policy-load.ts\` with recipients drawn from a Zipf distribution
  (s = 1.0) over 10,000 mailboxes; every connection has its own seeded PRNG, so every N sees the
  same recipient sequences. The connections are paced to 6,000 requests/s in all (a request goes
  out when the previous reply is in and its turn has come): unpaced, the policy rate differs from
  one N to the next (one frontend is one core; four share two cores with Redis and the load
  generator), and the backend rate follows the policy rate for the colder mailboxes, which would
  blur the comparison. 2 s warm-up, 10 s measured.
- **Backend**: an HTTP server in the bench process answering the seed CGI's text (\`OK user size
  quota\`; 1 mailbox in 10 \`OVERQUOTA\`) after 2 ms; it notes every request.
- **Frontends**: the built \`dist/cli.js frontend\`, \`--source.type http --cache.ttl.under_quota 2s
  --cache.ttl.over_quota 1s --cache.memory_ttl 200ms --log.level warn\`, all on one private Redis,
  flushed (\`FLUSHALL\`) before each N; fresh processes for each run. The short TTLs keep entries
  expiring, so the backend keeps being asked.
- **Redundant backend requests**: a mailbox asked again less than its TTL − 100 ms after the previous
  answer for it, or while another request for it was still in flight. One frontend with Redis makes
  none; each one is a request the shared tier should have saved.

**Reproduce.** \`npm run bench\` runs it (after \`bench/policy.ts\`) with \`--write\`, which rewrites the
section below between its markers; alone: \`node --import tsx bench/cluster.ts [--write]\` (about
60 s) after \`npm run build\`. Options: \`--frontends 1,2,4\`, \`--contrast 2\` (0: no run without
Redis), \`--connections 40\`, \`--rate 6000\` (0: unpaced), \`--mailboxes 10000\`, \`--zipf 1\`,
\`--latency-ms 2\`, \`--warmup 2\`, \`--duration 10\`, \`--keep\` (keep the frontends' logs).
`;

function perThousand(r: Run): number {
  return r.load.requests > 0 ? (r.backendRequests * 1000) / r.load.requests : 0;
}

function pct(n: number, of: number): string {
  return of > 0 ? `${((n * 100) / of).toFixed(1)}%` : '0%';
}

function buildReport(o: {
  runs: Run[];
  connections: number;
  warmup: number;
  duration: number;
  mailboxes: number;
  zipf: number;
  latencyMs: number;
  rate: number;
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<ClusterFigure> } {
  const base = o.runs.find((r) => r.config.frontends === 1 && r.config.redis)!;
  const ratio = (r: Run) => (base.backendRps > 0 ? r.backendRps / base.backendRps : 0);
  const ratioPer1000 = (r: Run) => (perThousand(base) > 0 ? perThousand(r) / perThousand(base) : 0);
  const verdict = (r: Run) => {
    if (r === base) return '1.00 (base)';
    const x = ratio(r).toFixed(2);
    if (!r.config.redis) return `${x} (contrast)`;
    return `${x} ${ratio(r) <= TARGET_RATIO ? 'meets' : 'MISSES'} ≤ ${TARGET_RATIO}`;
  };
  const head = [
    'frontends',
    'cache',
    'policy req/s',
    'backend req/s',
    'backend req per 1000 policy',
    'backend req/s vs 1 frontend',
    'per 1000 vs 1 frontend',
    'redundant backend req',
    'p99 ms',
    'errors',
  ];
  const rows = o.runs.map((r) => [
    String(r.config.frontends),
    r.config.redis ? 'shared Redis' : 'memory only',
    fmtInt(r.load.rps),
    fmtInt(r.backendRps),
    perThousand(r).toFixed(1),
    verdict(r),
    ratioPer1000(r).toFixed(2),
    `${fmtInt(r.redundant)} (${pct(r.redundant, r.backendRequests)})`,
    r.load.p99Ms.toFixed(2),
    String(r.load.errors),
  ]);
  const detailHead = [
    '#',
    'run',
    'policy req/s per frontend',
    'mailboxes asked',
    'mailboxes fetched',
    'redundant: within 50 ms / in flight / median gap ms',
    'frontend CPU',
    'Redis CPU',
    'backend CPU',
    'client CPU',
    'kernel threads',
    'machine idle',
    'other CPU',
  ];
  const windowS = (r: Run) => (r.load.windowEnd - r.load.windowStart) / 1000;
  const detailRows = o.runs.map((r, i) => [
    String(i + 1),
    describe(r.config),
    r.load.perTarget.map((n) => fmtInt(n / windowS(r))).join(' / '),
    fmtInt(r.load.mailboxesAsked),
    fmtInt(r.mailboxesFetched),
    `${fmtInt(r.redundantRightAfter)} / ${fmtInt(r.redundantOverlap)} / ${r.redundantGapP50Ms ?? '-'}`,
    r.frontendCpu.map((c) => `${Math.round(c)}%`).join(' + '),
    r.redisCpu === null ? '?' : `${Math.round(r.redisCpu)}%`,
    `${Math.round(r.backendCpu)}%`,
    `${Math.round(r.load.clientCpuPct)}%`,
    r.kernelCpu === null ? '?' : `${Math.round(r.kernelCpu)}%`,
    r.load.machineIdlePct === null ? '?' : `${r.load.machineIdlePct}%`,
    r.otherCpu === null ? '?' : `${r.otherCpu}%`,
  ]);
  const short = o.rate > 0 ? o.runs.flatMap((r, i) => (r.load.rps < o.rate * 0.97 ? [`#${i + 1} (${fmtInt(r.load.rps)})`] : [])) : [];
  const shortfall = short.length
    ? ` WARNING: run(s) ${short.join(', ')} did not reach the ${fmtInt(o.rate)} req/s aimed at: their backend figures are not comparable; lower --rate.`
    : '';
  const notes = noiseNote(o.runs.map((r) => r.otherCpu)) + shortfall;

  const shared = o.runs.filter((r) => r.config.redis && r !== base);
  const worst = shared.reduce<Run | null>((w, r) => (w === null || ratio(r) > ratio(w) ? r : w), null);
  const contrast = o.runs.find((r) => !r.config.redis);
  const sentences: string[] = [];
  if (worst) {
    const flat = shared.every((r) => ratio(r) <= TARGET_RATIO);
    sentences.push(
      flat
        ? `With the shared Redis tier the backend load stays flat: ${shared.map((r) => `${r.config.frontends} frontends ask it ${ratio(r).toFixed(2)}×`).join(', ')} as often as one frontend (target ≤ ${TARGET_RATIO}×).`
        : `With the shared Redis tier the backend load is **not flat**: ${shared.map((r) => `${r.config.frontends} frontends ask it ${ratio(r).toFixed(2)}× (${ratioPer1000(r).toFixed(2)}× per policy request)`).join(', ')} as often as one frontend, against a target of ≤ ${TARGET_RATIO}×; ${pct(worst.redundant, worst.backendRequests)} of the backend requests with ${worst.config.frontends} frontends are redundant (the mailbox's answer should still have been in Redis), none with one.`,
    );
  }
  if (contrast) {
    sentences.push(
      `Without Redis, ${contrast.config.frontends} frontends ask the backend ${ratio(contrast).toFixed(2)}× as often as one frontend with Redis (${perThousand(contrast).toFixed(1)} against ${perThousand(base).toFixed(1)} requests per 1000 policy requests; ${pct(contrast.redundant, contrast.backendRequests)} redundant): each keeps its own cache, so a mailbox asked at least once per TTL on every frontend is fetched by every frontend, while a cold one (asked less often than that) costs one request either way.`,
    );
  }
  const command = commandLine('cluster.ts', o.argv);
  const text = [
    table(head, rows, false),
    '',
    'Runs, in the order they ran:',
    table(detailHead, detailRows, false),
    '',
    notes,
    ...sentences,
    ...textFooter(),
  ].join('\n');
  const markdown = [
    ...sectionHead('cluster'),
    `Command: \`${command}\`${viaNpm()}. ${o.connections} closed-loop connections in all, spread evenly over the frontends, ${o.rate > 0 ? `paced to ${fmtInt(o.rate)} policy requests/s in all` : 'unpaced (each sends its next request as soon as the reply is in)'}; recipients Zipf (s = ${o.zipf}) over ${fmtInt(o.mailboxes)} mailboxes; backend latency ${o.latencyMs} ms; TTLs under quota ${TTL_UNDER_MS / 1000}s, over quota ${TTL_OVER_MS / 1000}s, memory tier ${MEMORY_TTL_MS} ms; ${o.warmup} s warm-up then ${o.duration} s measured per run; Redis flushed and fresh frontends before each run.`,
    '',
    table(head, rows, true),
    '',
    'Every run, in order (CPU in % of one core over the measured window; backend CPU is the bench process, which serves the backend; kernel threads: ksoftirqd, kworker (network work charged to no process); machine idle in % of all cores; other = busy cores minus everything listed, i.e. other processes; a few % below zero is accounting slack: process times are exact, the busy time of the machine is sampled at clock ticks):',
    '',
    table(detailHead, detailRows, true),
    '',
    notes,
    '',
    sentences.join(' '),
    '<!-- bench:cluster:end -->',
  ].join('\n');
  const results: ResultsOfRun<ClusterFigure> = {
    command,
    figures: o.runs.map((r) => ({
      frontends: r.config.frontends,
      redis: r.config.redis,
      policyRps: Math.round(r.load.rps),
      backendRps: Math.round(r.backendRps),
      backendPer1000: Math.round(perThousand(r) * 10) / 10,
      redundant: r.redundant,
      p99Ms: r.load.p99Ms,
      errors: r.load.errors,
    })),
    checks: shared.map((r) => ratioCheck(`backend req/s with ${r.config.frontends} frontends on one Redis / with 1`, r.backendRps, base.backendRps, 'backend req/s', '<=', TARGET_RATIO)),
    problems: [...(short.length ? [`run(s) ${short.join(', ')} did not reach the ${fmtInt(o.rate)} req/s aimed at`] : []), ...(o.runs.some((r) => r.load.errors > 0) ? ['failed policy requests'] : [])],
    noise: notes,
  };
  return { text, markdown, results };
}

// ---------------------------------------------------------------- cleanup

async function cleanup(): Promise<void> {
  await stopChildren();
  await backend?.close().catch(() => undefined);
  backend = null;
  await redis?.stop().catch(() => undefined);
  redis = null;
  await removeTmpDir();
}

runBench(main, cleanup);
