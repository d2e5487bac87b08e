/*
 * The machine-readable results of the benches, read by bench/summary.ts to print one table.
 *
 * When the environment variable OVERQUOTA_BENCH_RESULTS names a directory (scripts/bench.sh sets it
 * to bench/results, which git ignores), each bench writes DIR/NAME.json at its end (saveResults):
 * NAME is its BENCHMARKS.md section (policy, cluster, milter, rss, stores, peers, postfix, backscatter). Without
 * the variable nothing is written, so a bench run by hand for a look does not replace the last
 * run's results. A file (format 1):
 *   {
 *     "format": 1, "bench": "peers", "script": "bench/peers.ts", "command": "node --import tsx ...",
 *     "started": ISO, "finished": ISO, "loadavg": "1.02 0.80 0.61" (/proc/loadavg when it started),
 *     "code": "at commit abc1234[ with uncommitted changes in src/]", "machine": machineDescription(),
 *     "versions": { "Postfix": "3.7.11", ... }   what it ran against, as far as it knows,
 *     "figures": [ ... ]      the bench's figures; each bench's shape is one interface below,
 *     "checks": [ Check ... ] its targets: name, measured, baseline, unit, ratio, target, met,
 *     "problems": [ ... ]     what its own checks found wrong (its exit code was 1),
 *     "noise": null | "WARNING: other processes used more than 20% of a core during run(s) ..."
 *   }
 * Importing it has no side effects but noting the time and load average (when the bench started).
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { ROOT, codeVersion, isoNow, log, machineDescription, shownPath } from './shared.js';

export const RESULTS_ENV = 'OVERQUOTA_BENCH_RESULTS';
/** Where scripts/bench.sh keeps the last run's results, and where bench/summary.ts looks by default. */
export const DEFAULT_RESULTS_DIR = path.join(ROOT, 'bench', 'results');
export const RESULTS_FORMAT = 1;

/** The benches, by section name, in the order scripts/bench.sh runs them. */
export const BENCHES = ['policy', 'cluster', 'milter', 'milter-wire', 'rss', 'stores', 'peers', 'postfix', 'backscatter'] as const;
export type BenchName = (typeof BENCHES)[number];
export const SCRIPTS: Record<BenchName, string> = {
  policy: 'bench/policy.ts',
  cluster: 'bench/cluster.ts',
  milter: 'bench/milter.ts',
  rss: 'bench/rss.ts',
  stores: 'bench/stores.ts',
  peers: 'bench/peers.ts',
  postfix: 'bench/postfix-e2e.ts',
  backscatter: 'bench/backscatter.ts',
  'milter-wire': 'bench/milter-wire.ts',
};

/** One target of a bench: a ratio (measured / baseline, `ratio` compared) or a plain figure (`measured` compared). */
export interface Check {
  /** What is compared, e.g. "overquota, warm cache (log warn) / fixed server, 50 connections". */
  name: string;
  /** The configuration's own figure, in `unit`; null: not measured (so not met). */
  measured: number | null;
  /** What it is divided by, for a ratio (in `unit`); null for a plain figure. */
  baseline: number | null;
  /** Unit of measured and baseline: "req/s", "msgs/s", "ms", "MB", "%", "backend req/s". */
  unit: string;
  /** measured / baseline, or null for a plain figure. */
  ratio: number | null;
  /** The target: the ratio (unit "×") or the figure (its unit) compared with `value`. */
  target: { op: '>=' | '<='; value: number; unit: string };
  met: boolean;
}

export function ratioCheck(name: string, measured: number, baseline: number, unit: string, op: '>=' | '<=', value: number): Check {
  const ratio = baseline > 0 ? measured / baseline : 0;
  return { name, measured, baseline, unit, ratio, target: { op, value, unit: '×' }, met: compare(ratio, op, value) };
}

export function figureCheck(name: string, measured: number | null, unit: string, op: '>=' | '<=', value: number): Check {
  return { name, measured, baseline: null, unit, ratio: null, target: { op, value, unit }, met: measured !== null && compare(measured, op, value) };
}

function compare(x: number, op: '>=' | '<=', value: number): boolean {
  return op === '>=' ? x >= value : x <= value;
}

/** 0.78 → "0.78", 39.7 → "39.7" (two significant decimals below 10, one above). */
export function fmtRatio(x: number): string {
  return x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** Milliseconds with 2 decimals below 10, 1 below 100, none above. */
export function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

/** "≥ 0.8×", "≤ 2 ms" */
export function fmtTarget(c: Check): string {
  const unit = c.target.unit === '×' || c.target.unit === '%' ? c.target.unit : ` ${c.target.unit}`;
  return `${c.target.op === '>=' ? '≥' : '≤'} ${c.target.value}${unit}`;
}

export function fmtVerdict(c: Check): string {
  return c.met ? 'meets' : 'MISSES';
}

// ---------------------------------------------------------------- figures, per bench

/** policy.ts and peers.ts: one configuration at one connection count (means over its runs). */
export interface PolicyFigure {
  /** fixed, info, warn (policy.ts: also the calibration labels); peers.ts: also miss, dovecot. */
  key: string;
  label: string;
  connections: number;
  runs: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
}

/** postfix-e2e.ts and milter.ts: one configuration's smtp-source runs. */
export interface MsgsFigure {
  /** postfix-e2e.ts: none, fixed, overquota, dovecot; milter.ts: none, overquota, pymilter. */
  key: string;
  label: string;
  runs: number;
  /** Median msgs/s of the runs; min and max: their spread; each: every run, in order. */
  median: number;
  min: number;
  max: number;
  each: number[];
  sessions: number;
  messages: number;
}

/** rss.ts. MB = 10^6 bytes. */
export interface RssFigure {
  idle: number;
  busy: number;
  requests: number;
  checkpoint: number;
  served: number;
  rps: number;
  rssAtCheckpointMB: number | null;
  rssAtEndMB: number | null;
  highestRssMB: number;
  peakHwmMB: number;
  growthPct: number | null;
}

/** cluster.ts: one run. */
export interface ClusterFigure {
  frontends: number;
  redis: boolean;
  policyRps: number;
  backendRps: number;
  backendPer1000: number;
  redundant: number;
  p99Ms: number;
  errors: number;
}

/** stores.ts: one measured phase (lookups at a number in flight), or a cold scan (inFlight 1, label "cold scan N"). */
export interface StoreFigure {
  label: string;
  inFlight: number;
  lookups: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
}

/** backscatter.ts: one scenario through one configuration (definitions in its header). */
export interface BackscatterFigure {
  scenario: string;
  /** none, seed, quota-status, verify, overquota, redis. */
  config: string;
  label: string;
  rcpts: number;
  accepted: number;
  deferred: number;
  rejected: number;
  bounced: number;
  bouncesPer1000: number;
  falseDefers: number;
  /** Accepted recipients with no final status in the maillog when the bench stopped waiting. */
  unfinished: number;
  lookups: number;
  lookupsPerRcpt: number;
  p50Ms: number;
  p99Ms: number;
  /** Freed space: ms from the expunge to the first accepted RCPT; null: not within the cap. */
  freedMs?: number | null;
  redisPerRcpt?: number;
  redisCommands?: Record<string, number>;
  redisBytesPerMailbox?: number;
  redisKeys?: number;
}

export interface Results<F = unknown> {
  format: number;
  bench: BenchName;
  script: string;
  command: string;
  started: string;
  finished: string;
  loadavg: string | null;
  code: string;
  machine: string;
  versions: Record<string, string>;
  figures: F[];
  checks: Check[];
  problems: string[];
  noise: string | null;
}

/** The 1, 5 and 15 minute load averages ("0.52 0.40 0.33"), or null. */
export function loadAverage(): string | null {
  try {
    return readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ');
  } catch {
    return null;
  }
}

const started = isoNow();
const startLoad = loadAverage();

/** The directory OVERQUOTA_BENCH_RESULTS names (absolute), or null when it is not set. */
export function resultsDirFromEnv(): string | null {
  const dir = process.env[RESULTS_ENV];
  return dir ? path.resolve(dir) : null;
}

/** What a bench hands to saveResults: its command line (commandLine()), figures, checks... */
export interface ResultsOfRun<F> {
  command: string;
  figures: F[];
  checks: Check[];
  problems?: string[];
  /** The bench's noiseNote(): kept only when it warns. */
  noise?: string | null;
  versions?: Record<string, string>;
}

/** Writes DIR/BENCH.json when OVERQUOTA_BENCH_RESULTS names DIR (see the header); else nothing. */
export function saveResults<F>(bench: BenchName, r: ResultsOfRun<F>): void {
  const dir = resultsDirFromEnv();
  if (!dir) return;
  const results: Results<F> = {
    format: RESULTS_FORMAT,
    bench,
    script: SCRIPTS[bench],
    command: r.command,
    started,
    finished: isoNow(),
    loadavg: startLoad,
    code: codeVersion(),
    machine: machineDescription(),
    versions: r.versions ?? {},
    figures: r.figures,
    checks: r.checks,
    problems: r.problems ?? [],
    noise: r.noise && r.noise.startsWith('WARNING') ? r.noise : null,
  };
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${bench}.json`);
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  log(`results in ${shownPath(file)}`);
}

/** "Postfix 3.7.11" → ["Postfix", "3.7.11"]; "Python 3.11.2, pymilter 1.0.5" → two entries. */
export function versionsOf(...described: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const d of described) {
    for (const part of d.split(', ')) {
      const m = /^(\S+) (\d\S*)$/.exec(part.trim());
      if (m) out[m[1]!] = m[2]!;
    }
  }
  return out;
}
