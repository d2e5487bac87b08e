/*
 * The benches' one harness, shared by every scenario file (policy, cluster, postfix, milter-wire,
 * rss, stores, backscatter): child processes, the temporary directory, free ports, the wait for a
 * quiet machine, CPU accounting from /proc, interleaved rounds with noisy runs run again, medians,
 * target checks, and the report: printed, written into BENCHMARKS.md between the bench's markers
 * (--write) and kept as JSON for bench/summary.ts (when OVERQUOTA_BENCH_RESULTS names a directory).
 * It must never leave a process or a temporary directory behind (--keep keeps the directory) and
 * never touch BENCHMARKS.md without --write. Importing it has no side effects.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { FLUSH_AFTER_MS } from '../src/runtime/log.js';
import { freePort } from '../test/helpers/ports.js';

export { freePort };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'dist', 'cli.js');
export const BENCHMARKS_MD = path.join(ROOT, 'BENCHMARKS.md');
export const RESULTS_ENV = 'OVERQUOTA_BENCH_RESULTS';
export const RESULTS_FORMAT = 2;
/** Longest wait for a quiet machine (90% idle over one second) before a run. */
const QUIET_WAIT_MS = 10_000;
/** More CPU than this (% of one core) used by other processes during a run makes it noisy. */
const NOISY_OTHER_CPU = 20;
const USER_HZ = 100;

export const log = (text: string): void => void process.stderr.write(`bench: ${text}\n`);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Epoch ms from performance.timeOrigin: comparable across processes. */
export const epochMs = (): number => performance.timeOrigin + performance.now();
export const isoNow = (): string => new Date().toISOString().replace(/\.\d+Z$/, 'Z');
export const isMain = (url: string): boolean => Boolean(process.argv[1]) && url === pathToFileURL(process.argv[1]!).href;

/** A small seeded PRNG (mulberry32): every run sends the same requests and writes the same data. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------- processes, files, ports
const [children, cleanups] = [new Set<ChildProcess>(), [] as (() => unknown)[]];
let [scratchDir, keepScratch] = [null as Promise<string> | null, false];

/** Runs `fn` when the bench ends or is interrupted (the last registered first). */
export const onCleanup = (fn: () => unknown): void => void cleanups.push(fn);

async function cleanUp(): Promise<void> {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch((err: Error) => log(`cleanup: ${err.message}`));
  await Promise.all([...children].map(stopChild));
  const dir = await scratchDir;
  if (dir && keepScratch) log(`kept ${dir}`);
  else if (dir) rmSync(dir, { recursive: true, force: true });
  scratchDir = null;
}

export function spawnTracked(command: string, args: string[], o: SpawnOptions = {}): ChildProcess {
  const proc = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], ...o });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

export async function stopChild(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited.finally(() => clearTimeout(timer));
}

/** `command args` to its end (SIGKILL after limitMs): exit code and output; `onLine` sees each stdout line as it comes. */
export async function runProcess(command: string, args: string[], o: { limitMs: number; onLine?: (line: string, proc: ChildProcess) => void }): Promise<{ code: number | null; out: string; err: string }> {
  const proc = spawnTracked(command, args);
  let [out, err, partial] = ['', '', ''];
  proc.stdout!.setEncoding('utf8').on('data', (t: string) => {
    out += t;
    const lines = (partial + t).split('\n');
    partial = lines.pop()!;
    for (const line of lines) o.onLine?.(line, proc);
  });
  proc.stderr!.setEncoding('utf8').on('data', (t: string) => (err += t));
  const timer = setTimeout(() => proc.kill('SIGKILL'), o.limitMs);
  const code = await new Promise<number | null>((r) => proc.once('close', r)).finally(() => clearTimeout(timer)); // 'close': after its output
  return { code, out, err };
}

/** The bench's temporary directory, made at first use; removed at the end unless --keep. */
export const scratch = (): Promise<string> => (scratchDir ??= mkdtemp(path.join(os.tmpdir(), 'overquota-bench-')));

const accepts = (port: number) => new Promise<boolean>((resolve) => {
  const probe = net.connect({ host: '127.0.0.1', port }).once('error', () => resolve(false));
  probe.once('connect', () => (probe.end(), resolve(true)));
});

/** `command args` with stdout and stderr to `logFile`; resolves once 127.0.0.1:port accepts. */
export async function startServer(command: string, args: string[], logFile: string, port: number): Promise<ChildProcess> {
  const fd = openSync(logFile, 'w');
  const proc = spawnTracked(command, args, { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  for (const deadline = Date.now() + 15_000; !(await accepts(port)); await sleep(50)) {
    if (proc.exitCode !== null || proc.signalCode !== null || Date.now() > deadline) {
      throw new Error(`${path.basename(logFile, '.log')} not listening on 127.0.0.1:${port}: ${(await readFile(logFile, 'utf8').catch(() => '')).trim() || 'no output'}`);
    }
  }
  return proc;
}

/**
 * `overquota ARGS(port)` (the built dist/cli.js) on a free port, its log in the temporary directory
 * as NAME-PORT.log. A frontend's admin listener (on by default, at a standard port) gets a free port too.
 */
export async function startOverquota(name: string, args: (port: number) => string[], o: { nodeFlags?: string[]; pin?: string } = {}) {
  const [port, dir] = [await freePort(), await scratch()];
  const logFile = path.join(dir, `${name}-${port}.log`);
  const admin = args(port)[0] === 'frontend' && !args(port).includes('--admin.listen') ? ['--admin.listen', `127.0.0.1:${await freePort()}`] : [];
  const command = [process.execPath, ...(o.nodeFlags ?? []), CLI, ...args(port), ...admin];
  const proc = await startServer(o.pin ? 'taskset' : command[0]!, o.pin ? ['-c', o.pin, ...command] : command.slice(1), logFile, port);
  // logFile: its stdout, the JSON log, decision lines included (writing them is part of the cost).
  return { proc, pid: proc.pid!, port, logFile };
}

export function requireBuild(...unavailable: (string | false | null | undefined)[]): void {
  if (!existsSync(CLI)) throw new Error('dist/cli.js is missing: run "npm run build" first (or "npm run bench")');
  const why = unavailable.find(Boolean);
  if (why) throw new Error(why);
}

/** Installs a Debian package with apt-get (we are root in this harness's setting) unless `present()`. */
export async function ensureDebianPackage(name: string, present: () => boolean | Promise<boolean>): Promise<void> {
  if (await present()) return;
  log(`${name} is missing: apt-get install -y ${name}`);
  const install = () => runProcess('apt-get', ['install', '-y', '-q', name], { limitMs: 300_000 });
  let r = await install();
  if (r.code !== 0) r = await runProcess('apt-get', ['update', '-q'], { limitMs: 300_000 }).then(install);
  if (r.code !== 0 || !(await present())) throw new Error(`this bench needs the Debian package ${name}; installing it failed: ${(r.err || r.out).trim().split('\n').slice(-2).join(' / ')}`);
}

/** Lines of `file` holding every one of `needles` (log batches land at most FLUSH_AFTER_MS late); read as bytes: a miss run's log outgrows V8's longest string (~512 MB). */
export async function countLines(file: string, needles: string[]): Promise<number> {
  await sleep(2 * FLUSH_AFTER_MS + 20);
  const text = await readFile(file);
  let n = 0;
  for (let at = text.indexOf(needles[0]!), end = 0; at !== -1; at = text.indexOf(needles[0]!, end)) {
    end = text.indexOf(10, at) + 1 || text.length;
    if (needles.every((x) => text.subarray(text.lastIndexOf(10, at) + 1, end).includes(x))) n++;
  }
  return n;
}

/** "Postfix 3.7.11" from `cmd args` matched by `re`, or "NAME (version unknown)". */
export function versionOf(name: string, cmd: string, args: string[], re = /(\S+)/): string {
  try {
    return `${name} ${re.exec(execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))?.[1] ?? '?'}`;
  } catch {
    return `${name} (version unknown)`;
  }
}

// ---------------------------------------------------------------- CPU from /proc (Linux)
/** Every process's /proc/PID/stat fields after the ")": ppid(1) ... utime(11) stime(12) cutime(13) cstime(14). */
function procStats(): { pid: number; f: string[] }[] {
  return readdirSync('/proc').flatMap((e) => {
    try {
      const s = /^\d+$/.test(e) ? readFileSync(`/proc/${e}/stat`, 'latin1') : '';
      return s ? [{ pid: Number(e), f: s.slice(s.lastIndexOf(')') + 2).split(' ') }] : [];
    } catch {
      return []; // gone meanwhile
    }
  });
}

/**
 * CPU seconds of `root`, its live descendants and what it reaped: a Dovecot or Postfix master with
 * its children, a frontend. treeCpu(2) is the kernel's own threads (kthreadd's: ksoftirqd,
 * kworker, jbd2), busy with network and disk work charged to no process. Null when it is gone.
 */
export function treeCpu(root: number): number | null {
  const stats = procStats();
  const kids = new Map<number, typeof stats>();
  for (const s of stats) kids.set(Number(s.f[1]), [...(kids.get(Number(s.f[1])) ?? []), s]);
  const top = stats.find((s) => s.pid === root);
  if (!top) return null;
  let ticks = Number(top.f[13]) + Number(top.f[14]);
  for (const todo = [top]; todo.length; ) {
    const s = todo.pop()!;
    ticks += Number(s.f[11]) + Number(s.f[12]);
    todo.push(...(kids.get(s.pid) ?? []));
  }
  return ticks / USER_HZ;
}

/** CPU seconds of this process's reaped children (e.g. smtp-source once it has exited). */
export const reapedCpu = (): number => {
  const f = readFileSync('/proc/self/stat', 'latin1').split(') ')[1]!.split(' ');
  return (Number(f[13]) + Number(f[14])) / USER_HZ;
};
export const selfCpu = (): number => (process.cpuUsage().user + process.cpuUsage().system) / 1e6;

/** [idle + iowait, iowait, total] jiffies of the machine. */
function jiffies(): number[] {
  const n = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  return [n[3]! + n[4]!, n[4]!, n.reduce((a, b) => a + b, 0)];
}

/** Named CPU readings (seconds): a server's treeCpu, the bench's own, ... */
export type Meters = Record<string, () => number | null>;
export interface Sample {
  at: number;
  cpu: Record<string, number | null>;
  jiffies: number[];
}
/** What happened between two samples: each meter in % of one core, the machine idle (and iowait) in % of all cores, other = busy cores minus every meter. */
export interface Usage {
  seconds: number;
  cpu: Record<string, number | null>;
  idle: number;
  iowait: number;
  other: number;
}

export const sample = (meters: Meters): Sample => ({ at: performance.now(), cpu: Object.fromEntries(Object.entries(meters).map(([k, m]) => [k, m()])), jiffies: jiffies() });

export function usage(a: Sample, b: Sample): Usage {
  const seconds = (b.at - a.at) / 1000;
  const cpu = Object.fromEntries(Object.keys(a.cpu).map((k) => [k, a.cpu[k] == null || b.cpu[k] == null ? null : round1(((b.cpu[k]! - a.cpu[k]!) / seconds) * 100)]));
  const [idle, iowait] = [0, 1].map((i) => round1(((b.jiffies[i]! - a.jiffies[i]!) / Math.max(1, b.jiffies[2]! - a.jiffies[2]!)) * 100));
  const ours = Object.values(cpu).reduce((s: number, c) => s + (c ?? 0), 0);
  return { seconds, cpu, idle: idle!, iowait: iowait!, other: Math.round((100 - idle!) * os.availableParallelism() - ours) };
}

/** Waits until the machine is 90% idle over one second, at most `maxMs`. */
export async function waitForQuiet(maxMs = QUIET_WAIT_MS): Promise<void> {
  for (const deadline = Date.now() + maxMs; ; ) {
    const a = sample({});
    await sleep(1000);
    const idle = usage(a, sample({})).idle;
    if (idle >= 90) return;
    if (Date.now() >= deadline) return log(`    the machine is busy (${Math.round(100 - idle)}% of all cores): running anyway`);
  }
}

// ---------------------------------------------------------------- rounds, statistics, formats
/** Every key once per round, in order in the 1st, 3rd ... round and reversed in the others: drift of the machine falls on every key alike. */
export const interleaved = <K>(keys: readonly K[], rounds: number): { key: K; round: number }[] =>
  Array.from({ length: rounds }, (_, round) => (round % 2 ? [...keys].reverse() : keys).map((key) => ({ key, round }))).flat();

/**
 * Runs `measure` for each step after waiting for a quiet machine (at most `quietBudgetMs` of
 * waiting in all), again (up to `retries` times, while under `retryWithinMs` since the start) when
 * other processes used more than NOISY_OTHER_CPU of a core meanwhile.
 */
export async function measureRounds<S, R extends { other: number | null }>(steps: S[], describe: (s: S) => string, measure: (s: S) => Promise<R>, o: { retries?: number; retryWithinMs?: number; quietBudgetMs?: number } = {}): Promise<R[]> {
  const [started, runs] = [Date.now(), [] as R[]];
  let quietLeft = o.quietBudgetMs ?? Infinity;
  for (const [i, step] of steps.entries()) {
    for (let attempt = 0; ; attempt++) {
      const t = Date.now();
      await waitForQuiet(Math.max(1000, Math.min(QUIET_WAIT_MS, quietLeft)));
      quietLeft -= Math.max(0, Date.now() - t - 1000);
      log(`[${i + 1}/${steps.length}] ${describe(step)}${attempt ? ' (again: noisy)' : ''}`);
      const run = await measure(step);
      const again = (run.other ?? 0) > NOISY_OTHER_CPU && attempt < (o.retries ?? 0) && Date.now() - started < (o.retryWithinMs ?? Infinity);
      if (again) continue;
      runs.push(run);
      break;
    }
  }
  return runs;
}

export function median(xs: number[]): number {
  const [s, mid] = [[...xs].sort((a, b) => a - b), xs.length >> 1];
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
/** Median, min and max of readings; null when one is missing. */
export function spread(xs: (number | null)[]): { median: number; min: number; max: number } | null {
  if (xs.length === 0 || xs.some((x) => x === null)) return null;
  return { median: median(xs as number[]), min: Math.min(...(xs as number[])), max: Math.max(...(xs as number[])) };
}
const round1 = (x: number) => Math.round(x * 10) / 10;
export const fmtInt = (n: number): string => Math.round(n).toLocaleString('en-US');
/** ms with 2 decimals below 10, 1 below 100, none above. */
export const fmtMs = (ms: number): string => (!Number.isFinite(ms) ? '-' : ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
export const fmtRatio = (x: number): string => (x >= 10 ? x.toFixed(1) : x.toFixed(2));
export const pct = (x: number | null | undefined): string => (x == null ? '?' : `${Math.round(x)}%`);
export const fmtSpread = (s: { min: number; max: number } | null): string => (s ? `${fmtInt(s.min)}–${fmtInt(s.max)}` : '-');

export function table(head: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const numeric = (i: number) => cells.every((r) => /^[\d,.%?×x –+-]+$/.test(r[i] ?? ''));
  return [head, head.map((_, i) => (numeric(i) ? '---:' : '---')), ...cells].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

// ---------------------------------------------------------------- targets
/** One target: a ratio (measured / baseline) or a plain figure, compared with `target`. */
export interface Check {
  name: string;
  /** null: not measured (so not met). */
  measured: number | null;
  baseline: number | null;
  unit: string;
  ratio: number | null;
  target: { op: '>=' | '<='; value: number; unit: string };
  met: boolean;
}
const holds = (x: number, op: '>=' | '<=', v: number) => (op === '>=' ? x >= v : x <= v);

export function ratioCheck(name: string, measured: number, baseline: number, unit: string, op: '>=' | '<=', value: number): Check {
  const ratio = baseline > 0 ? measured / baseline : 0;
  return { name, measured, baseline, unit, ratio, target: { op, value, unit: '×' }, met: holds(ratio, op, value) };
}
export function figureCheck(name: string, measured: number | null, unit: string, op: '>=' | '<=', value: number): Check {
  return { name, measured, baseline: null, unit, ratio: null, target: { op, value, unit }, met: measured !== null && holds(measured, op, value) };
}
export const fmtTarget = (c: Check): string => `${c.target.op === '>=' ? '≥' : '≤'} ${c.target.value}${/^[×%]$/.test(c.target.unit) ? '' : ' '}${c.target.unit}`;
export function fmtMeasured(c: Check): string {
  const fig = (x: number | null) => (x === null ? 'not measured' : c.unit === 'ms' ? `${fmtMs(x)} ms` : c.unit === '%' ? `${x >= 0 ? '+' : ''}${x.toFixed(1)}%` : c.unit === 'MB' ? `${x.toFixed(1)} MB` : `${fmtInt(x)} ${c.unit}`);
  return c.ratio === null ? fig(c.measured) : `${fmtRatio(c.ratio)}× (${fmtInt(c.measured ?? 0)} / ${fig(c.baseline)})`;
}
export const checkRow = (c: Check): string[] => [c.name, fmtMeasured(c), fmtTarget(c), c.met ? 'meets' : 'MISSES'];

// ---------------------------------------------------------------- the run and its report
/** A row of the summary table (bench/summary.ts): a configuration's headline figure. */
export interface Headline {
  item: string;
  config: string;
  runs: number;
  figure: number;
  unit: string;
  spread?: { min: number; max: number } | null;
  p50?: number;
  p99?: number;
  ratios?: string;
}

export interface Report {
  /** After "Command: `...`.": what ran, in one paragraph. */
  setup: string;
  tables: { title?: string; head: string[]; rows: (string | number)[][] }[];
  checks: Check[];
  headline?: Headline[];
  notes?: string[];
  problems?: string[];
  /** "Other CPU" of every run, for the noise note. */
  otherCpu?: (number | null)[];
  versions?: string[];
  /** More figures for the results file. */
  figures?: unknown[];
}

export function codeVersion(): string {
  try {
    const git = (...a: string[]) => execFileSync('git', a, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return `at commit ${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain', '--', 'src') ? ' with uncommitted changes in src/' : ''}`;
  } catch {
    return '(commit unknown)';
  }
}
export const cpuModel = (): string => /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown CPU';
export const machineDescription = (): string => `${os.availableParallelism()} CPU (nproc), ${cpuModel()}, Node ${process.version}, ${os.type()} ${os.release()}`;
export const loadAverage = (): string | null => (existsSync('/proc/loadavg') ? readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ') : null);

type Defaults = Record<string, string | number | boolean>;
export type Options<D extends Defaults> = { [K in keyof D]: D[K] extends number ? number : D[K] extends boolean ? boolean : string } & { write: boolean; keep: boolean };

/**
 * Runs a scenario: its options from the command line (`--name value`; numbers checked), then
 * `main`; prints its report, with --write puts it into BENCHMARKS.md between the bench:NAME
 * markers, keeps its results for bench/summary.ts. Exit 1 when it failed or found problems.
 */
export function bench<D extends Defaults>(name: string, defaults: D, main: (o: Options<D>) => Promise<Report>): void {
  const started = isoNow();
  const startLoad = loadAverage();
  const argv = process.argv.slice(2);
  const options = Object.fromEntries(Object.entries({ ...defaults, write: false, keep: false, help: false }).map(([k, v]) => [k, { type: typeof v === 'boolean' ? 'boolean' : 'string' }]));
  const run = async (): Promise<number> => {
    const { values } = parseArgs({ args: argv, options: options as Record<string, { type: 'string' | 'boolean' }> });
    if (values.help) {
      console.log(`usage: node --import tsx bench/${name}.ts ${Object.entries(defaults).map(([k, v]) => `[--${k}${typeof v === 'boolean' ? '' : ` ${v === '' ? '""' : v}`}]`).join(' ')} [--write] [--keep]`);
      return 0;
    }
    const o: Record<string, unknown> = { ...defaults, ...values };
    for (const [k, v] of Object.entries(defaults)) {
      if (typeof v === 'number' && !(Number(o[k]) >= 0)) throw new Error(`--${k} ${String(o[k])}: expected a number`);
      if (typeof v === 'number') o[k] = Number(o[k]);
    }
    keepScratch = Boolean(o.keep);
    const r = await main(o as Options<D>);
    const command = `node --import tsx bench/${name}.ts ${argv.map((a) => (/\s/.test(a) ? `'${a}'` : a)).join(' ')}`.trim();
    const markdown = render(name, command, r);
    console.log(`\n${markdown}`);
    if (o.write) writeSection(name, markdown);
    const problems = r.problems ?? [];
    const dir = process.env[RESULTS_ENV];
    if (dir) {
      mkdirSync(dir, { recursive: true });
      const versions: Record<string, string> = {};
      for (const m of (r.versions ?? []).flatMap((v) => v.split(', ')).map((v) => /^(\S+) (\d\S*)$/.exec(v))) if (m) versions[m[1]!] = m[2]!;
      const results = { format: RESULTS_FORMAT, bench: name, command, started, finished: isoNow(), loadavg: startLoad, code: codeVersion(), machine: machineDescription(), versions, headline: r.headline ?? [], checks: r.checks, problems, noise: noisy(r.otherCpu), figures: r.figures ?? [] };
      writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(results, null, 2)}\n`);
    }
    for (const p of problems) log(`problem: ${p}`);
    return problems.length ? 1 : 0;
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void cleanUp().finally(() => process.exit(130)));
  process.once('exit', () => children.forEach((p) => p.kill('SIGKILL')));
  run()
    .catch((err: NodeJS.ErrnoException) => (log(`failed: ${err.code?.startsWith('ERR_PARSE_ARGS') ? err.message : (err.stack ?? err.message)}`), 1))
    .then(async (code) => {
      await cleanUp();
      process.exitCode = code;
    });
}

/** Puts `markdown` (with its markers) in the place of BENCHMARKS.md's bench:NAME section. */
export function writeSection(name: string, markdown: string): void {
  const text = readFileSync(BENCHMARKS_MD, 'utf8');
  const [start, end] = [`<!-- bench:${name}:start -->`, `<!-- bench:${name}:end -->`];
  if (text.indexOf(start) === -1 || text.indexOf(end) < text.indexOf(start)) throw new Error(`BENCHMARKS.md has no bench:${name} markers: add them where the section belongs`);
  writeFileSync(BENCHMARKS_MD, text.slice(0, text.indexOf(start)) + markdown + text.slice(text.indexOf(end) + end.length));
  log(`BENCHMARKS.md updated (${name})`);
}

/** The warning when other processes took more than NOISY_OTHER_CPU of a core during a run, else null. */
function noisy(otherCpu: (number | null)[] | undefined): string | null {
  const runs = (otherCpu ?? []).flatMap((c, i) => ((c ?? 0) > NOISY_OTHER_CPU ? [`#${i + 1}`] : []));
  return runs.length ? `WARNING: other processes used more than ${NOISY_OTHER_CPU}% of a core during run(s) ${runs.join(', ')}: the figures are noisy; run again on a quiet machine.` : null;
}

function render(name: string, command: string, r: Report): string {
  const via = process.env.npm_lifecycle_event === 'bench' ? ' (run by `npm run bench`, which builds first)' : '';
  const noise = r.otherCpu ? (noisy(r.otherCpu) ?? `No other process used more than ${NOISY_OTHER_CPU}% of a core during any run.`) : null;
  const blocks = [
    `Last run: ${[isoNow(), `overquota ${codeVersion()}`, ...(r.versions ?? []), machineDescription()].join(', ')}.`,
    `Command: \`${command}\`${via}. ${r.setup}`,
    ...r.tables.flatMap((t) => [...(t.title ? [t.title] : []), table(t.head, t.rows)]),
    ...(r.checks.length ? ['Targets:', table(['target', 'measured', 'target', 'verdict'], r.checks.map(checkRow))] : []),
    [noise, ...(r.notes ?? []), ...(r.problems?.length ? [`PROBLEMS: ${r.problems.join('; ')}.`] : [])].filter(Boolean).join(' '),
  ];
  return [`<!-- bench:${name}:start -->`, blocks.filter(Boolean).join('\n\n'), `<!-- bench:${name}:end -->`].join('\n');
}

/** A load client's side (bench/load.ts, bench/milter-load.ts): `node ... MODE JSON`; marks and its result as JSON lines on stdout. */
export function clientMain(modes: Record<string, (o: never, mark: (event: 'start' | 'end') => void) => Promise<object>>): void {
  const run = modes[process.argv[2] ?? ''];
  if (!run) throw new Error(`usage: ${process.argv[1]} ${Object.keys(modes).join('|')} JSON`);
  const mark = (event: string) => process.stdout.write(`${JSON.stringify({ event, at: epochMs() })}\n`);
  run(JSON.parse(process.argv[3] ?? '{}') as never, mark).then(
    (r) => process.stdout.write(`${JSON.stringify({ event: 'result', ...r })}\n`),
    (err: Error) => ((process.exitCode = 2), process.stderr.write(`${err.message}\n`)),
  );
}

/**
 * A load client in its own process (`node bench/SCRIPT MODE JSON`, pinned to a CPU with `pin`): its
 * result, and the CPU of `meters`, the client and the kernel's threads over its measured window.
 */
export async function runClient<R>(script: string, mode: string, options: object, o: { meters: Meters; pin?: string; limitMs: number }): Promise<{ result: R; use: Usage }> {
  const command = [process.execPath, '--import', 'tsx', path.join(ROOT, 'bench', script), mode, JSON.stringify(options)];
  const seen: { a?: Sample; b?: Sample; result?: R } = {};
  const r = await runProcess(o.pin ? 'taskset' : command[0]!, o.pin ? ['-c', o.pin, ...command] : command.slice(1), {
    limitMs: o.limitMs,
    onLine: (line, proc) => {
      if (!line.startsWith('{')) return;
      const e = JSON.parse(line) as { event: string };
      const meters = { ...o.meters, client: () => treeCpu(proc.pid!), kernel: () => treeCpu(2) };
      if (e.event === 'start') seen.a = sample(meters);
      else if (e.event === 'end') seen.b = sample(meters);
      else if (e.event === 'result') seen.result = e as R;
    },
  });
  if (!seen.result || !seen.a || !seen.b) throw new Error(`the load client (${script} ${mode}) failed (exit ${r.code}): ${r.err.trim()}`);
  return { result: seen.result, use: usage(seen.a, seen.b) };
}
