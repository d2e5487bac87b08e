/*
 * The Postfix side shared by bench/milter.ts and bench/postfix-e2e.ts: their command line (--sessions,
 * --messages, --rounds, --warmup-messages, --write, --keep), the checks for smtp-source and Postfix, the private
 * Postfix instance and its version, timed smtp-source runs, the CPU accounting around a
 * measured run, the interleaved order of the runs and the median and spread of each configuration's
 * runs. Importing it has no side effects.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import type { MsgsFigure } from './results.js';
import { startPostfix, postfixUnavailable, type PostfixInstance, type StartPostfixOptions } from '../test/helpers/postfix.js';
// Moved to shared.ts (bench/peers.ts uses them too); still exported from here for milter and e2e.
import { interleavedOrder, median } from './shared.js';
export { interleavedOrder, median };
import { COMMON_OPTIONS, QUIET_WAIT_MS, cpuPct, idlePct, intArg, kernelThreadsCpuSeconds, log, machineJiffies, procStats, runProcess, tmp, waitForQuiet } from './shared.js';

export const SMTP_SOURCE = '/usr/sbin/smtp-source';

const SMTP_SOURCE_OPTIONS = {
  sessions: { type: 'string', default: '20' },
  messages: { type: 'string', default: '2000' },
  rounds: { type: 'string' },
  'warmup-messages': { type: 'string', default: '200' },
  ...COMMON_OPTIONS,
} as const;

/**
 * The command line of both benches: --sessions, --messages, --rounds (`defaultRounds`, 1 to
 * `maxRounds`), --warmup-messages and COMMON_OPTIONS, checked (--keep sets tmp.keep); null after
 * printing the usage of bench/SCRIPT for --help.
 */
export function smtpSourceCommand(
  script: string,
  defaultRounds: number,
  maxRounds: number,
): { sessions: number; messages: number; rounds: number; warmupMessages: number; write: boolean } | null {
  const { values } = parseArgs({ options: SMTP_SOURCE_OPTIONS });
  if (values.help) {
    console.log(`usage: node --import tsx bench/${script} [--sessions 20] [--messages 2000] [--rounds ${defaultRounds}] [--warmup-messages 200] [--write] [--keep]`);
    return null;
  }
  const parsed = {
    sessions: intArg('sessions', values.sessions, 1, 100),
    messages: intArg('messages', values.messages, 1, 50_000),
    rounds: intArg('rounds', values.rounds ?? String(defaultRounds), 1, maxRounds),
    warmupMessages: intArg('warmup-messages', values['warmup-messages'], 0, 10_000),
    write: values.write,
  };
  tmp.keep = values.keep;
  return parsed;
}

/** Throws unless smtp-source is installed and a private Postfix can run (plus `more()`, e.g. Dovecot's check). */
export function requirePostfix(more?: () => string | false | null | undefined): void {
  if (!existsSync(SMTP_SOURCE)) throw new Error(`${SMTP_SOURCE} is missing (it ships with Postfix: scripts/install-deps.sh)`);
  const why = postfixUnavailable() || more?.();
  if (why) throw new Error(why);
}

/** Starts a private Postfix (test/helpers/postfix.ts), logs where, and says its version ("Postfix 3.7.11"). */
export async function startBenchPostfix(o: StartPostfixOptions): Promise<{ postfix: PostfixInstance; version: string }> {
  const postfix = await startPostfix(o);
  let version: string;
  try {
    version = `Postfix ${(await postfix.postconf('-h', 'mail_version')).trim()}`;
  } catch (err) {
    await postfix.stop().catch(() => undefined);
    throw err;
  }
  log(`${version} on 127.0.0.1:${postfix.smtpPort} (${postfix.dir})`);
  return { postfix, version };
}

/** Runs smtp-source; resolves to the seconds it took and its CPU (bash `times`: the child's). */
export async function smtpSource(port: number, sessions: number, messages: number, recipient: string): Promise<{ seconds: number; cpu: number | null }> {
  // bash runs smtp-source and prints its children's CPU times with the `times` builtin.
  const script = `"$@"; rc=$?; times >&2; exit $rc`;
  const args = ['-c', script, 'bash', SMTP_SOURCE, '-s', String(sessions), '-m', String(messages), '-t', recipient, `127.0.0.1:${port}`];
  const started = performance.now();
  const run = await runProcess('/bin/bash', args, { limitMs: 120_000 });
  const seconds = (performance.now() - started) / 1000;
  const out = run.out + run.err;
  // `times`: line 1 the shell's own user/sys, line 2 its children's, as "0m0.123s 0m0.456s".
  const times = [...out.matchAll(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/gm)];
  const child = times[1];
  const cpu = child ? Number(child[1]) * 60 + Number(child[2]) + Number(child[3]) * 60 + Number(child[4]) : null;
  const text = out.replace(/^\d+m[\d.]+s \d+m[\d.]+s$/gm, '').trim();
  if (run.code !== 0) throw new Error(`smtp-source exited ${run.code}: ${text || 'no output'}`);
  if (text) log(`    smtp-source said: ${text.slice(0, 300)}`);
  return { seconds, cpu };
}

/**
 * CPU seconds of a Postfix instance: every live process in master's process group (master leads
 * it), plus what master has reaped (its children's CPU, cutime + cstime).
 */
export function postfixCpuSeconds(masterPid: number): number | null {
  let total = 0;
  let sawMaster = false;
  for (const { pid, fields: f } of procStats()) {
    // pgrp(2), utime(11) stime(12) cutime(13) cstime(14).
    if (Number(f[2]) !== masterPid) continue;
    total += Number(f[11]) + Number(f[12]);
    if (Number(pid) === masterPid) {
      sawMaster = true;
      total += Number(f[13]) + Number(f[14]);
    }
  }
  return sawMaster ? total / 100 : null;
}

/** [iowait, total] jiffies of the whole machine (/proc/stat), or null. */
function iowaitJiffies(): [number, number] | null {
  try {
    const n = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    return [n[4] ?? 0, n.reduce((a, b) => a + b, 0)];
  } catch {
    return null;
  }
}

/** A measured smtp-source run: its time and the CPU around it, in % of one core (machine idle and iowait: % of all cores). */
export interface SmtpSourceRun {
  seconds: number;
  mps: number;
  /** CPU of the server under test (`serverCpuSeconds`; 0 when there is none). */
  serverCpu: number | null;
  postfixCpu: number | null;
  sourceCpu: number | null;
  kernelCpu: number | null;
  machineIdle: number | null;
  /** Part of machineIdle spent waiting for disk I/O (iowait). */
  iowait: number | null;
  /** Busy cores minus everything above: other processes on the machine. */
  otherCpu: number | null;
}

/** One timed smtp-source run against `pf`, with the CPU of `serverCpuSeconds()`, Postfix, smtp-source, kernel threads and the rest. */
export async function measureSmtpSource(
  pf: PostfixInstance,
  o: { sessions: number; messages: number; recipient: string; serverCpuSeconds: () => number | null },
): Promise<SmtpSourceRun> {
  const m0 = machineJiffies();
  const w0 = iowaitJiffies();
  const k0 = kernelThreadsCpuSeconds();
  const s0 = o.serverCpuSeconds();
  const p0 = postfixCpuSeconds(pf.pid);
  const { seconds, cpu } = await smtpSource(pf.smtpPort, o.sessions, o.messages, o.recipient);
  const m1 = machineJiffies();
  const w1 = iowaitJiffies();
  const k1 = kernelThreadsCpuSeconds();
  const s1 = o.serverCpuSeconds();
  const p1 = postfixCpuSeconds(pf.pid);
  const pct = (a: number | null, b: number | null) => cpuPct(a, b, seconds);
  const serverCpu = pct(s0, s1);
  const postfixCpu = pct(p0, p1);
  const sourceCpu = cpu === null ? null : Math.round((cpu / seconds) * 1000) / 10;
  const machineIdle = idlePct(m0, m1);
  const iowait = idlePct(w0, w1);
  const kernelCpu = pct(k0, k1);
  const otherCpu =
    machineIdle === null || kernelCpu === null || postfixCpu === null || sourceCpu === null || serverCpu === null
      ? null
      : Math.round((100 - machineIdle) * os.availableParallelism() - kernelCpu - postfixCpu - sourceCpu - serverCpu);
  return { seconds, mps: o.messages / seconds, serverCpu, postfixCpu, sourceCpu, kernelCpu, machineIdle, iowait, otherCpu };
}

// ---------------------------------------------------------------- order and statistics of the runs

/**
 * waitForQuiet() before each run, but at most `totalMs` of waiting beyond its 1 s sample over the
 * whole bench: on a machine that stays busy the runs go ahead (their noise is reported) instead of
 * waiting 10 s each.
 */
export function quietWaiter(totalMs: number): () => Promise<void> {
  let left = totalMs;
  return async () => {
    const started = performance.now();
    await waitForQuiet(Math.max(1000, Math.min(QUIET_WAIT_MS, left)));
    left -= Math.max(0, performance.now() - started - 1000);
  };
}

/** The median of the readings, rounded, or null when one is missing. */
export function medianOrNull(xs: (number | null)[]): number | null {
  return xs.length > 0 && xs.every((x) => x !== null) ? Math.round(median(xs as number[])) : null;
}

/** A configuration's runs: their msgs/s in order, median, min and max. */
export interface Spread {
  each: number[];
  median: number;
  min: number;
  max: number;
}

export function spreadOf(runs: SmtpSourceRun[]): Spread {
  const each = runs.map((r) => r.mps);
  return { each, median: median(each), min: Math.min(...each), max: Math.max(...each) };
}

/** A configuration's figure for the results (bench/results.ts): its runs' spread (exact, as the ratios of the report use it). */
export function msgsFigure(key: string, label: string, runs: SmtpSourceRun[], o: { sessions: number; messages: number }): MsgsFigure {
  return { key, label, runs: runs.length, ...spreadOf(runs), sessions: o.sessions, messages: o.messages };
}

/** "657–691" (min–max, rounded) */
export function fmtSpread(s: Spread): string {
  return `${Math.round(s.min).toLocaleString('en-US')}–${Math.round(s.max).toLocaleString('en-US')}`;
}

/**
 * a / b of the msgs/s within each round (the runs of one round are close in time): their range,
 * "0.82–1.10", or '-' when no round has both.
 */
export function perRoundRatios<K>(runs: (SmtpSourceRun & { key: K; round: number })[], a: K, b: K): string {
  const rounds = [...new Set(runs.map((r) => r.round))];
  const ratios = rounds.flatMap((round) => {
    const x = runs.find((r) => r.round === round && r.key === a);
    const y = runs.find((r) => r.round === round && r.key === b);
    return x && y && y.mps > 0 ? [x.mps / y.mps] : [];
  });
  return ratios.length === 0 ? '-' : `${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`;
}
