/*
 * The policy servers bench/policy.ts and bench/peers.ts start and load: the fixed-answer server
 * (bench/fixed-server.ts), `overquota frontend` / `overquota quota-service` child processes, and
 * the load generator (bench/policy-load.ts) run in its own process against one of them.
 * Importing it has no side effects.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { LoadResult } from './policy-load.js';
import { CLI, ROOT, freePort, log, nodeArgsForTs, runProcess, track, waitAccepting } from './shared.js';

export interface Target {
  label: string;
  kind: 'fixed' | 'overquota' | 'dovecot';
  listen: string;
  pid: number;
  proc?: ChildProcess;
  /** stdout of an overquota process (its JSON log). */
  logFile?: string;
  /** Processes whose CPU (with all their descendants) is the server's: policy-load --server-tree. */
  cpuTree?: number[];
  /** Another process that must stay alive during a run (e.g. the quota service behind a frontend). */
  alsoAlive?: ChildProcess;
}

/** bench/fixed-server.ts in its own process; stdin stays a pipe (it exits when it closes). */
export async function startFixed(workUs = 0): Promise<Target> {
  const args = [...nodeArgsForTs('fixed-server.ts'), ...(workUs > 0 ? ['--work-us', String(workUs)] : [])];
  const proc = track(spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }));
  const ready = await firstJsonLine(proc, (l) => l.msg === 'fixed policy server ready', 15_000);
  const label = workUs > 0 ? `fixed + ${workUs} µs/request` : 'fixed server';
  return { label, kind: 'fixed', listen: String(ready.listen), pid: proc.pid!, proc };
}

/** How many requests a fixed server has answered so far (SIGUSR2, read from its stdout). */
export async function fixedRequests(target: Target): Promise<number> {
  const proc = target.proc!;
  const line = firstJsonLine(proc, (l) => l.msg === 'requests', 5000, false);
  proc.kill('SIGUSR2');
  return Number((await line).requests);
}

/**
 * `dist/cli.js COMMAND ARGS` with stdout (its JSON log) to TMPDIR/NAME.log and stderr to
 * TMPDIR/NAME.stderr; resolves once 127.0.0.1:port accepts. The ready line is logged at info, so
 * it cannot tell when a warn-level process listens: the caller gives it a free port.
 */
export async function startCli(o: {
  label: string;
  name: string;
  tmpDir: string;
  port: number;
  args: string[];
  cpuProfDir?: string | null;
}): Promise<{ proc: ChildProcess; logFile: string }> {
  const logFile = path.join(o.tmpDir, `${o.name}.log`);
  const errFile = path.join(o.tmpDir, `${o.name}.stderr`);
  const out = openSync(logFile, 'w');
  const err = openSync(errFile, 'w');
  const profile = o.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`, `--cpu-prof-name=${o.name}.${Date.now()}.cpuprofile`] : [];
  // stdout (the JSON log) goes to a file, as a real deployment's would go to a file or journal:
  // writing one line per decision is part of the cost measured.
  const proc = track(spawn(process.execPath, [...profile, CLI, ...o.args], { cwd: ROOT, stdio: ['ignore', out, err] }));
  closeSync(out);
  closeSync(err);
  await waitAccepting(o.port, proc, async () => {
    const stderr = await readFile(errFile, 'utf8').catch(() => '');
    const stdout = await readFile(logFile, 'utf8').catch(() => '');
    return `${o.label}: ${stderr.trim() || stdout.trim() || 'no output'}`;
  });
  return { proc, logFile };
}

/** `overquota frontend` on a free port with `args` after the listener (store, source, log level...). */
export async function startFrontend(label: string, name: string, tmpDir: string, args: string[], cpuProfDir: string | null = null): Promise<Target> {
  const port = await freePort();
  const listen = `inet:127.0.0.1:${port}`;
  const { proc, logFile } = await startCli({ label, name, tmpDir, port, args: ['frontend', '--policy.listen', listen, ...args], cpuProfDir });
  return { label, kind: 'overquota', listen, pid: proc.pid!, proc, logFile };
}

export function firstJsonLine(proc: ChildProcess, match: (l: Record<string, unknown>) => boolean, timeoutMs: number, setEncoding = true): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onErr = (t: string) => (err += t);
    const onOut = (t: string) => {
      out += t;
      const lines = out.split('\n');
      out = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        try {
          const parsed = JSON.parse(line) as Record<string, unknown>;
          if (match(parsed)) {
            done();
            resolve(parsed);
            return;
          }
        } catch {
          // not JSON after all
        }
      }
    };
    const onExit = (code: number | null) => {
      done();
      reject(new Error(`exited with ${code} before it was ready: ${err || out}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no matching line within ${timeoutMs} ms: ${err || out}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      proc.stderr!.off('data', onErr);
      proc.stdout!.off('data', onOut);
      proc.off('exit', onExit);
    };
    if (setEncoding) {
      proc.stderr!.setEncoding('utf8');
      proc.stdout!.setEncoding('utf8');
    }
    proc.stderr!.on('data', onErr);
    proc.stdout!.on('data', onOut);
    proc.once('exit', onExit);
  });
}

/** The load generator in its own process (client and servers share the machine's cores). */
export async function runLoadProcess(
  target: Target,
  o: { connections: number; warmup: number; duration: number; recipients: string[]; timeoutMs?: number },
): Promise<LoadResult> {
  const args = [
    ...nodeArgsForTs('policy-load.ts'),
    '--connect',
    target.listen,
    '--connections',
    String(o.connections),
    '--warmup',
    String(o.warmup),
    '--duration',
    String(o.duration),
    '--recipients',
    o.recipients.join(','),
    ...(target.cpuTree ? ['--server-tree', target.cpuTree.join(',')] : ['--server-pid', String(target.pid)]),
    ...(o.timeoutMs ? ['--timeout', String(o.timeoutMs)] : []),
    '--json',
  ];
  const { code, out, err } = await runProcess(process.execPath, args, { cwd: ROOT, limitMs: (o.warmup + o.duration + 20) * 1000 });
  if (code !== 0 && code !== 1) throw new Error(`load generator against ${target.label} failed (exit ${code}): ${err.trim()}`);
  for (const p of [target.proc, target.alsoAlive]) {
    if (p && (p.exitCode !== null || p.signalCode !== null)) throw new Error(`${target.label} died during the run`);
  }
  return JSON.parse(out) as LoadResult;
}

/** CPU used by neither the server nor the load generator, in % of one core (noise), or null. */
export function otherCpu(r: LoadResult): number | null {
  if (r.machineIdlePct === null || r.serverCpuPct === null) return null;
  const busy = ((100 - r.machineIdlePct) * os.availableParallelism()) / 100;
  return Math.round(busy * 100 - r.serverCpuPct - r.clientCpuPct);
}

/** "73% `DUNNO`, 27% `452 ...`" */
export function actionShares(actions: Record<string, number>): string {
  const total = Object.values(actions).reduce((a, b) => a + b, 0) || 1;
  return Object.entries(actions)
    .sort((a, b) => b[1] - a[1])
    .map(([a, n]) => `${Math.round((n * 100) / total)}% \`${a}\``)
    .join(', ');
}

/** The --cpu-prof DIR option: its absolute path, created, or null without it. */
export async function cpuProfDirOption(value: string | undefined): Promise<string | null> {
  const dir = value ? path.resolve(value) : null;
  if (dir) await mkdir(dir, { recursive: true });
  return dir;
}

/** The last lines of a policy bench: where the CPU profiles are, and exit code 1 when requests failed. */
export function finish(cpuProfDir: string | null, errors: number): number {
  if (cpuProfDir) log(`CPU profiles in ${cpuProfDir} (summarise: node --import tsx bench/cpu-profile-summary.ts ${cpuProfDir}/*.cpuprofile)`);
  if (errors > 0) {
    log(`${errors} request(s) failed: the figures are not trustworthy`);
    return 1;
  }
  return 0;
}
