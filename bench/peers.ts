/*
 * Policy requests/s and latency of overquota next to its peers, in one invocation, at 50 and at
 * 200 persistent connections (the issue's item 1):
 *   - fixed server: bench/fixed-server.ts, answers action=DUNNO to everything (the Node ceiling);
 *   - overquota, warm cache: `overquota frontend` reading the Maildirs itself (store.type maildir),
 *     log.level info (one decision line per request, to a file) and log.level warn;
 *   - overquota, every lookup a miss: `overquota frontend --source.type http --cache.max_entries 0`
 *     (the process-local cache keeps nothing) asking `overquota quota-service` over HTTP, which
 *     reads the same Maildirs; both log at info;
 *   - Dovecot quota-status: a private Dovecot 2.3 (`quota-status -p postfix`, client_limit = 1 as
 *     its documentation advises) over the same Maildirs.
 * The data (bench/peers-data.ts): 200 mailboxes with a 100 KiB Dovecot quota, filled by the bench
 * (full, over, almost full, room), and 210 recipient addresses (mixed case, +extensions, two
 * domains, 10 unknown). Every target gets the same closed-loop load (bench/policy-load.ts in its
 * own process); per connection count, --rounds rounds (default 3) of every target, in alternating
 * order (fixed, info, warn, miss, Dovecot; then reversed; ...): each figure is the median of its
 * rounds (a 5 s run on this shared machine varies by ±10%). Prints the table and the ratios
 * against the issue's targets;
 * --write puts them into BENCHMARKS.md between the bench:peers markers.
 *
 *   node --import tsx bench/peers.ts [--connections 50,200] [--warmup 2] [--duration 5] [--users 200]
 *        [--rounds 3] [--retries 1] [--cpu-prof DIR] [--write] [--keep]
 *
 * Needs root, dovecot-core and a build (dist/cli.js). --cpu-prof DIR runs the overquota processes
 * under `node --cpu-prof` (summarise with bench/cpu-profile-summary.ts). With
 * OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/peers.json (bench/results.ts): every
 * configuration's req/s and latency at each connection count, and the target checks, for
 * bench/summary.ts.
 */
import { parseArgs } from 'node:util';
import { dovecotUnavailable, type DovecotInstance } from '../test/helpers/dovecot.js';
import type { LoadResult } from './policy-load.js';
import { dovecotVersion, maildirStoreArgs, recipients, startPeersDovecot } from './peers-data.js';
import { actionShares, cpuProfDirOption, finish, otherCpu, runLoadProcess, startCli, startFixed, startFrontend, type Target } from './policy-targets.js';
import { figureCheck, fmtMs, fmtRatio, fmtTarget, fmtVerdict, ratioCheck, saveResults, versionsOf, type Check, type PolicyFigure, type ResultsOfRun } from './results.js';
import {
  COMMON_OPTIONS,
  NOISY_OTHER_CPU,
  QUIET_WAIT_MS,
  commandLine,
  countLines,
  fmtInt,
  freePort,
  intArg,
  interleavedOrder,
  log,
  median,
  makeTmpDir,
  noiseNote,
  numArg,
  removeTmpDir,
  removeTmpDirSync,
  requireBuild,
  runBench,
  sectionHead,
  stopChildren,
  table,
  textFooter,
  tmp,
  viaNpm,
  waitForQuiet,
  printReport,
} from './shared.js';

const LABELS = {
  fixed: 'fixed server',
  info: 'overquota, warm cache (log info)',
  warn: 'overquota, warm cache (log warn)',
  miss: 'overquota, every lookup a miss (HTTP quota service)',
  dovecot: 'Dovecot quota-status',
} as const;
type Key = keyof typeof LABELS;

/** The issue's targets for item 1: ratios within one run, p99 at 50 connections. */
const TARGETS = { warmVsFixed: 0.8, warmVsDovecot: 20, warmP99Ms: 2, missVsDovecot: 5 };
/** Past this many seconds of the bench, a noisy run is not run again. */
const RETRY_BUDGET_S = 150;

interface Run {
  key: Key;
  connections: number;
  result: LoadResult;
  /** every-lookup-a-miss runs: decisions logged by the frontend, requests logged by the quota service (whole run). */
  decisions?: number;
  httpRequests?: number;
  httpErrors?: number;
}

let dovecot: DovecotInstance | null = null;

async function main(): Promise<number> {
  const started = performance.now();
  const { values } = parseArgs({
    options: {
      connections: { type: 'string', default: '50,200' },
      warmup: { type: 'string', default: '2' },
      duration: { type: 'string', default: '5' },
      users: { type: 'string', default: '200' },
      retries: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '3' },
      'cpu-prof': { type: 'string' },
      ...COMMON_OPTIONS,
    },
  });
  if (values.help) {
    console.log('usage: node --import tsx bench/peers.ts [--connections 50,200] [--warmup 2] [--duration 5] [--users 200] [--rounds 3] [--retries 1] [--cpu-prof DIR] [--write] [--keep]');
    return 0;
  }
  const counts = values.connections.split(',').map((w) => intArg('connections', w.trim(), 1, 1000));
  const warmup = numArg('warmup', values.warmup, 0.1, 30);
  const duration = numArg('duration', values.duration, 0.5, 30);
  const users = intArg('users', values.users, 10, 999);
  const retries = intArg('retries', values.retries, 0, 3);
  const rounds = intArg('rounds', values.rounds, 1, 9);
  tmp.keep = values.keep;
  const runsPlanned = counts.length * 5 * rounds;
  const estimate = runsPlanned * (warmup + duration + 2.5);
  if (estimate > 600) throw new Error(`about ${Math.round(estimate)} s of load: lower --warmup or --duration`);
  requireBuild();
  const why = dovecotUnavailable();
  if (why) throw new Error(why);
  const cpuProfDir = await cpuProfDirOption(values['cpu-prof']);

  const tmpDir = await makeTmpDir('overquota-bench-peers-');
  log(`starting a private Dovecot with ${users} Maildirs and quota-status`);
  dovecot = await startPeersDovecot(users, Math.max(...counts) + 60);
  const store = maildirStoreArgs(dovecot);
  const rcpts = recipients(users);

  log(`starting the servers (temp dir ${tmpDir}, Dovecot ${dovecot.dir})`);
  const fixed = await startFixed();
  const info = await startFrontend(LABELS.info, 'warm-info', tmpDir, [...store, '--log.level', 'info'], cpuProfDir);
  const warn = await startFrontend(LABELS.warn, 'warm-warn', tmpDir, [...store, '--log.level', 'warn'], cpuProfDir);
  const qsPort = await freePort();
  const quotaService = await startCli({
    label: 'overquota quota-service',
    name: 'quota-service',
    tmpDir,
    port: qsPort,
    // As many lookups at once as the frontend opens connections to it (source.max_connections 16):
    // the default 8 would answer the rest 503, and the frontend would answer them on_error.
    args: ['quota-service', '--quota_service.listen', `127.0.0.1:${qsPort}`, '--quota_service.max_concurrent_scans', '16', ...store, '--log.level', 'info'],
    cpuProfDir,
  });
  const miss = await startFrontend(
    LABELS.miss,
    'miss',
    tmpDir,
    ['--source.type', 'http', '--source.url', `http://127.0.0.1:${qsPort}/quota?u={key}`, '--source.max_connections', '16', '--cache.max_entries', '0', '--log.level', 'info'],
    cpuProfDir,
  );
  miss.cpuTree = [miss.pid, quotaService.proc.pid!];
  miss.alsoAlive = quotaService.proc;
  const dove: Target = {
    label: LABELS.dovecot,
    kind: 'dovecot',
    listen: `inet:127.0.0.1:${dovecot.quotaStatusPort}`,
    pid: dovecot.pid,
    cpuTree: [dovecot.pid],
  };
  const targets: Record<Key, Target> = { fixed, info, warn, miss, dovecot: dove };

  // Rounds in alternating order (forward, then reversed, ...), so drift of a shared machine during
  // the bench touches every target alike; each figure is the median of its rounds.
  const forward: Key[] = ['fixed', 'info', 'warn', 'miss', 'dovecot'];
  const order = counts.flatMap((connections) => interleavedOrder(forward, rounds).map(({ key }) => ({ key, connections })));
  const runs: Run[] = [];
  for (const [i, { key, connections }] of order.entries()) {
    const target = targets[key];
    log(`[${i + 1}/${order.length}] ${target.label}: ${connections} connections, ${warmup} s warm-up, ${duration} s measured`);
    let run: Run;
    for (let attempt = 0; ; attempt++) {
      await waitForQuiet(QUIET_WAIT_MS);
      const counted = key === 'miss';
      const before = counted ? await missCounts(miss.logFile!, quotaService.logFile) : null;
      // Dovecot at 200 connections can take longer than 5 s for one answer; it is its latency, not a failure.
      const result = await runLoadProcess(target, { connections, warmup, duration, recipients: rcpts, timeoutMs: 30_000 });
      run = { key, connections, result };
      if (before) {
        const after = await missCounts(miss.logFile!, quotaService.logFile);
        run.decisions = after.decisions - before.decisions;
        run.httpRequests = after.httpRequests - before.httpRequests;
        run.httpErrors = after.httpErrors - before.httpErrors;
      }
      const other = otherCpu(result);
      const elapsed = (performance.now() - started) / 1000;
      if (other === null || other <= NOISY_OTHER_CPU || attempt >= retries || elapsed > RETRY_BUDGET_S) break;
      log(`    noisy: other processes used ${other}% of a core (${result.rps} req/s); running it again`);
    }
    runs.push(run);
    const r = run.result;
    log(
      `    ${r.rps} req/s, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, max ${r.maxMs} ms, errors ${r.errors}; CPU server ${r.serverCpuPct}%${r.serverTreeCpuPct && r.serverTreeCpuPct.length > 1 ? ` (${r.serverTreeCpuPct.join(' + ')})` : ''} client ${r.clientCpuPct}% other ${otherCpu(r) ?? '?'}%` +
        (run.decisions !== undefined ? `; ${run.httpRequests} HTTP requests for ${run.decisions} decisions, ${run.httpErrors} HTTP errors` : ''),
    );
  }

  await stopChildren();
  await dovecot.stop();
  dovecot = null;

  const report = buildReport({ runs, counts, warmup, duration, users, rounds, recipients: rcpts.length, argv: process.argv.slice(2) });
  printReport(report, values.write, 'peers', 'overquota next to its peers: policy requests per second', INTRO);
  saveResults('peers', report.results);
  return finish(
    cpuProfDir,
    runs.reduce((n, r) => n + r.result.errors + (r.httpErrors ?? 0), 0),
  );
}

/** Decision lines of the miss frontend, and quota service request lines (all, and 4xx/5xx ones). */
async function missCounts(frontendLog: string, serviceLog: string): Promise<{ decisions: number; httpRequests: number; httpErrors: number }> {
  const [decisions, httpRequests, httpErrors] = await Promise.all([
    countLines(frontendLog, ['"msg":"decision"']),
    countLines(serviceLog, ['"msg":"quota request"']),
    countLines(serviceLog, ['"msg":"quota request"', '"level":40']),
  ]);
  return { decisions, httpRequests, httpErrors };
}

async function cleanup(): Promise<void> {
  await stopChildren();
  await dovecot?.stop().catch(() => undefined);
  dovecot = null;
  await removeTmpDir();
}

// ---------------------------------------------------------------- report

const INTRO = `**What is measured.** The issue's item 1: policy requests per second and latency (p50, p99, max)
at 50 and at 200 persistent connections, in one invocation of \`bench/peers.ts\`, for overquota
with a warm cache, overquota with every lookup a miss through the HTTP quota service, the
fixed-answer Node server (the ceiling) and Dovecot's own quota-status policy service, all on the
same mailboxes. Targets (ratios within one run): warm cache ≥ 0.8× the fixed server, ≥ 20× Dovecot
quota-status, p99 ≤ 2 ms at 50 connections; every lookup a miss ≥ 5× Dovecot quota-status.

- **Data** (\`bench/peers-data.ts\`): a private Dovecot 2.3 (\`test/helpers/dovecot.ts\`; needs root and
  dovecot-core) with 200 passwd-file users, each a Maildir with a 100 KiB quota (\`quota = maildir\`,
  \`quota_grace = 0\`, \`quota_status_nouser = DUNNO\`), filled by the bench: 1 in 10 full, 1 in 10
  over, 1 in 10 with 100 bytes of room (a 300-byte message does not fit), the rest with 0–60 KiB
  used; \`doveadm quota recalc -A\` then writes every Maildir's \`maildirsize\`. overquota reads the
  same Maildirs (\`--store.type maildir --store.mailbox {user}/Maildir\`; the limit from Dovecot's
  \`maildirsize\`).
- **Load**: \`bench/policy-load.ts\` (its own process), as in the section above: closed loop, the
  31-attribute Postfix RCPT request, here over 210 recipients (200 mailboxes as
  \`user000@example.com\`, \`User001@Example.com\`, \`user002+tag@example.org\`, and 10 addresses of
  no mailbox); 2 s warm-up, 5 s measured; a request unanswered for 30 s is an error.
- **fixed server**: \`bench/fixed-server.ts\` (\`action=DUNNO\` to everything).
- **Order**: at each connection count, 3 rounds of all five targets, forward (fixed, warm info,
  warm warn, miss, Dovecot), then reversed, then forward; each figure (req/s, p50, p99) is the
  **median** of its rounds, max the highest. A single 5 s run varies by about ±10% here.
- **overquota, warm cache**: \`dist/cli.js frontend\` reading the Maildirs itself, default cache
  (under quota 30 s — shortened near the limit —, over quota 10 s), \`--log.level info\` (one
  decision line per request, stdout to a file) and \`--log.level warn\`.
- **overquota, every lookup a miss**: \`dist/cli.js frontend --source.type http --cache.max_entries 0\`
  (\`MemoryCache.set\` keeps nothing when \`maxEntries\` is 0) asking
  \`dist/cli.js quota-service\` (\`--quota_service.max_concurrent_scans 16\`, matching the frontend's
  \`source.max_connections 16\`; the default 8 answers the 9th concurrent lookup 503) over HTTP; the
  quota service reads the Maildirs. Both log at info. Concurrent lookups of one mailbox in the
  frontend still share one HTTP request (single-flight): the table says how many HTTP requests the
  quota service logged per decision.
- **Dovecot quota-status**: \`service quota-status { executable = quota-status -p postfix;
  client_limit = 1 }\` on an inet listener, \`default_process_limit\` raised above the connection
  count (with \`client_limit = 1\` each persistent connection holds one quota-status process; at
  the default 100, connections past the 100th would wait in the listen queue). Each request makes
  it look the user up (auth process, userdb) and open the user's quota (\`maildirsize\`). Its CPU
  is that of every Dovecot process (master, quota-status, auth, log …).
- CPU columns in % of one core over the measured window; for the miss rows "frontend + quota
  service". "vs Dovecot" divides by Dovecot quota-status at the same connection count.

**Reproduce.** \`npm run bench\` runs it with \`--write\`, which rewrites the section below between
its markers; alone: \`node --import tsx bench/peers.ts [--write]\` (about 4.5 minutes; root and
dovecot-core) after \`npm run build\`. Options: \`--connections 50,200\`, \`--warmup 2\`,
\`--duration 5\`, \`--users 200\`, \`--rounds 3\`, \`--retries 1\`, \`--cpu-prof DIR\`, \`--keep\`.`;

interface Summary {
  key: Key;
  connections: number;
  runs: number;
  rps: number;
  p50: number;
  p99: number;
  max: number;
  errors: number;
  serverCpu: string;
  clientCpu: number;
}

function summarise(key: Key, connections: number, runs: Run[]): Summary {
  const rs = runs.map((r) => r.result);
  const mean = (f: (r: LoadResult) => number) => rs.reduce((a, r) => a + f(r), 0) / rs.length;
  const medianOf = (f: (r: LoadResult) => number) => median(rs.map(f));
  const tree = rs[0]!.serverTreeCpuPct;
  let serverCpu: string;
  if (tree && tree.length > 1) {
    serverCpu = tree.map((_, i) => (rs.every((r) => r.serverTreeCpuPct?.[i] != null) ? `${Math.round(mean((r) => r.serverTreeCpuPct![i]!))}%` : '?')).join(' + ');
  } else {
    serverCpu = rs.every((r) => r.serverCpuPct !== null) ? `${Math.round(mean((r) => r.serverCpuPct!))}%` : '?';
  }
  return {
    key,
    connections,
    runs: rs.length,
    rps: Math.round(medianOf((r) => r.rps)),
    p50: medianOf((r) => r.p50Ms),
    p99: medianOf((r) => r.p99Ms),
    max: Math.max(...rs.map((r) => r.maxMs)),
    errors: rs.reduce((a, r) => a + r.errors, 0),
    serverCpu,
    clientCpu: Math.round(mean((r) => r.clientCpuPct)),
  };
}

function buildReport(o: {
  runs: Run[];
  counts: number[];
  warmup: number;
  duration: number;
  users: number;
  rounds: number;
  recipients: number;
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<PolicyFigure> } {
  const summaries: Summary[] = [];
  for (const c of o.counts) {
    for (const key of Object.keys(LABELS) as Key[]) {
      const runs = o.runs.filter((r) => r.key === key && r.connections === c);
      if (runs.length > 0) summaries.push(summarise(key, c, runs));
    }
  }
  const find = (key: Key, c: number) => summaries.find((s) => s.key === key && s.connections === c)!;
  const ratio = (a: Summary, b: Summary) => (b.rps > 0 ? a.rps / b.rps : 0);

  const head = ['connections', 'target', 'runs', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'vs fixed', 'vs Dovecot'];
  const rows = summaries.map((s) => [
    String(s.connections),
    LABELS[s.key],
    String(s.runs),
    fmtInt(s.rps),
    fmtMs(s.p50),
    fmtMs(s.p99),
    fmtMs(s.max),
    String(s.errors),
    s.serverCpu,
    `${s.clientCpu}%`,
    s.key === 'fixed' ? '1.00' : fmtRatio(ratio(s, find('fixed', s.connections))),
    s.key === 'dovecot' ? '1.00' : fmtRatio(ratio(s, find('dovecot', s.connections))),
  ]);

  // The issue's targets, each row: connections, what, measured, target, verdict.
  const targetChecks: { connections: number; what: string; check: Check }[] = [];
  const add = (connections: number, what: string, check: Check) => targetChecks.push({ connections, what, check });
  for (const c of o.counts) {
    const fixed = find('fixed', c);
    const dove = find('dovecot', c);
    const at = `, ${c} connections`;
    for (const key of ['info', 'warn'] as Key[]) {
      const s = find(key, c);
      add(c, `${LABELS[key]} / fixed server`, ratioCheck(`${LABELS[key]} / fixed server${at}`, s.rps, fixed.rps, 'req/s', '>=', TARGETS.warmVsFixed));
      add(c, `${LABELS[key]} / Dovecot quota-status`, ratioCheck(`${LABELS[key]} / Dovecot quota-status${at}`, s.rps, dove.rps, 'req/s', '>=', TARGETS.warmVsDovecot));
      if (c === 50) add(c, `${LABELS[key]}: p99`, figureCheck(`${LABELS[key]}: p99${at}`, s.p99, 'ms', '<=', TARGETS.warmP99Ms));
    }
    const m = find('miss', c);
    add(c, `${LABELS.miss} / Dovecot quota-status`, ratioCheck(`${LABELS.miss} / Dovecot quota-status${at}`, m.rps, dove.rps, 'req/s', '>=', TARGETS.missVsDovecot));
  }
  const checks = targetChecks.map(({ connections, what, check }) => [
    String(connections),
    what,
    check.ratio === null ? `${fmtMs(check.measured ?? NaN)} ms` : `${fmtRatio(check.ratio)}×`,
    fmtTarget(check),
    fmtVerdict(check),
  ]);
  const checkHead = ['connections', 'ratio or figure', 'measured', 'target', 'verdict'];

  const runHead = ['#', 'connections', 'target', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'machine idle', 'other CPU'];
  const runRows = o.runs.map((r, i) => {
    const t = r.result.serverTreeCpuPct;
    return [
      String(i + 1),
      String(r.connections),
      LABELS[r.key],
      fmtInt(r.result.rps),
      fmtMs(r.result.p50Ms),
      fmtMs(r.result.p99Ms),
      fmtMs(r.result.maxMs),
      String(r.result.errors),
      t && t.length > 1 ? t.map((x) => (x === null ? '?' : `${x}%`)).join(' + ') : r.result.serverCpuPct === null ? '?' : `${r.result.serverCpuPct}%`,
      `${r.result.clientCpuPct}%`,
      r.result.machineIdlePct === null ? '?' : `${r.result.machineIdlePct}%`,
      otherCpu(r.result) === null ? '?' : `${otherCpu(r.result)}%`,
    ];
  });
  const noise = noiseNote(o.runs.map((r) => otherCpu(r.result)));

  const answers = (['info', 'miss', 'dovecot'] as Key[]).map((key) => {
    const r = o.runs.find((x) => x.key === key);
    return r ? `${LABELS[key]}: ${actionShares(r.result.actions)}` : '';
  });
  const missRuns = o.runs.filter((r) => r.key === 'miss');
  const missNote = missRuns
    .map(
      (r) =>
        `at ${r.connections} connections the quota service logged ${fmtInt(r.httpRequests ?? 0)} HTTP requests for ${fmtInt(r.decisions ?? 0)} decisions (${r.decisions ? ((r.httpRequests ?? 0) / r.decisions).toFixed(2) : '?'} per decision; warm-up included), ${r.httpErrors ?? 0} of them answered with an error`,
    )
    .join('; ');
  const command = commandLine('peers.ts', o.argv);
  const verdicts = checks.filter((c) => c[4] === 'MISSES').length;
  const summaryLine =
    verdicts === 0 ? 'Every target of item 1 is met in this run.' : `${verdicts} of ${checks.length} checks MISS their target in this run (see the notes above the section).`;

  const text = [
    table(head, rows, false),
    '',
    table(checkHead, checks, false),
    '',
    'Runs, in the order they ran:',
    table(runHead, runRows, false),
    '',
    noise,
    `answers (first run of each): ${answers.join('; ')}`,
    `every lookup a miss: ${missNote}`,
    summaryLine,
    ...textFooter(),
  ].join('\n');

  const markdown = [
    ...sectionHead('peers', [dovecotVersion()]),
    `Command: \`${command}\`${viaNpm()}. ${o.users} mailboxes, ${o.recipients} recipient addresses; at ${o.counts.join(' and ')} persistent connections, ${o.warmup} s warm-up then ${o.duration} s measured per run; ${o.rounds} round(s) of every target in alternating order at each connection count, each figure the median of its rounds.`,
    '',
    table(head, rows, true),
    '',
    "The issue's targets (ratios of requests/s within this run):",
    '',
    table(checkHead, checks, true),
    '',
    summaryLine,
    '',
    'Every run, in order (server, client and other CPU in % of one core; machine idle in % of all cores; other = busy cores minus server and client):',
    '',
    table(runHead, runRows, true),
    '',
    noise,
    '',
    `Answers in the first run of each: ${answers.join('; ')}. Every lookup a miss: ${missNote}.`,
    '<!-- bench:peers:end -->',
  ].join('\n');
  const results: ResultsOfRun<PolicyFigure> = {
    command,
    figures: summaries.map((s) => ({ key: s.key, label: LABELS[s.key], connections: s.connections, runs: s.runs, rps: s.rps, p50Ms: s.p50, p99Ms: s.p99, maxMs: s.max, errors: s.errors })),
    checks: targetChecks.map((c) => c.check),
    problems: summaries.flatMap((s) => (s.errors > 0 ? [`${LABELS[s.key]} at ${s.connections} connections: ${s.errors} failed request(s)`] : [])),
    noise,
    versions: versionsOf(dovecotVersion()),
  };
  return { text, markdown, results };
}

// Last resort if something throws past main(): no server may outlive the bench, no temp dir stays.
runBench(main, cleanup, { onExit: removeTmpDirSync });
