/*
 * Postfix messages per second through the overquota milter, against the same Postfix without it,
 * in one invocation.
 *
 * Starts, on loopback:
 *   - an `overquota frontend` milter-only (`--milter.listen inet:127.0.0.1:PORT --policy.listen ''`)
 *     on an empty mbox spool in a temporary directory (`--store.limit 200M`: every mailbox has room),
 *     `--log.level info` with stdout to a file (one decision line per recipient, counted afterwards
 *     to prove the milter was consulted);
 *   - a private Postfix (test/helpers/postfix.ts: needs root; every delivery discarded),
 *     `smtpd_recipient_restrictions = reject_unauth_destination, permit`,
 *     `milter_default_action = tempfail` (a milter failure fails the run instead of passing unseen).
 * Then, alternating (a, b, a, b with --rounds 2): (a) `smtpd_milters` empty, (b) `smtpd_milters =
 * inet:127.0.0.1:PORT`, switched with postconf + `postfix reload`; each run is
 * `/usr/sbin/smtp-source -s 20 -m 2000 -t ok@example.com 127.0.0.1:SMTPPORT`, timed, after a short
 * unmeasured warm-up run (--warmup-messages) so both configurations start with running smtpd
 * processes. Reports messages/s per configuration (mean of its runs) and the ratio b / a; --write
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

type ConfigName = 'no milter' | 'overquota milter';

interface Run {
  config: ConfigName;
  messages: number;
  seconds: number;
  mps: number;
  decisions: number;
  frontendCpu: number | null;
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

  postfix = await startPostfix({
    smtpdRecipientRestrictions: 'reject_unauth_destination, permit',
    extraMain: { milter_default_action: 'tempfail' },
  });
  postfixVersion = `Postfix ${(await postfix.postconf('-h', 'mail_version')).trim()}`;
  log(`${postfixVersion} on 127.0.0.1:${postfix.smtpPort} (${postfix.dir})`);

  const order: ConfigName[] = [];
  for (let r = 0; r < rounds; r++) order.push('no milter', 'overquota milter');
  const runs: Run[] = [];
  let current: string | null = null;
  for (const [i, config] of order.entries()) {
    const wanted = config === 'no milter' ? '' : milter;
    if (current !== wanted) {
      await postfix.postconf('-e', `smtpd_milters = ${wanted}`);
      await postfix.reload();
      current = wanted;
    }
    log(`[${i + 1}/${order.length}] ${config}: smtp-source -s ${sessions} -m ${messages} (after ${warmupMessages} unmeasured)`);
    if (warmupMessages > 0) await smtpSource(postfix.smtpPort, sessions, warmupMessages);
    await waitForQuiet();
    const decisionsBefore = await countLines(logFile, ['"face":"milter"', '"msg":"decision"']);
    const run = await measured(config, postfix, frontend, sessions, messages);
    run.decisions = (await countLines(logFile, ['"face":"milter"', '"msg":"decision"'])) - decisionsBefore;
    runs.push(run);
    log(`    ${run.mps.toFixed(0)} msgs/s (${run.seconds.toFixed(2)} s); milter decisions logged ${run.decisions}; other CPU ${run.otherCpu ?? '?'}%`);
  }

  await stopChild(frontend);
  const decisionsTotal = await countLines(logFile, ['"face":"milter"', '"msg":"decision"']);
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
  if (milterWarnings.length > 0) problems.push(`${milterWarnings.length} milter warning(s) in the Postfix log, e.g. ${milterWarnings[0]}`);

  const report = buildReport({ runs, sessions, messages, warmupMessages, rounds, decisionsTotal, problems, argv: process.argv.slice(2) });
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

async function measured(config: ConfigName, pf: PostfixInstance, frontend: ChildProcess, sessions: number, messages: number): Promise<Run> {
  const m0 = machineJiffies();
  const k0 = kernelThreadsCpuSeconds();
  const f0 = processCpuSeconds(frontend.pid!);
  const p0 = postfixCpuSeconds(pf.pid);
  const { seconds, cpu } = await smtpSource(pf.smtpPort, sessions, messages);
  const m1 = machineJiffies();
  const k1 = kernelThreadsCpuSeconds();
  const f1 = processCpuSeconds(frontend.pid!);
  const p1 = postfixCpuSeconds(pf.pid);
  const pct = (a: number | null, b: number | null) => cpuPct(a, b, seconds);
  const frontendCpu = pct(f0, f1);
  const postfixCpu = pct(p0, p1);
  const sourceCpu = cpu === null ? null : Math.round((cpu / seconds) * 1000) / 10;
  const machineIdle = idlePct(m0, m1);
  const kernelCpu = pct(k0, k1);
  const otherCpu =
    machineIdle === null || kernelCpu === null || postfixCpu === null || sourceCpu === null || frontendCpu === null
      ? null
      : Math.round((100 - machineIdle) * os.availableParallelism() - kernelCpu - postfixCpu - sourceCpu - frontendCpu);
  return { config, messages, seconds, mps: messages / seconds, decisions: 0, frontendCpu, postfixCpu, sourceCpu, kernelCpu, machineIdle, otherCpu };
}

// ---------------------------------------------------------------- report

const INTRO = `
**What is measured.** Messages per second a Postfix accepts from \`smtp-source\` with the overquota
milter (\`smtpd_milters\`) against the same Postfix without it, in one invocation of
\`bench/milter.ts\`: what checking every recipient through the milter costs an MTA.

- **Postfix**: a private instance (\`test/helpers/postfix.ts\`) on a loopback port,
  \`smtpd_recipient_restrictions = reject_unauth_destination, permit\`, \`milter_default_action =
  tempfail\` (a milter failure fails the run rather than passing unnoticed), every delivery
  **discarded** (discard(8)): messages/s measures smtpd, cleanup, qmgr and the milter, not a mailbox
  store. Logging to a file through postlogd, as the harness does.
- **overquota**: the built \`dist/cli.js frontend --milter.listen inet:127.0.0.1:PORT --policy.listen ''
  --store.path TMP --store.limit 200M --log.level info\` on an empty mbox spool (every mailbox has
  room: every recipient passes), one JSON decision line per recipient written to a file — part of
  the cost, and counted to prove each message went through the milter.
- **Load**: \`/usr/sbin/smtp-source -s 20 -m 2000 -t ok@example.com 127.0.0.1:PORT\`: 20 parallel
  sessions, 2000 messages, one message (one recipient) per SMTP connection, so each message is also
  one milter connection. Timed from start to exit; before each measured run an unmeasured one of 200
  messages, so both configurations start with smtpd processes running.
- **Order**: no milter, milter, no milter, milter (\`smtpd_milters\` switched with \`postconf\` and
  \`postfix reload\`); each configuration's figure is the mean of its runs.
- CPU columns (in % of one core over the run): the frontend; Postfix (every process of the instance,
  including the ones that exited); smtp-source; kernel threads (ksoftirqd, kworker, jbd2: network
  and disk work, e.g. Postfix's queue files, charged to no process); other = busy cores minus all
  of those: other processes on the machine.

**Reproduce.** \`npm run bench\` runs it last with \`--write\`, which rewrites the section below
between its markers; alone: \`node --import tsx bench/milter.ts [--write]\` (about 25 s, needs root
and the Debian postfix package) after \`npm run build\`. Options: \`--sessions 20\`, \`--messages
2000\`, \`--rounds 2\`, \`--warmup-messages 200\`, \`--keep\` (keep the frontend log).
`;

function buildReport(o: {
  runs: Run[];
  sessions: number;
  messages: number;
  warmupMessages: number;
  rounds: number;
  decisionsTotal: number;
  problems: string[];
  argv: string[];
}): { text: string; markdown: string } {
  const configs: ConfigName[] = ['no milter', 'overquota milter'];
  const mean = (c: ConfigName) => {
    const rs = o.runs.filter((r) => r.config === c);
    return rs.reduce((a, r) => a + r.mps, 0) / Math.max(1, rs.length);
  };
  const base = mean('no milter');
  const cpuMean = (c: ConfigName, f: (r: Run) => number | null) => {
    const xs = o.runs.filter((r) => r.config === c).map(f);
    return xs.every((x) => x !== null) ? `${Math.round((xs as number[]).reduce((a, b) => a + b, 0) / xs.length)}%` : '?';
  };
  const head = ['configuration', 'runs', 'msgs/s (mean)', 'each run', 'vs no milter', 'frontend CPU', 'Postfix CPU', 'smtp-source CPU'];
  const rows = configs.map((c) => [
    c,
    String(o.runs.filter((r) => r.config === c).length),
    fmtInt(mean(c)),
    o.runs
      .filter((r) => r.config === c)
      .map((r) => fmtInt(r.mps))
      .join(', '),
    c === 'no milter' ? '1.00' : (base > 0 ? mean(c) / base : 0).toFixed(2),
    cpuMean(c, (r) => r.frontendCpu),
    cpuMean(c, (r) => r.postfixCpu),
    cpuMean(c, (r) => r.sourceCpu),
  ]);
  const runHead = ['#', 'configuration', 'messages', 'seconds', 'msgs/s', 'milter decisions logged', 'frontend CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'other CPU'];
  const q = (x: number | null) => (x === null ? '?' : `${x}%`);
  const runRows = o.runs.map((r, i) => [
    String(i + 1),
    r.config,
    fmtInt(r.messages),
    r.seconds.toFixed(2),
    fmtInt(r.mps),
    fmtInt(r.decisions),
    q(r.frontendCpu),
    q(r.postfixCpu),
    q(r.sourceCpu),
    q(r.kernelCpu),
    q(r.machineIdle),
    q(r.otherCpu),
  ]);
  const noise = noiseNote(o.runs.map((r) => r.otherCpu));
  const milterRuns = o.runs.filter((r) => r.config === 'overquota milter');
  const consulted = o.problems.length === 0
    ? `The milter was consulted for every message: ${fmtInt(milterRuns.reduce((a, r) => a + r.decisions, 0))} milter decision lines in the measured runs for ${fmtInt(milterRuns.reduce((a, r) => a + r.messages, 0))} messages (${fmtInt(o.decisionsTotal)} with the warm-up runs), none in the runs without it, no milter warning in the Postfix log.`
    : `PROBLEMS: ${o.problems.join('; ')}.`;
  const ratio = base > 0 ? mean('overquota milter') / base : 0;
  const idleOf = (c: ConfigName) => {
    const xs = o.runs.filter((r) => r.config === c).map((r) => r.machineIdle);
    return xs.every((x) => x !== null) ? (xs as number[]).reduce((a, b) => a + b, 0) / xs.length : null;
  };
  const idleMilter = idleOf('overquota milter');
  const idleBase = idleOf('no milter');
  const waiting =
    idleMilter !== null && idleBase !== null && idleMilter > idleBase + 15
      ? ` The machine is ${Math.round(idleMilter)}% idle during the milter runs (${Math.round(idleBase)}% without the milter): the milter makes the SMTP sessions wait, it does not run out of CPU.`
      : '';
  const shows = `Through the milter Postfix accepts ${ratio.toFixed(2)}× the messages per second it accepts without it (${fmtInt(mean('overquota milter'))} against ${fmtInt(base)}).${waiting}`;
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
    ...sectionHead('milter', [postfixVersion]),
    `Command: \`${command}\`${viaNpm()}. Each run ${load} (one message per connection), after ${o.warmupMessages} unmeasured messages; ${o.rounds} round(s) of no milter then milter; delivery discarded.`,
    '',
    table(head, rows, true),
    '',
    'Every run, in order (CPU in % of one core over the run; kernel threads: ksoftirqd, kworker, jbd2 (network and disk work charged to no process); machine idle in % of all cores; other = busy cores minus everything listed; below zero is accounting slack: process times are exact, the busy time of the machine is sampled at clock ticks, which misses short bursts between idle periods):',
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

// ---------------------------------------------------------------- cleanup

async function cleanup(): Promise<void> {
  await stopChildren();
  await postfix?.stop().catch(() => undefined);
  postfix = null;
  await removeTmpDir();
}

runBench(main, cleanup);
