/*
 * Policy throughput and latency of `overquota frontend` against the ceiling, in one invocation.
 *
 * Starts, as child processes on free loopback ports:
 *   - bench/fixed-server.ts: the minimal Node policy server (answers action=DUNNO to everything);
 *   - overquota frontend, log.level info (one JSON log line per decision, stdout to a file);
 *   - overquota frontend, log.level warn (decisions are not logged).
 * Both frontends read a temporary mbox spool with mailboxes that have room, are full, or do not
 * fit the message. Each target gets the same closed-loop load (bench/policy-load.ts, its own
 * process): fixed, overquota info, overquota warn, ... and the fixed server once more at the end,
 * so drift of the machine shows and averages out. Prints the table and the ratio overquota/fixed;
 * --write puts them into BENCHMARKS.md between the bench:policy markers.
 *
 *   npm run bench                         # build, then this with --write
 *   node --import tsx bench/policy.ts [--connections 50] [--warmup 2] [--duration 8] [--rounds 1]
 *        [--write] [--cpu-prof DIR] [--keep] [--calibrate 2,5,10] [--retries 1]
 *
 * --cpu-prof DIR runs the frontends under `node --cpu-prof` and leaves the .cpuprofile files in DIR
 * (summarise them with bench/cpu-profile-summary.ts). --keep leaves the temporary directory (mail
 * spool, frontend logs) in place and prints its path. --calibrate LIST adds runs of the fixed server
 * burning that many microseconds of CPU per request (fixed-server.ts --work-us): what an extra
 * microsecond of work per request costs in requests/s on this machine.
 *
 * The machine may be shared: before each run it waits up to 10 s for the machine to be idle, and a
 * run during which other processes used more than 20% of a core is run again (--retries times).
 *
 * With OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/policy.json (bench/results.ts): each
 * target's req/s and latency, and the checks overquota / fixed server ≥ 0.8, for bench/summary.ts.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { LoadResult } from './policy-load.js';
import { RECIPIENTS, STORE_LIMIT, writeSpool } from './policy-spool.js';
import { actionShares, cpuProfDirOption, finish, otherCpu, runLoadProcess, startFixed, startFrontend, type Target } from './policy-targets.js';
import { ratioCheck, saveResults, type PolicyFigure, type ResultsOfRun } from './results.js';
import {
  NOISY_OTHER_CPU,
  QUIET_WAIT_MS,
  COMMON_OPTIONS,
  commandLine,
  countLines,
  fmtInt,
  intArg,
  log,
  makeTmpDir,
  noiseNote,
  numArg,
  removeTmpDir,
  removeTmpDirSync,
  requireBuild,
  runBench,
  stopChildren,
  sectionHead,
  table,
  textFooter,
  tmp,
  viaNpm,
  waitForQuiet,
  printReport,
} from './shared.js';

const TARGET_RATIO = 0.8;
/** The targets' labels (startFixed names the fixed server so) and their keys in the results. */
const LABELS = { fixed: 'fixed server', info: 'overquota (log info)', warn: 'overquota (log warn)' } as const;
const KEYS = new Map<string, string>(Object.entries(LABELS).map(([key, label]) => [label, key]));

interface Run {
  target: string;
  result: LoadResult;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      connections: { type: 'string', default: '50' },
      warmup: { type: 'string', default: '2' },
      duration: { type: 'string', default: '8' },
      rounds: { type: 'string', default: '1' },
      'cpu-prof': { type: 'string' },
      calibrate: { type: 'string', default: '' },
      retries: { type: 'string', default: '1' },
      ...COMMON_OPTIONS,
    },
  });
  if (values.help) {
    console.log('usage: node --import tsx bench/policy.ts [--connections 50] [--warmup 2] [--duration 8] [--rounds 1] [--write] [--cpu-prof DIR] [--keep] [--calibrate 2,5,10] [--retries 1]');
    return 0;
  }
  const connections = intArg('connections', values.connections, 1, 1000);
  const warmup = numArg('warmup', values.warmup, 0.1, 30);
  const duration = numArg('duration', values.duration, 0.5, 30);
  const rounds = intArg('rounds', values.rounds, 1, 5);
  tmp.keep = values.keep;
  const retries = intArg('retries', values.retries, 0, 3);
  const calibrate = values.calibrate
    .split(',')
    .filter((w) => w.trim() !== '')
    .map((w) => numArg('calibrate', w.trim(), 0.1, 1000));
  // Bounded: every run is warm-up + measure (+ ~1 s start-up and drain).
  const runs = rounds * 3 + 1 + calibrate.length;
  const estimate = runs * (1 + retries) * (warmup + duration + 1.5 + QUIET_WAIT_MS / 1000);
  if (estimate > 600) throw new Error(`about ${Math.round(estimate)} s of load: lower --rounds, --warmup or --duration`);
  requireBuild();
  const cpuProfDir = await cpuProfDirOption(values['cpu-prof']);

  const tmpDir = await makeTmpDir('overquota-bench-');
  const spool = path.join(tmpDir, 'mail');
  await writeSpool(spool);

  log(`starting servers (temp dir ${tmpDir})`);
  const fixed = await startFixed();
  const calibrated: Target[] = [];
  for (const us of calibrate) calibrated.push(await startFixed(us));
  const info = await startOverquota(LABELS.info, 'info', spool, cpuProfDir);
  const warn = await startOverquota(LABELS.warn, 'warn', spool, cpuProfDir);

  const order: Target[] = [];
  for (let r = 0; r < rounds; r++) order.push(fixed, info, warn);
  order.push(...calibrated, fixed);
  const results: Run[] = [];
  for (const [i, target] of order.entries()) {
    log(`[${i + 1}/${order.length}] ${target.label}: ${connections} connections, ${warmup} s warm-up, ${duration} s measured`);
    // The machine is shared (an editor, a test run, a build): wait a little for it to be quiet,
    // and run again once when another process took CPU during the run.
    let result: LoadResult;
    for (let attempt = 0; ; attempt++) {
      await waitForQuiet(QUIET_WAIT_MS);
      result = await runLoadProcess(target, { connections, warmup, duration, recipients: RECIPIENTS });
      const other = otherCpu(result);
      if (other === null || other <= NOISY_OTHER_CPU || attempt >= retries) break;
      log(`    noisy: other processes used ${other}% of a core (${result.rps} req/s); running it again`);
    }
    results.push({ target: target.label, result });
    log(
      `    ${result.rps} req/s, p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms, errors ${result.errors}; CPU server ${result.serverCpuPct}% client ${result.clientCpuPct}% other ${otherCpu(result) ?? '?'}%`,
    );
  }

  const decisionsLogged = info.logFile ? await countLines(info.logFile, ['"msg":"decision"']) : 0;
  await stopChildren();

  const report = buildReport({ results, connections, warmup, duration, rounds, decisionsLogged, argv: process.argv.slice(2) });
  printReport(report, values.write, 'policy', 'Policy requests per second', '');
  saveResults('policy', report.results);
  return finish(
    cpuProfDir,
    results.reduce((n, r) => n + r.result.errors, 0),
  );
}

// ---------------------------------------------------------------- processes

function startOverquota(label: string, level: string, spool: string, cpuProfDir: string | null): Promise<Target> {
  return startFrontend(label, `overquota-${level}`, tmp.dir!, ['--store.path', spool, '--store.limit', String(STORE_LIMIT), '--log.level', level], cpuProfDir);
}

async function cleanup(): Promise<void> {
  await stopChildren();
  await removeTmpDir();
}

// ---------------------------------------------------------------- report

interface Summary {
  label: string;
  runs: number;
  rps: number;
  p50: number;
  p99: number;
  max: number;
  errors: number;
  serverCpu: number | null;
  clientCpu: number;
}

function summarise(label: string, runs: LoadResult[]): Summary {
  const mean = (f: (r: LoadResult) => number) => runs.reduce((a, r) => a + f(r), 0) / runs.length;
  const cpu = runs.every((r) => r.serverCpuPct !== null) ? Math.round(mean((r) => r.serverCpuPct!)) : null;
  return {
    label,
    runs: runs.length,
    rps: Math.round(mean((r) => r.rps)),
    p50: round3(mean((r) => r.p50Ms)),
    p99: round3(mean((r) => r.p99Ms)),
    max: Math.max(...runs.map((r) => r.maxMs)),
    errors: runs.reduce((a, r) => a + r.errors, 0),
    serverCpu: cpu,
    clientCpu: Math.round(mean((r) => r.clientCpuPct)),
  };
}

function buildReport(o: {
  results: Run[];
  connections: number;
  warmup: number;
  duration: number;
  rounds: number;
  decisionsLogged: number;
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<PolicyFigure> } {
  const labels = [...new Set(o.results.map((r) => r.target))];
  const summaries = labels.map((l) =>
    summarise(
      l,
      o.results.filter((r) => r.target === l).map((r) => r.result),
    ),
  );
  const fixed = summaries.find((s) => s.label === LABELS.fixed)!;
  const ratio = (s: Summary) => (fixed.rps > 0 ? s.rps / fixed.rps : 0);
  const verdict = (s: Summary) => (s === fixed ? '(ceiling)' : `${ratio(s).toFixed(2)} ${ratio(s) >= TARGET_RATIO ? 'meets' : 'MISSES'} ≥ ${TARGET_RATIO}`);

  const summaryRows = summaries.map((s) => [
    s.label,
    String(s.runs),
    fmtInt(s.rps),
    s.p50.toFixed(2),
    s.p99.toFixed(2),
    s.max.toFixed(1),
    String(s.errors),
    s.serverCpu === null ? '?' : `${s.serverCpu}%`,
    `${s.clientCpu}%`,
    verdict(s),
  ]);
  const summaryHead = ['target', 'runs', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'ratio vs fixed'];
  const runRows = o.results.map((r, i) => [
    String(i + 1),
    r.target,
    fmtInt(r.result.rps),
    r.result.p50Ms.toFixed(2),
    r.result.p99Ms.toFixed(2),
    r.result.maxMs.toFixed(1),
    String(r.result.errors),
    r.result.serverCpuPct === null ? '?' : `${r.result.serverCpuPct}%`,
    `${r.result.clientCpuPct}%`,
    r.result.machineIdlePct === null ? '?' : `${r.result.machineIdlePct}%`,
    otherCpu(r.result) === null ? '?' : `${otherCpu(r.result)}%`,
  ]);
  const runHead = ['#', 'target', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'machine idle', 'other CPU'];
  const noise = noiseNote(o.results.map((r) => otherCpu(r.result)));

  const oqRun = o.results.find((r) => r.target.startsWith('overquota'));
  const actions = oqRun ? actionShares(oqRun.result.actions) : '';
  const command = commandLine('policy.ts', o.argv);

  const text = [
    table(summaryHead, summaryRows, false),
    '',
    'Runs, in the order they ran:',
    table(runHead, runRows, false),
    '',
    noise,
    `overquota answers (first overquota run): ${actions}`,
    `decision lines in the info log: ${fmtInt(o.decisionsLogged)} (whole run, warm-up included)`,
    ...textFooter(),
  ].join('\n');

  const markdown = [
    ...sectionHead('policy'),
    `Command: \`${command}\`${viaNpm()}. ${o.connections} persistent connections, ${o.warmup} s warm-up then ${o.duration} s measured per run, ${o.rounds} round(s); the fixed server runs first and last and its figures are the mean of those runs (so are overquota's over its rounds).`,
    '',
    table(summaryHead, summaryRows, true),
    '',
    'Every run, in order (server, client and other CPU in % of one core; machine idle in % of all cores; other = busy cores minus server and client, i.e. other processes and kernel work not charged to either):',
    '',
    table(runHead, runRows, true),
    '',
    noise,
    '',
    `overquota's answers in its first run: ${actions}. Decision lines written by the info frontend: ${fmtInt(o.decisionsLogged)} (warm-up included).`,
    '<!-- bench:policy:end -->',
  ].join('\n');
  const at = `, ${o.connections} connections`;
  const results: ResultsOfRun<PolicyFigure> = {
    command,
    figures: summaries.map((s) => ({ key: KEYS.get(s.label) ?? s.label, label: s.label, connections: o.connections, runs: s.runs, rps: s.rps, p50Ms: s.p50, p99Ms: s.p99, maxMs: s.max, errors: s.errors })),
    checks: summaries
      .filter((s) => s.label === LABELS.info || s.label === LABELS.warn)
      .map((s) => ratioCheck(`${s.label} / fixed server${at}`, s.rps, fixed.rps, 'req/s', '>=', TARGET_RATIO)),
    problems: summaries.flatMap((s) => (s.errors > 0 ? [`${s.label}: ${s.errors} failed request(s)`] : [])),
    noise,
  };
  return { text, markdown, results };
}

// ---------------------------------------------------------------- small things

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

// Last resort if something throws past main(): no server may outlive the bench, no temp dir stays.
runBench(main, cleanup, { onExit: removeTmpDirSync });
