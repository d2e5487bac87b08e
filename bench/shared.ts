/*
 * Small helpers shared by bench/cluster.ts and bench/milter.ts: the same idle-machine wait,
 * machine/commit description, tables and BENCHMARKS.md marker update as bench/policy.ts (which
 * keeps its own copies: it runs its main() on import), plus process bookkeeping.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { machineJiffies } from './policy-load.js';

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
 * SIGINT/SIGTERM: run `cleanup` (stop the servers) and exit 130. Last resort on 'exit': SIGKILL
 * every tracked child (the Redis and Postfix helpers have their own exit hooks).
 */
export function installCleanup(cleanup: () => Promise<void>): void {
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
  });
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
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      } catch {
        continue; // gone meanwhile
      }
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After ")": state(0) ppid(1) ... utime(11) stime(12).
      if (entry === '2' || f[1] === '2') total += Number(f[11]) + Number(f[12]);
    }
  } catch {
    return null;
  }
  return total / 100; // USER_HZ
}

/** Lines of a file containing every one of `needles`, read in chunks (logs can be large). */
export async function countLines(file: string, needles: string[]): Promise<number> {
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

export function machineDescription(): string {
  let model = os.cpus()[0]?.model ?? 'unknown CPU';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) model = m[1]!.trim();
  } catch {
    // not Linux: os.cpus() it is
  }
  return `${os.availableParallelism()} CPU (nproc), ${model}, Node ${process.version}, ${os.type()} ${os.release()}`;
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
      : `${text.trimEnd()}\n\n## ${heading}\n\n${intro.trim()}\n\n${section}\n`;
  writeFileSync(file, next);
}

export function log(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

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
