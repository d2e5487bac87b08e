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
 * Then, alternating (a, b, c, a, b, c with --rounds 2): (a) `smtpd_milters` empty, (b)
 * `smtpd_milters = inet:127.0.0.1:PORT` (overquota), (c) the pymilter's port, switched with
 * postconf + `postfix reload`; each run is
 * `/usr/sbin/smtp-source -s 20 -m 2000 -t ok@example.com 127.0.0.1:SMTPPORT`, timed, after a short
 * unmeasured warm-up run (--warmup-messages) so both configurations start with running smtpd
 * processes. Reports messages/s per configuration (mean of its runs), the ratios b / a and b / c
 * (target: overquota ≥ 1.5× the pymilter); --write
 * puts them into BENCHMARKS.md between the bench:milter markers.
 *
 *   npm run bench      # build, then bench/policy.ts, bench/cluster.ts and this, with --write
 *   node --import tsx bench/milter.ts [--sessions 20] [--messages 2000] [--rounds 2]
 *        [--warmup-messages 200] [--write] [--keep]
 *
 * Delivery is discard(8), so messages/s measures smtpd, cleanup, qmgr and the milter, not a
 * mailbox store.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startPostfix, postfixUnavailable, type PostfixInstance } from '../test/helpers/postfix.js';
import {
  BENCHMARKS_MD,
  CLI,
  ROOT,
  COMMON_OPTIONS,
  commandLine,
  countLines,
  cpuPct,
  idlePct,
  kernelThreadsCpuSeconds,
  fmtInt,
  freePort,
  intArg,
  log,
  machineJiffies,
  makeTmpDir,
  noiseNote,
  procStats,
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
  updateMarkdown,
  viaNpm,
  waitAccepting,
  waitForQuiet,
} from './shared.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const RECIPIENT = 'ok@example.com';

/** Debian's python3 (the python3-milter package installs the Milter module for it). */
const PYTHON = '/usr/bin/python3';
const PYMILTER = path.join(ROOT, 'bench', 'pymilter_quota.py');
/** Target: Postfix msgs/s with the overquota milter at least this many times the pymilter's. */
const TARGET_VS_PYMILTER = 1.5;

type ConfigName = 'no milter' | 'overquota milter' | 'pymilter';
const CONFIGS: ConfigName[] = ['no milter', 'overquota milter', 'pymilter'];

interface Run {
  config: ConfigName;
  messages: number;
  seconds: number;
  mps: number;
  decisions: number;
  /** CPU of the milter process of this configuration (the frontend or the pymilter). */
  milterCpu: number | null;
  postfixCpu: number | null;
  sourceCpu: number | null;
  kernelCpu: number | null;
  machineIdle: number | null;
  otherCpu: number | null;
}

let postfix: PostfixInstance | null = null;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      sessions: { type: 'string', default: '20' },
      messages: { type: 'string', default: '2000' },
      rounds: { type: 'string', default: '2' },
      'warmup-messages': { type: 'string', default: '200' },
      ...COMMON_OPTIONS,
    },
  });
  if (values.help) {
    console.log('usage: node --import tsx bench/milter.ts [--sessions 20] [--messages 2000] [--rounds 2] [--warmup-messages 200] [--write] [--keep]');
    return 0;
  }
  const sessions = intArg('sessions', values.sessions, 1, 100);
  const messages = intArg('messages', values.messages, 1, 50_000);
  const rounds = intArg('rounds', values.rounds, 1, 5);
  const warmupMessages = intArg('warmup-messages', values['warmup-messages'], 0, 10_000);
  tmp.keep = values.keep;
  requireBuild();
  if (!existsSync(SMTP_SOURCE)) throw new Error(`${SMTP_SOURCE} is missing (it ships with Postfix: scripts/install-deps.sh)`);
  const why = postfixUnavailable();
  if (why) throw new Error(why);
  await ensurePymilter();

  const tmpDir = await makeTmpDir('overquota-bench-milter-');
  const spool = path.join(tmpDir, 'mail');
  await mkdir(spool); // empty: every mailbox is empty, with 200M of room

  const milterPort = await freePort();
  const logFile = path.join(tmpDir, 'frontend.log');
  const out = openSync(logFile, 'w');
  const frontend = track(
    spawn(
      process.execPath,
      [CLI, 'frontend', '--milter.listen', `inet:127.0.0.1:${milterPort}`, '--policy.listen', '', '--store.path', spool, '--store.limit', '200M', '--log.level', 'info'],
      { cwd: ROOT, stdio: ['ignore', out, out] },
    ),
  );
  closeSync(out);
  await waitAccepting(milterPort, frontend, async () => (await readFile(logFile, 'utf8').catch(() => '')).trim() || 'no output');
  const milter = `inet:127.0.0.1:${milterPort}`;
  log(`overquota milter on ${milter} (log ${logFile})`);

  const pyPort = await freePort();
  const pyLog = path.join(tmpDir, 'pymilter.log');
  const pyOut = openSync(pyLog, 'w');
  const pymilter = track(spawn(PYTHON, [PYMILTER, `inet:${pyPort}@127.0.0.1`, spool, String(200 * 1024 * 1024)], { cwd: ROOT, stdio: ['ignore', pyOut, pyOut] }));
  closeSync(pyOut);
  await waitAccepting(pyPort, pymilter, async () => (await readFile(pyLog, 'utf8').catch(() => '')).trim() || 'no output');
  const pyMilter = `inet:127.0.0.1:${pyPort}`;
  log(`pymilter on ${pyMilter} (log ${pyLog})`);
  const milterOf: Record<ConfigName, { socket: string; proc: ChildProcess | null; count: () => Promise<number> }> = {
    'no milter': { socket: '', proc: null, count: async () => 0 },
    'overquota milter': { socket: milter, proc: frontend, count: () => countLines(logFile, ['"face":"milter"', '"msg":"decision"']) },
    pymilter: { socket: pyMilter, proc: pymilter, count: () => countLines(pyLog, ['decision ']) },
  };

  postfix = await startPostfix({
    smtpdRecipientRestrictions: 'reject_unauth_destination, permit',
    extraMain: { milter_default_action: 'tempfail' },
  });
  postfixVersion = `Postfix ${(await postfix.postconf('-h', 'mail_version')).trim()}`;
  log(`${postfixVersion} on 127.0.0.1:${postfix.smtpPort} (${postfix.dir})`);

  const order: ConfigName[] = [];
  for (let r = 0; r < rounds; r++) order.push(...CONFIGS);
  const runs: Run[] = [];
  let current: string | null = null;
  for (const [i, config] of order.entries()) {
    const wanted = milterOf[config].socket;
    if (current !== wanted) {
      await postfix.postconf('-e', `smtpd_milters = ${wanted}`);
      await postfix.reload();
      current = wanted;
    }
    log(`[${i + 1}/${order.length}] ${config}: smtp-source -s ${sessions} -m ${messages} (after ${warmupMessages} unmeasured)`);
    if (warmupMessages > 0) await smtpSource(postfix.smtpPort, sessions, warmupMessages);
    await waitForQuiet();
    // Every milter's decision lines, so a message that went to the wrong one shows.
    const before = await Promise.all(CONFIGS.map((c) => milterOf[c].count()));
    const run = await measured(config, postfix, milterOf[config].proc, sessions, messages);
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
    const expected = r.config === 'no milter' ? 0 : r.messages;
    if (r.decisions !== expected) problems.push(`run #${i + 1} (${r.config}): ${r.decisions} milter decisions logged, expected ${expected}`);
  }
  if (notAccepted > 0) problems.push(`${notAccepted} milter decision(s) were errors`);
  if (pyTempfails > 0) problems.push(`${pyTempfails} pymilter decision(s) were 452 (every mailbox should have room)`);
  if (milterWarnings.length > 0) problems.push(`${milterWarnings.length} milter warning(s) in the Postfix log, e.g. ${milterWarnings[0]}`);

  const report = buildReport({ runs, sessions, messages, warmupMessages, rounds, decisionsTotal, pyDecisionsTotal, problems, argv: process.argv.slice(2) });
  console.log(`\n${report.text}`);
  if (values.write) {
    updateMarkdown(BENCHMARKS_MD, 'milter', 'Postfix messages per second through the milter', INTRO, report.markdown);
    log('BENCHMARKS.md updated');
  }
  if (problems.length > 0) {
    for (const p of problems) log(`problem: ${p}`);
    return 1;
  }
  return 0;
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

/** Runs smtp-source; resolves to the seconds it took and its CPU (bash `times`: the child's). */
async function smtpSource(port: number, sessions: number, messages: number): Promise<{ seconds: number; cpu: number | null }> {
  // bash runs smtp-source and prints its children's CPU times with the `times` builtin.
  const script = `"$@"; rc=$?; times >&2; exit $rc`;
  const args = ['-c', script, 'bash', SMTP_SOURCE, '-s', String(sessions), '-m', String(messages), '-t', RECIPIENT, `127.0.0.1:${port}`];
  const started = performance.now();
  const run = await runProcess('/bin/bash', args, { limitMs: 120_000 });
  const seconds = (performance.now() - started) / 1000;
  const { code } = run;
  const out = run.out + run.err;
  // `times`: line 1 the shell's own user/sys, line 2 its children's, as "0m0.123s 0m0.456s".
  const times = [...out.matchAll(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/gm)];
  const child = times[1];
  const cpu = child ? Number(child[1]) * 60 + Number(child[2]) + Number(child[3]) * 60 + Number(child[4]) : null;
  const text = out.replace(/^\d+m[\d.]+s \d+m[\d.]+s$/gm, '').trim();
  if (code !== 0) throw new Error(`smtp-source exited ${code}: ${text || 'no output'}`);
  if (text) log(`    smtp-source said: ${text.slice(0, 300)}`);
  return { seconds, cpu };
}

/**
 * CPU seconds of a Postfix instance: every live process in master's process group (master leads
 * it), plus what master has reaped (its children's CPU, cutime + cstime).
 */
function postfixCpuSeconds(masterPid: number): number | null {
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

async function measured(config: ConfigName, pf: PostfixInstance, milterProc: ChildProcess | null, sessions: number, messages: number): Promise<Run> {
  const milterCpuNow = () => (milterProc ? processCpuSeconds(milterProc.pid!) : 0);
  const m0 = machineJiffies();
  const k0 = kernelThreadsCpuSeconds();
  const f0 = milterCpuNow();
  const p0 = postfixCpuSeconds(pf.pid);
  const { seconds, cpu } = await smtpSource(pf.smtpPort, sessions, messages);
  const m1 = machineJiffies();
  const k1 = kernelThreadsCpuSeconds();
  const f1 = milterCpuNow();
  const p1 = postfixCpuSeconds(pf.pid);
  const pct = (a: number | null, b: number | null) => cpuPct(a, b, seconds);
  const milterCpu = pct(f0, f1);
  const postfixCpu = pct(p0, p1);
  const sourceCpu = cpu === null ? null : Math.round((cpu / seconds) * 1000) / 10;
  const machineIdle = idlePct(m0, m1);
  const kernelCpu = pct(k0, k1);
  const otherCpu =
    machineIdle === null || kernelCpu === null || postfixCpu === null || sourceCpu === null || milterCpu === null
      ? null
      : Math.round((100 - machineIdle) * os.availableParallelism() - kernelCpu - postfixCpu - sourceCpu - milterCpu);
  return { config, messages, seconds, mps: messages / seconds, decisions: 0, milterCpu, postfixCpu, sourceCpu, kernelCpu, machineIdle, otherCpu };
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
- **Order**: no milter, overquota, pymilter, then again (\`smtpd_milters\` switched with \`postconf\`
  and \`postfix reload\`); each configuration's figure is the mean of its runs.
- CPU columns (in % of one core over the run): the milter (the frontend or the pymilter process); Postfix (every process of the instance,
  including the ones that exited); smtp-source; kernel threads (ksoftirqd, kworker, jbd2: network
  and disk work, e.g. Postfix's queue files, charged to no process); other = busy cores minus all
  of those: other processes on the machine.

**Reproduce.** \`npm run bench\` runs it last with \`--write\`, which rewrites the section below
between its markers; alone: \`node --import tsx bench/milter.ts [--write]\` (about 45 s, needs root
and the Debian postfix package) after \`npm run build\`. Options: \`--sessions 20\`, \`--messages
2000\`, \`--rounds 2\`, \`--warmup-messages 200\`, \`--keep\` (keep the milters' logs).
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
}): { text: string; markdown: string } {
  const runsOf = (c: ConfigName) => o.runs.filter((r) => r.config === c);
  const mean = (c: ConfigName) => runsOf(c).reduce((a, r) => a + r.mps, 0) / Math.max(1, runsOf(c).length);
  const base = mean('no milter');
  const oq = mean('overquota milter');
  const py = mean('pymilter');
  const cpuMean = (c: ConfigName, f: (r: Run) => number | null) => {
    const xs = runsOf(c).map(f);
    return xs.every((x) => x !== null) ? `${Math.round((xs as number[]).reduce((a, b) => a + b, 0) / xs.length)}%` : '?';
  };
  const vsPy = py > 0 ? oq / py : 0;
  const verdict = `${vsPy.toFixed(2)} ${vsPy >= TARGET_VS_PYMILTER ? 'meets' : 'MISSES'} ≥ ${TARGET_VS_PYMILTER}`;
  const head = ['configuration', 'runs', 'msgs/s (mean)', 'each run', 'vs no milter', 'overquota vs pymilter', 'milter CPU', 'Postfix CPU', 'smtp-source CPU'];
  const rows = CONFIGS.map((c) => [
    c,
    String(runsOf(c).length),
    fmtInt(mean(c)),
    runsOf(c)
      .map((r) => fmtInt(r.mps))
      .join(', '),
    c === 'no milter' ? '1.00' : (base > 0 ? mean(c) / base : 0).toFixed(2),
    c === 'overquota milter' ? verdict : c === 'pymilter' ? '(contrast)' : '-',
    c === 'no milter' ? '-' : cpuMean(c, (r) => r.milterCpu),
    cpuMean(c, (r) => r.postfixCpu),
    cpuMean(c, (r) => r.sourceCpu),
  ]);
  const runHead = ['#', 'configuration', 'messages', 'seconds', 'msgs/s', 'milter decisions logged', 'milter CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'other CPU'];
  const q = (x: number | null) => (x === null ? '?' : `${x}%`);
  const runRows = o.runs.map((r, i) => [
    String(i + 1),
    r.config,
    fmtInt(r.messages),
    r.seconds.toFixed(2),
    fmtInt(r.mps),
    fmtInt(r.decisions),
    r.config === 'no milter' ? '-' : q(r.milterCpu),
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
  const idleOf = (c: ConfigName) => {
    const xs = runsOf(c).map((r) => r.machineIdle);
    return xs.every((x) => x !== null) ? (xs as number[]).reduce((a, b) => a + b, 0) / xs.length : null;
  };
  const waitingFor = (c: ConfigName) => {
    const idle = idleOf(c);
    const idleBase = idleOf('no milter');
    return idle !== null && idleBase !== null && idle > idleBase + 15
      ? ` The machine is ${Math.round(idle)}% idle during the ${c} runs (${Math.round(idleBase)}% without a milter): that milter makes the SMTP sessions wait, it does not run out of CPU.`
      : '';
  };
  const shows =
    `Through the overquota milter Postfix accepts ${(base > 0 ? oq / base : 0).toFixed(2)}× the messages per second it accepts without a milter (${fmtInt(oq)} against ${fmtInt(base)}), ` +
    `and ${vsPy.toFixed(2)}× what it accepts through the minimal pymilter (${fmtInt(py)} msgs/s, ${(base > 0 ? py / base : 0).toFixed(2)}× no milter): ` +
    `the target of ≥ ${TARGET_VS_PYMILTER}× the pymilter is ${vsPy >= TARGET_VS_PYMILTER ? 'met' : 'MISSED'}.${waitingFor('overquota milter')}${waitingFor('pymilter')}`;
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
    `Command: \`${command}\`${viaNpm()}. Each run ${load} (one message per connection), after ${o.warmupMessages} unmeasured messages; ${o.rounds} round(s) of no milter, overquota milter, pymilter; delivery discarded.`,
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
  return { text, markdown };
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
