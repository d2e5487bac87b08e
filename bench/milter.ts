/*
 * Postfix messages per second through the overquota milter, against the same Postfix without a
 * milter and with a minimal pymilter doing the same check (bench/pymilter_quota.py), in one
 * invocation.
 *
 * Starts, on loopback:
 *   - an `overquota frontend` milter-only (`--milter.listen inet:127.0.0.1:PORT --policy.listen ''`)
 *     on an empty mbox spool in a temporary directory (`--store.limit 200M`: every mailbox has room),
 *     `--log.level info` with stdout to a file (one decision line per recipient, counted afterwards
 *     to prove the milter was consulted);
 *   - a private Postfix (test/helpers/postfix.ts: needs root; every delivery discarded),
 *     `smtpd_recipient_restrictions = reject_unauth_destination, permit`,
 *     `milter_default_action = tempfail` (a milter failure fails the run instead of passing unseen);
 *   - the contrast: bench/pymilter_quota.py under Debian's /usr/bin/python3 (package python3-milter,
 *     installed with apt-get when missing and we are root), on the same spool with the same limit,
 *     one short line per recipient to a file (as overquota's decision line; counted the same way).
 * Then, in interleaved rounds (a, b, c, then c, b, a, then a, b, c with the default --rounds 3):
 * (a) `smtpd_milters` empty, (b) `smtpd_milters = inet:127.0.0.1:PORT` (overquota), (c) the
 * pymilter's port, switched with postconf + `postfix reload`; each run is
 * `/usr/sbin/smtp-source -s 20 -m 2000 -t ok@example.com 127.0.0.1:SMTPPORT`, timed, after a short
 * unmeasured warm-up run (--warmup-messages) so every configuration starts with running smtpd
 * processes. Reports messages/s per configuration (the median of its runs, with their spread
 * min–max), the ratios of the medians b / a and b / c (target: overquota ≥ 1.5× the pymilter), and
 * b / c within each round; --write puts them into BENCHMARKS.md between the bench:milter markers.
 * Before each run it waits for a quiet machine (10 s at most, 20 s in all). About 70 s with 3 rounds.
 *
 *   npm run bench      # build, then every bench with --write
 *   node --import tsx bench/milter.ts [--sessions 20] [--messages 2000] [--rounds 3]
 *        [--warmup-messages 200] [--write] [--keep]
 *
 * With OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/milter.json (bench/results.ts): each
 * configuration's median, spread and runs, and the target check, for bench/summary.ts.
 *
 * Delivery is discard(8), so messages/s measures smtpd, cleanup, qmgr and the milter, not a
 * mailbox store.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { PostfixInstance } from '../test/helpers/postfix.js';
import { fmtSpread, interleavedOrder, measureSmtpSource, msgsFigure, quietWaiter, medianOrNull, perRoundRatios, requirePostfix, smtpSource, smtpSourceCommand, spreadOf, startBenchPostfix, type SmtpSourceRun, type Spread } from './postfix-runs.js';
import { ratioCheck, saveResults, versionsOf, type MsgsFigure, type ResultsOfRun } from './results.js';
import {
  CLI,
  ROOT,
  commandLine,
  countLines,
  fmtInt,
  freePort,
  log,
  makeTmpDir,
  noiseNote,
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
  viaNpm,
  spawnLogged,
  printReport,
  problemsExitCode,
} from './shared.js';

const RECIPIENT = 'ok@example.com';

/** Debian's python3 (the python3-milter package installs the Milter module for it). */
const PYTHON = '/usr/bin/python3';
const PYMILTER = path.join(ROOT, 'bench', 'pymilter_quota.py');
/** Target: Postfix msgs/s with the overquota milter at least this many times the pymilter's. */
const TARGET_VS_PYMILTER = 1.5;
/** Rounds by default: 9 runs, about 70 s in all. */
const DEFAULT_ROUNDS = 3;
/** Waiting for a quiet machine before the runs: at most this much in all (quietWaiter). */
const QUIET_BUDGET_MS = 20_000;

type ConfigName = 'no milter' | 'overquota milter' | 'pymilter';
const CONFIGS: ConfigName[] = ['no milter', 'overquota milter', 'pymilter'];
/** The keys of the configurations in the results (bench/results.ts). */
const RESULT_KEYS: Record<ConfigName, string> = { 'no milter': 'none', 'overquota milter': 'overquota', pymilter: 'pymilter' };

/** serverCpu: the CPU of the milter process of this configuration (the frontend or the pymilter). */
interface Run extends SmtpSourceRun {
  key: ConfigName;
  round: number;
  messages: number;
  decisions: number;
}

let postfix: PostfixInstance | null = null;

async function main(): Promise<number> {
  const args = smtpSourceCommand('milter.ts', DEFAULT_ROUNDS, 8);
  if (!args) return 0;
  const { sessions, messages, rounds, warmupMessages } = args;
  requireBuild();
  requirePostfix();
  await ensurePymilter();

  const tmpDir = await makeTmpDir('overquota-bench-milter-');
  const spool = path.join(tmpDir, 'mail');
  await mkdir(spool); // empty: every mailbox is empty, with 200M of room

  const milterPort = await freePort();
  const logFile = path.join(tmpDir, 'frontend.log');
  const frontend = await spawnLogged(
    process.execPath,
    [CLI, 'frontend', '--milter.listen', `inet:127.0.0.1:${milterPort}`, '--policy.listen', '', '--store.path', spool, '--store.limit', '200M', '--log.level', 'info'],
    logFile,
    milterPort,
  );
  const milter = `inet:127.0.0.1:${milterPort}`;
  log(`overquota milter on ${milter} (log ${logFile})`);

  const pyPort = await freePort();
  const pyLog = path.join(tmpDir, 'pymilter.log');
  const pymilter = await spawnLogged(PYTHON, [PYMILTER, `inet:${pyPort}@127.0.0.1`, spool, String(200 * 1024 * 1024)], pyLog, pyPort);
  const pyMilter = `inet:127.0.0.1:${pyPort}`;
  log(`pymilter on ${pyMilter} (log ${pyLog})`);
  const milterOf: Record<ConfigName, { socket: string; proc: ChildProcess | null; count: () => Promise<number> }> = {
    'no milter': { socket: '', proc: null, count: async () => 0 },
    'overquota milter': { socket: milter, proc: frontend, count: () => countLines(logFile, ['"face":"milter"', '"msg":"decision"']) },
    pymilter: { socket: pyMilter, proc: pymilter, count: () => countLines(pyLog, ['decision ']) },
  };

  ({ postfix, version: postfixVersion } = await startBenchPostfix({
    smtpdRecipientRestrictions: 'reject_unauth_destination, permit',
    extraMain: { milter_default_action: 'tempfail' },
  }));

  const order = interleavedOrder(CONFIGS, rounds);
  const runs: Run[] = [];
  const waitQuiet = quietWaiter(QUIET_BUDGET_MS);
  let current: string | null = null;
  for (const [i, { key: config, round }] of order.entries()) {
    const wanted = milterOf[config].socket;
    if (current !== wanted) {
      await postfix.postconf('-e', `smtpd_milters = ${wanted}`);
      await postfix.reload();
      current = wanted;
    }
    log(`[${i + 1}/${order.length}] ${config}: smtp-source -s ${sessions} -m ${messages} (after ${warmupMessages} unmeasured)`);
    if (warmupMessages > 0) await smtpSource(postfix.smtpPort, sessions, warmupMessages, RECIPIENT);
    await waitQuiet();
    // Every milter's decision lines, so a message that went to the wrong one shows.
    const before = await Promise.all(CONFIGS.map((c) => milterOf[c].count()));
    const run = await measured(config, round, postfix, milterOf[config].proc, sessions, messages);
    const after = await Promise.all(CONFIGS.map((c) => milterOf[c].count()));
    run.decisions = after.reduce((a, n, j) => a + n - before[j]!, 0);
    runs.push(run);
    log(`    ${run.mps.toFixed(0)} msgs/s (${run.seconds.toFixed(2)} s); milter decisions logged ${run.decisions}; other CPU ${run.otherCpu ?? '?'}%`);
  }

  await stopChild(frontend);
  await stopChild(pymilter);
  const decisionsTotal = await countLines(logFile, ['"face":"milter"', '"msg":"decision"']);
  const pyDecisionsTotal = await countLines(pyLog, ['decision ']);
  const pyTempfails = await countLines(pyLog, ['decision ', ' 452']);
  const notAccepted = await countLines(logFile, ['"face":"milter"', '"msg":"decision"', '"verdict":"error"']);
  const maillog = await postfix.maillog();
  const milterWarnings = maillog.split('\n').filter((l) => /warning: .*milter/i.test(l));
  await postfix.stop();
  postfix = null;

  const problems: string[] = [];
  for (const [i, r] of runs.entries()) {
    const expected = r.key === 'no milter' ? 0 : r.messages;
    if (r.decisions !== expected) problems.push(`run #${i + 1} (${r.key}): ${r.decisions} milter decisions logged, expected ${expected}`);
  }
  if (notAccepted > 0) problems.push(`${notAccepted} milter decision(s) were errors`);
  if (pyTempfails > 0) problems.push(`${pyTempfails} pymilter decision(s) were 452 (every mailbox should have room)`);
  if (milterWarnings.length > 0) problems.push(`${milterWarnings.length} milter warning(s) in the Postfix log, e.g. ${milterWarnings[0]}`);

  const report = buildReport({ runs, sessions, messages, warmupMessages, rounds, decisionsTotal, pyDecisionsTotal, problems, argv: process.argv.slice(2) });
  printReport(report, args.write, 'milter', 'Postfix messages per second through the milter', INTRO);
  saveResults('milter', { ...report.results, problems });
  return problemsExitCode(problems);
}

// ---------------------------------------------------------------- runs

/**
 * Makes sure Debian's python3 can `import Milter`: when it cannot and we are root, installs the
 * python3-milter package with apt-get (apt-get update first when the package is not known yet).
 */
async function ensurePymilter(): Promise<void> {
  const importable = async () => (await runProcess(PYTHON, ['-c', 'import Milter'], { limitMs: 30_000 })).code === 0;
  if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: the pymilter contrast needs Debian's python3 and python3-milter`);
  if (!(await importable())) await installPymilter();
  const v = await runProcess(PYTHON, ['-c', 'import sys, Milter; print("Python %d.%d.%d, pymilter %s" % (sys.version_info[:3] + (Milter.__version__,)))'], { limitMs: 30_000 });
  if (v.code === 0) pythonVersion = v.out.trim();
}

async function installPymilter(): Promise<void> {
  const importable = async () => (await runProcess(PYTHON, ['-c', 'import Milter'], { limitMs: 30_000 })).code === 0;
  log(`${PYTHON} cannot import Milter: apt-get install -y python3-milter`);
  const install = () => runProcess('apt-get', ['install', '-y', '-q', 'python3-milter'], { limitMs: 300_000 });
  let r = await install();
  if (r.code !== 0) {
    await runProcess('apt-get', ['update', '-q'], { limitMs: 300_000 });
    r = await install();
  }
  if (r.code !== 0 || !(await importable())) {
    throw new Error(`the pymilter contrast needs the Debian package python3-milter (apt-get install python3-milter), and installing it failed: ${(r.err || r.out).trim().split('\n').slice(-3).join(' / ')}`);
  }
}

async function measured(key: ConfigName, round: number, pf: PostfixInstance, milterProc: ChildProcess | null, sessions: number, messages: number): Promise<Run> {
  const r = await measureSmtpSource(pf, { sessions, messages, recipient: RECIPIENT, serverCpuSeconds: () => (milterProc ? processCpuSeconds(milterProc.pid!) : 0) });
  return { key, round, messages, decisions: 0, ...r };
}

// ---------------------------------------------------------------- report

const INTRO = `
**What is measured.** Messages per second a Postfix accepts from \`smtp-source\` with the overquota
milter (\`smtpd_milters\`), the same Postfix without a milter, and with a minimal pymilter doing the
same check, in one invocation of \`bench/milter.ts\`: what checking every recipient through the
milter costs an MTA. Target (issue): Postfix msgs/s with the overquota milter **≥ 1.5× with the
pymilter**.

- **Postfix**: a private instance (\`test/helpers/postfix.ts\`) on a loopback port,
  \`smtpd_recipient_restrictions = reject_unauth_destination, permit\`, \`milter_default_action =
  tempfail\` (a milter failure fails the run rather than passing unnoticed), every delivery
  **discarded** (discard(8)): messages/s measures smtpd, cleanup, qmgr and the milter, not a mailbox
  store. Logging to a file through postlogd, as the harness does.
- **overquota**: the built \`dist/cli.js frontend --milter.listen inet:127.0.0.1:PORT --policy.listen ''
  --store.path TMP --store.limit 200M --log.level info\` on an empty mbox spool (every mailbox has
  room: every recipient passes), one JSON decision line per recipient written to a file — part of
  the cost, and counted to prove each message went through the milter.
- **pymilter** (\`bench/pymilter_quota.py\`): Debian's \`/usr/bin/python3\` with python3-milter
  (libmilter, a thread per connection; the bench installs the package with apt-get when it is
  missing). At RCPT it takes the local part (brackets off, \`+extension\` cut, lower case), \`lstat\`s
  the mbox file under the same spool, compares with the same 200M limit and answers CONTINUE, or
  \`452 4.2.2 Mailbox full, try again later\` with TEMPFAIL; no cache; one short line per recipient to
  a file (counted like overquota's decision lines). It negotiates no CONNECT, HELO, MAIL, header or
  body callbacks; it answers DATA, as overquota does, since a skipped DATA costs ~40 ms per message
  in Nagle's algorithm (below) and would measure TCP rather than the milter.
- **Load**: \`/usr/sbin/smtp-source -s 20 -m 2000 -t ok@example.com 127.0.0.1:PORT\`: 20 parallel
  sessions, 2000 messages, one message (one recipient) per SMTP connection, so each message is also
  one milter connection. Timed from start to exit; before each measured run an unmeasured one of 200
  messages, so both configurations start with smtpd processes running.
- **Order**: no milter, overquota, pymilter, then the reverse, then forward again: 3 rounds
  (\`smtpd_milters\` switched with \`postconf\` and \`postfix reload\`); each configuration's figure is
  the **median** of its runs, with their spread (min–max); the ratios are those of the medians.
- CPU columns (in % of one core over the run): the milter (the frontend or the pymilter process); Postfix (every process of the instance,
  including the ones that exited); smtp-source; kernel threads (ksoftirqd, kworker, jbd2: network
  and disk work, e.g. Postfix's queue files, charged to no process); other = busy cores minus all
  of those: other processes on the machine.

**Reproduce.** \`npm run bench\` runs it with \`--write\`, which rewrites the section below
between its markers; alone: \`node --import tsx bench/milter.ts [--write]\` (about 70 s, needs root
and the Debian postfix package) after \`npm run build\`. Options: \`--sessions 20\`, \`--messages
2000\`, \`--rounds 3\`, \`--warmup-messages 200\`, \`--keep\` (keep the milters' logs).
`;

function buildReport(o: {
  runs: Run[];
  sessions: number;
  messages: number;
  warmupMessages: number;
  rounds: number;
  decisionsTotal: number;
  pyDecisionsTotal: number;
  problems: string[];
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<MsgsFigure> } {
  const runsOf = (c: ConfigName) => o.runs.filter((r) => r.key === c);
  const spread = Object.fromEntries(CONFIGS.map((c) => [c, spreadOf(runsOf(c))])) as Record<ConfigName, Spread>;
  const mps = (c: ConfigName) => spread[c].median;
  const base = mps('no milter');
  const oq = mps('overquota milter');
  const py = mps('pymilter');
  const cpuMedian = (c: ConfigName, f: (r: Run) => number | null) => {
    const m = medianOrNull(runsOf(c).map(f));
    return m === null ? '?' : `${m}%`;
  };
  const check = ratioCheck('Postfix msgs/s with the overquota milter / with the pymilter', oq, py, 'msgs/s', '>=', TARGET_VS_PYMILTER);
  const vsPy = check.ratio!;
  const verdict = `${vsPy.toFixed(2)} ${check.met ? 'meets' : 'MISSES'} ≥ ${TARGET_VS_PYMILTER} (per round ${perRoundRatios(o.runs, 'overquota milter', 'pymilter')})`;
  const head = ['configuration', 'runs', 'msgs/s (median)', 'min–max', 'each run', 'vs no milter', 'overquota vs pymilter', 'milter CPU', 'Postfix CPU', 'smtp-source CPU'];
  const rows = CONFIGS.map((c) => [
    c,
    String(runsOf(c).length),
    fmtInt(mps(c)),
    fmtSpread(spread[c]),
    runsOf(c)
      .map((r) => fmtInt(r.mps))
      .join(', '),
    c === 'no milter' ? '1.00' : (base > 0 ? mps(c) / base : 0).toFixed(2),
    c === 'overquota milter' ? verdict : c === 'pymilter' ? '(contrast)' : '-',
    c === 'no milter' ? '-' : cpuMedian(c, (r) => r.serverCpu),
    cpuMedian(c, (r) => r.postfixCpu),
    cpuMedian(c, (r) => r.sourceCpu),
  ]);
  const runHead = ['#', 'round', 'configuration', 'messages', 'seconds', 'msgs/s', 'milter decisions logged', 'milter CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'other CPU'];
  const q = (x: number | null) => (x === null ? '?' : `${x}%`);
  const runRows = o.runs.map((r, i) => [
    String(i + 1),
    String(r.round + 1),
    r.key,
    fmtInt(r.messages),
    r.seconds.toFixed(2),
    fmtInt(r.mps),
    fmtInt(r.decisions),
    r.key === 'no milter' ? '-' : q(r.serverCpu),
    q(r.postfixCpu),
    q(r.sourceCpu),
    q(r.kernelCpu),
    q(r.machineIdle),
    q(r.otherCpu),
  ]);
  const noise = noiseNote(o.runs.map((r) => r.otherCpu));
  const sum = (c: ConfigName, f: (r: Run) => number) => fmtInt(runsOf(c).reduce((a, r) => a + f(r), 0));
  const consulted =
    o.problems.length === 0
      ? `Each milter was consulted for every message of its runs: ${sum('overquota milter', (r) => r.decisions)} overquota decision lines for ${sum('overquota milter', (r) => r.messages)} messages (${fmtInt(o.decisionsTotal)} with the warm-up runs), ${sum('pymilter', (r) => r.decisions)} pymilter lines for ${sum('pymilter', (r) => r.messages)} messages (${fmtInt(o.pyDecisionsTotal)} with the warm-up runs), none in the runs without a milter, no milter warning in the Postfix log.`
      : `PROBLEMS: ${o.problems.join('; ')}.`;
  const idleOf = (c: ConfigName) => medianOrNull(runsOf(c).map((r) => r.machineIdle));
  const waitingFor = (c: ConfigName) => {
    const idle = idleOf(c);
    const idleBase = idleOf('no milter');
    return idle !== null && idleBase !== null && idle > idleBase + 15
      ? ` The machine is ${Math.round(idle)}% idle during the ${c} runs (${Math.round(idleBase)}% without a milter): that milter makes the SMTP sessions wait, it does not run out of CPU.`
      : '';
  };
  const shows =
    `Through the overquota milter Postfix accepts ${(base > 0 ? oq / base : 0).toFixed(2)}× the messages per second it accepts without a milter (medians ${fmtInt(oq)} against ${fmtInt(base)}), ` +
    `and ${vsPy.toFixed(2)}× what it accepts through the minimal pymilter (${fmtInt(py)} msgs/s, ${(base > 0 ? py / base : 0).toFixed(2)}× no milter): ` +
    `the target of ≥ ${TARGET_VS_PYMILTER}× the pymilter is ${check.met ? 'met' : 'MISSED'}.${waitingFor('overquota milter')}${waitingFor('pymilter')}`;
  const command = commandLine('milter.ts', o.argv);
  const load = `\`smtp-source -s ${o.sessions} -m ${o.messages} -t ${RECIPIENT}\``;
  const text = [
    table(head, rows, false),
    '',
    'Runs, in the order they ran:',
    table(runHead, runRows, false),
    '',
    noise,
    consulted,
    shows,
    ...textFooter(),
  ].join('\n');
  const markdown = [
    ...sectionHead('milter', [postfixVersion, pythonVersion]),
    `Command: \`${command}\`${viaNpm()}. Each run ${load} (one message per connection), after ${o.warmupMessages} unmeasured messages; ${o.rounds} round(s) of no milter, overquota milter, pymilter, every other one in reverse order; delivery discarded. Each configuration's msgs/s is the median of its runs (min–max: their spread); the ratios are those of the medians.`,
    '',
    table(head, rows, true),
    '',
    'Every run, in order (CPU in % of one core over the run; milter CPU: the overquota frontend or the pymilter process, all threads; kernel threads: ksoftirqd, kworker, jbd2 (network and disk work charged to no process); machine idle in % of all cores; other = busy cores minus everything listed; below zero is accounting slack: process times are exact, the busy time of the machine is sampled at clock ticks, which misses short bursts between idle periods):',
    '',
    table(runHead, runRows, true),
    '',
    noise,
    '',
    `${shows} ${consulted}`,
    '<!-- bench:milter:end -->',
  ].join('\n');
  const results: ResultsOfRun<MsgsFigure> = {
    command,
    figures: CONFIGS.map((c) => msgsFigure(RESULT_KEYS[c], c, runsOf(c), o)),
    checks: [check],
    noise,
    versions: versionsOf(postfixVersion, pythonVersion),
  };
  return { text, markdown, results };
}

/** "Postfix 3.7.11", read with postconf once the instance runs. */
let postfixVersion = 'Postfix (version unknown)';
/** "Python 3.11.2, pymilter 1.0.5", read once the module is known to import. */
let pythonVersion = 'pymilter (version unknown)';

// ---------------------------------------------------------------- cleanup

async function cleanup(): Promise<void> {
  await stopChildren();
  await postfix?.stop().catch(() => undefined);
  postfix = null;
  await removeTmpDir();
}

runBench(main, cleanup);
