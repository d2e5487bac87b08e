/*
 * Helpers shared by the benches (bench/policy.ts, cluster.ts, milter.ts, stores.ts) and their load
 * generators: the idle-machine wait, /proc CPU accounting, machine/commit description, tables, the
 * BENCHMARKS.md marker update, child-process and temporary-directory bookkeeping, the main()
 * runner and argument parsing. Importing it has no side effects.
 */
import { FLUSH_AFTER_MS } from '../src/runtime/log.js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'dist', 'cli.js');
export const BENCHMARKS_MD = path.join(ROOT, 'BENCHMARKS.md');
/** Longest wait for a quiet machine before each run. */
export const QUIET_WAIT_MS = 10_000;
/** More CPU than this (% of one core) used by other processes during a run makes it noisy. */
export const NOISY_OTHER_CPU = 20;

export function nodeArgsForTs(script: string): string[] {
  return ['--import', 'tsx', path.join(ROOT, 'bench', script)];
}

/** Child processes still running; every bench stops them before it exits (see installCleanup). */
export const children = new Set<ChildProcess>();

export function track(proc: ChildProcess): ChildProcess {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

export async function stopChild(proc: ChildProcess, graceMs = 5000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * Runs `command args` (tracked, stdin closed) to its end, SIGKILL after `limitMs`: its exit code
 * and what it wrote. `onStdout` sees stdout as it comes (e.g. JSON event lines).
 */
export async function runProcess(
  command: string,
  args: string[],
  o: { limitMs: number; cwd?: string; onStdout?: (text: string) => void },
): Promise<{ code: number | null; out: string; err: string }> {
  const proc = track(spawn(command, args, { cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (t: string) => {
    out += t;
    o.onStdout?.(t);
  });
  proc.stderr!.setEncoding('utf8').on('data', (t: string) => (err += t));
  const timer = setTimeout(() => proc.kill('SIGKILL'), o.limitMs);
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, out, err };
}

/** Stops every tracked child process (SIGTERM, then SIGKILL after the grace period). */
export async function stopChildren(): Promise<void> {
  await Promise.all([...children].map((p) => stopChild(p)));
}

/** The bench's temporary directory (makeTmpDir), kept at the end with --keep (tmp.keep). */
export const tmp: { dir: string | null; keep: boolean } = { dir: null, keep: false };

export async function makeTmpDir(prefix: string): Promise<string> {
  tmp.dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return tmp.dir;
}

/** Removes the temporary directory, or says where it is kept (--keep). */
export async function removeTmpDir(): Promise<void> {
  if (tmp.dir) {
    if (tmp.keep) log(`kept ${tmp.dir}`);
    else await rm(tmp.dir, { recursive: true, force: true });
    tmp.dir = null;
  }
}

/** Synchronous last resort (an 'exit' hook): removes the temporary directory unless kept. */
export function removeTmpDirSync(): void {
  if (tmp.dir && !tmp.keep) rmSync(tmp.dir, { recursive: true, force: true });
}

/**
 * SIGINT/SIGTERM: run `cleanup` (stop the servers) and exit 130. Last resort on 'exit': SIGKILL
 * every tracked child (the Redis and Postfix helpers have their own exit hooks), then `onExit`.
 */
export function installCleanup(cleanup: () => Promise<void>, onExit?: () => void): void {
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      if (stopping) return;
      stopping = true;
      log(`${signal}: stopping the servers`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  process.once('exit', () => {
    for (const p of children) p.kill('SIGKILL');
    onExit?.();
  });
}

/**
 * Runs a bench: installCleanup(cleanup), then main(); a throw is logged ("failed: ...", with the
 * stack when `stack`) and exits 1; cleanup always runs before the exit code is set.
 */
export function runBench(main: () => Promise<number>, cleanup: () => Promise<void>, o: { stack?: boolean; onExit?: () => void } = {}): void {
  installCleanup(cleanup, o.onExit);
  main()
    .catch((err: unknown) => {
      log(`failed: ${(o.stack ? (err as Error).stack : undefined) ?? (err as Error).message}`);
      return 1;
    })
    .then(async (code) => {
      await cleanup();
      process.exitCode = code;
    });
}

/** True when the module at `importMetaUrl` is the script node was started with. */
export function isMain(importMetaUrl: string): boolean {
  return Boolean(process.argv[1]) && importMetaUrl === pathToFileURL(process.argv[1]!).href;
}

/** Throws unless dist/cli.js is built. */
export function requireBuild(): void {
  if (!existsSync(CLI)) throw new Error(`${path.relative(process.cwd(), CLI)} is missing: run "npm run build" first (or "npm run bench")`);
}

/**
 * `command args` (tracked, in ROOT) with stdout and stderr to `logFile`; resolves once
 * 127.0.0.1:port accepts, or throws with what it wrote (waitAccepting).
 */
export async function spawnLogged(command: string, args: string[], logFile: string, port: number): Promise<ChildProcess> {
  const out = openSync(logFile, 'w');
  const proc = track(spawn(command, args, { cwd: ROOT, stdio: ['ignore', out, out] }));
  closeSync(out);
  await waitAccepting(port, proc, async () => (await readFile(logFile, 'utf8').catch(() => '')).trim() || 'no output');
  return proc;
}

/** Listen on 127.0.0.1:0, read the port the kernel chose, close: free unless someone races us. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ host: '127.0.0.1', port });
    probe.once('connect', () => {
      probe.end();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Waits until 127.0.0.1:port accepts; throws with `describe()` when `proc` exits or time runs out. */
export async function waitAccepting(port: number, proc: ChildProcess, describe: () => Promise<string>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await accepts(port))) {
    if (proc.exitCode !== null || proc.signalCode !== null || Date.now() > deadline) {
      throw new Error(`did not start listening on 127.0.0.1:${port} (exit ${proc.exitCode ?? proc.signalCode}): ${await describe()}`);
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------- /proc CPU accounting (Linux)

/** utime + stime of a process in seconds (all threads), or null when /proc cannot tell. */
export function processCpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of proc(5) (utime, stime), counted from field 3 after the ")".
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

/** [idle, total] jiffies of the whole machine, or null. */
export function machineJiffies(): [number, number] | null {
  try {
    const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
    const n = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (n[3] ?? 0) + (n[4] ?? 0);
    return [idle, n.reduce((a, b) => a + b, 0)];
  } catch {
    return null;
  }
}

/** Whole-machine idle between two machineJiffies() readings, % of all cores (one decimal), or null. */
export function idlePct(a: [number, number] | null, b: [number, number] | null): number | null {
  return a && b ? Math.round(((b[0] - a[0]) / Math.max(1, b[1] - a[1])) * 1000) / 10 : null;
}

/** CPU seconds between two readings over `seconds`, in % of one core (one decimal), or null. */
export function cpuPct(a: number | null, b: number | null, seconds: number): number | null {
  return a === null || b === null ? null : Math.round(((b - a) / seconds) * 1000) / 10;
}

/**
 * Every process's /proc/PID/stat fields after the ")" (state(0) ppid(1) pgrp(2) ... utime(11)
 * stime(12) cutime(13) cstime(14)); processes gone meanwhile are skipped. Throws without /proc.
 */
export function procStats(): { pid: string; fields: string[] }[] {
  const list: { pid: string; fields: string[] }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
    } catch {
      continue; // gone meanwhile
    }
    list.push({ pid: entry, fields: stat.slice(stat.lastIndexOf(')') + 2).split(' ') });
  }
  return list;
}

/**
 * CPU seconds of each root process and all its live descendants, plus what each root has reaped
 * (cutime + cstime): e.g. a Dovecot master and its quota-status, auth, log ... processes. One
 * entry per root, null when the root is gone or /proc cannot tell.
 */
export function processTreeCpuSeconds(roots: number[]): (number | null)[] {
  let stats: { pid: string; fields: string[] }[];
  try {
    stats = procStats();
  } catch {
    return roots.map(() => null);
  }
  const children = new Map<number, number[]>();
  const cpu = new Map<number, { own: number; reaped: number }>();
  for (const { pid, fields: f } of stats) {
    const p = Number(pid);
    const ppid = Number(f[1]);
    const list = children.get(ppid);
    if (list) list.push(p);
    else children.set(ppid, [p]);
    cpu.set(p, { own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) });
  }
  return roots.map((root) => {
    const rootCpu = cpu.get(root);
    if (!rootCpu) return null;
    let total = rootCpu.reaped;
    const stack = [root];
    const seen = new Set<number>();
    while (stack.length > 0) {
      const p = stack.pop()!;
      if (seen.has(p)) continue;
      seen.add(p);
      total += cpu.get(p)?.own ?? 0;
      for (const c of children.get(p) ?? []) stack.push(c);
    }
    return total / 100; // USER_HZ
  });
}

/** Waits until the machine is at least 90% idle over one second, or maxMs have passed. */
export async function waitForQuiet(maxMs = QUIET_WAIT_MS): Promise<void> {
  const deadline = Date.now() + maxMs;
  for (;;) {
    const a = machineJiffies();
    await sleep(1000);
    const b = machineJiffies();
    if (!a || !b) return;
    const idle = (b[0] - a[0]) / Math.max(1, b[1] - a[1]);
    if (idle >= 0.9) return;
    if (Date.now() >= deadline) {
      log(`    the machine is busy (${Math.round((1 - idle) * 100)}% of all cores): running anyway`);
      return;
    }
  }
}

/**
 * CPU seconds of the kernel's own threads (children of kthreadd, pid 2): ksoftirqd (network work
 * deferred from interrupts), kworker and jbd2 (disk writes, e.g. Postfix's queue files). Busy, but
 * charged to no user process: without this column it would look like another process's noise.
 */
export function kernelThreadsCpuSeconds(): number | null {
  let total = 0;
  try {
    for (const { pid, fields: f } of procStats()) {
      if (pid === '2' || f[1] === '2') total += Number(f[11]) + Number(f[12]);
    }
  } catch {
    return null;
  }
  return total / 100; // USER_HZ
}

/** Lines of a file containing every one of `needles`, read in chunks (logs can be large). */
export async function countLines(file: string, needles: string[]): Promise<number> {
  // overquota writes its log lines in batches at most FLUSH_AFTER_MS late: let the last one land.
  await sleep(2 * FLUSH_AFTER_MS + 20);
  const fh = await open(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  let n = 0;
  let carry = '';
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const lines = (carry + buf.toString('utf8', 0, bytesRead)).split('\n');
      carry = lines.pop() ?? '';
      for (const line of lines) if (needles.every((w) => line.includes(w))) n++;
    }
    if (carry && needles.every((w) => carry.includes(w))) n++;
  } finally {
    await fh.close();
  }
  return n;
}

/** The commit the frontend was built from, and whether src/ had uncommitted changes. */
export function codeVersion(): string {
  try {
    const git = (...args: string[]) => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const commit = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'src') !== '';
    return `at commit ${commit}${dirty ? ' with uncommitted changes in src/' : ''}`;
  } catch {
    return '(commit unknown)';
  }
}

/** The CPU's model name (/proc/cpuinfo, else os.cpus()). */
export function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux: os.cpus() it is
  }
  return os.cpus()[0]?.model ?? 'unknown CPU';
}

export function machineDescription(): string {
  return `${os.availableParallelism()} CPU (nproc), ${cpuModel()}, Node ${process.version}, ${os.type()} ${os.release()}`;
}

/**
 * The first lines of a BENCHMARKS.md section: its start marker and "Last run: DATE, overquota
 * COMMIT, EXTRA..., MACHINE.", then an empty line.
 */
export function sectionHead(name: string, extra: string[] = []): string[] {
  return [`<!-- bench:${name}:start -->`, `Last run: ${[isoNow(), `overquota ${codeVersion()}`, ...extra, machineDescription()].join(', ')}.`, ''];
}

/** The last lines of a report on the terminal: the commit and the machine. */
export function textFooter(): string[] {
  return [`code: overquota ${codeVersion()}`, `machine: ${machineDescription()}`];
}

/** How the bench was started, for the Command: line. */
export function commandLine(script: string, argv: string[]): string {
  return `node --import tsx bench/${script} ${argv.join(' ')}`.trim();
}

/** `file` relative to the current directory when it is below it, else as it is. */
export function shownPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

export function isoNow(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}

/** ' (run by `npm run bench`, which builds first)' when that is how we were started. */
export function viaNpm(): string {
  return process.env.npm_lifecycle_event === 'bench' ? ' (run by `npm run bench`, which builds first)' : '';
}

export function table(head: string[], rows: string[][], markdown: boolean): string {
  const numeric = (i: number) => rows.every((r) => /^[\d,.%?×x-]+$/.test(r[i] ?? ''));
  if (markdown) {
    const sep = head.map((_, i) => (numeric(i) ? '---:' : '---'));
    return [head, sep, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (numeric(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/**
 * Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` with
 * `section` (which includes both markers); without the markers, appends `## heading`, `intro` and
 * the section at the end of the file. Nothing else in the file changes.
 */
export function updateMarkdown(file: string, name: string, heading: string, intro: string, section: string): void {
  const start = `<!-- bench:${name}:start -->`;
  const end = `<!-- bench:${name}:end -->`;
  if (!section.startsWith(start) || !section.endsWith(end)) throw new Error(`updateMarkdown: the ${name} section must start and end with its markers`);
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n';
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  const next =
    a !== -1 && b > a
      ? text.slice(0, a) + section + text.slice(b + end.length)
      : `${text.trimEnd()}\n\n## ${heading}\n\n${intro.trim() ? `${intro.trim()}\n\n` : ''}${section}\n`;
  writeFileSync(file, next);
}

/**
 * Prints a bench's report (its text) on stdout; with --write (`write`) also puts its markdown into
 * BENCHMARKS.md between the bench:NAME markers (updateMarkdown: `heading` and `intro` when new).
 */
export function printReport(report: { text: string; markdown: string }, write: boolean, name: string, heading: string, intro: string): void {
  console.log(`\n${report.text}`);
  if (write) {
    updateMarkdown(BENCHMARKS_MD, name, heading, intro, report.markdown);
    log('BENCHMARKS.md updated');
  }
}

/** Logs each problem ("problem: ..."): exit code 1 when there is one, else 0. */
export function problemsExitCode(problems: string[]): number {
  if (problems.length > 0) {
    for (const p of problems) log(`problem: ${p}`);
    return 1;
  }
  return 0;
}

/** The sentence on noise under a report: which runs (#1, #2, ...) had other processes above NOISY_OTHER_CPU. */
export function noiseNote(otherCpu: (number | null)[]): string {
  const noisy = otherCpu.flatMap((c, i) => ((c ?? 0) > NOISY_OTHER_CPU ? [`#${i + 1}`] : []));
  return noisy.length
    ? `WARNING: other processes used more than ${NOISY_OTHER_CPU}% of a core during run(s) ${noisy.join(', ')}: the figures are noisy; run again on a quiet machine.`
    : `No other process used more than ${NOISY_OTHER_CPU}% of a core during any run.`;
}

export function log(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Epoch milliseconds (fractional), from performance.timeOrigin: comparable across processes. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** A tiny deterministic PRNG (mulberry32), so every run sends the same requests / writes the same data. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** The options every bench takes (parseArgs): --write, --keep and --help. */
export const COMMON_OPTIONS = {
  write: { type: 'boolean', default: false },
  keep: { type: 'boolean', default: false },
  help: { type: 'boolean', default: false },
} as const;

export function numArg(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} ${text}: expected a number from ${min} to ${max}`);
  return n;
}

export function intArg(name: string, text: string, min: number, max: number): number {
  const n = numArg(name, text, min, max);
  if (!Number.isInteger(n)) throw new Error(`--${name} ${text}: expected a whole number`);
  return n;
}

/**
 * The runs of `rounds` rounds: every configuration once per round, in `configs` order in the 1st,
 * 3rd ... round and in reverse order in the 2nd, 4th ...: a drift of the machine during the bench
 * falls on every configuration alike, and no configuration always runs first after a switch.
 */
export function interleavedOrder<K>(configs: readonly K[], rounds: number): { key: K; round: number }[] {
  const order: { key: K; round: number }[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const key of round % 2 === 0 ? configs : [...configs].reverse()) order.push({ key, round });
  }
  return order;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
