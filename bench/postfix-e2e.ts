/*
 * Postfix end to end with smtp-source (the item 2): messages per second a private Postfix
 * accepts with no policy check, with check_policy_service to the fixed-answer server, to overquota
 * and to Dovecot quota-status, in one invocation.
 *
 * Starts, on loopback: the Dovecot and Maildirs of bench/peers-data.ts (quota-status,
 * client_limit = 1); bench/fixed-server.ts; an `overquota frontend` reading the same Maildirs
 * (log.level info, stdout to a file); a private Postfix (test/helpers/postfix.ts: needs root;
 * every delivery discarded). The configurations are switched with postconf + `postfix reload`:
 *   none:      smtpd_recipient_restrictions = reject_unauth_destination, permit
 *   the others: reject_unauth_destination, check_policy_service inet:127.0.0.1:PORT, permit
 * and each run is `smtp-source -s 20 -m 2000 -t user000@example.com 127.0.0.1:SMTPPORT` (a
 * mailbox with room), timed, after an unmeasured warm-up of 200 messages (running smtpd processes,
 * their policy connections open). Rounds go none, fixed, overquota, Dovecot, then back in reverse
 * order, so drift of the machine partly cancels. Before the measured runs of a policy
 * configuration one RCPT TO a full mailbox must get the server's 452 (fixed: 250, and the fixed
 * server must count the requests): proof that Postfix asks it.
 *
 *   node --import tsx bench/postfix-e2e.ts [--sessions 20] [--messages 2000] [--rounds 2]
 *        [--warmup-messages 200] [--write] [--keep]
 */
import os from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { dovecotUnavailable, type DovecotInstance } from '../test/helpers/dovecot.js';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../test/helpers/postfix.js';
import { sendEnvelope } from '../test/helpers/smtp.js';
import { dovecotVersion, maildirStoreArgs, startPeersDovecot, userName } from './peers-data.js';
import { fixedRequests, startFixed, startFrontend, type Target } from './policy-targets.js';
import {
  BENCHMARKS_MD,
  COMMON_OPTIONS,
  commandLine,
  countLines,
  cpuPct,
  fmtInt,
  idlePct,
  intArg,
  kernelThreadsCpuSeconds,
  log,
  machineJiffies,
  makeTmpDir,
  noiseNote,
  procStats,
  processTreeCpuSeconds,
  removeTmpDir,
  removeTmpDirSync,
  requireBuild,
  runBench,
  runProcess,
  sectionHead,
  stopChildren,
  table,
  textFooter,
  tmp,
  updateMarkdown,
  viaNpm,
  waitForQuiet,
} from './shared.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const USERS = 20;
/** user000: a mailbox with room (every message is accepted); user001: full. */
const RECIPIENT = `${userName(0)}@example.com`;
const FULL = `${userName(1)}@example.com`;
const TARGETS = { vsFixed: 0.95, vsDovecot: 1.4 };

const LABELS = {
  none: 'no policy check',
  fixed: 'fixed-answer server',
  overquota: 'overquota (warm cache, log info)',
  dovecot: 'Dovecot quota-status',
} as const;
type Key = keyof typeof LABELS;

interface Run {
  key: Key;
  messages: number;
  seconds: number;
  mps: number;
  /** Policy requests the server saw during the run (fixed: its count; overquota: decision lines); null: not countable. */
  requests: number | null;
  serverCpu: number | null;
  postfixCpu: number | null;
  sourceCpu: number | null;
  kernelCpu: number | null;
  machineIdle: number | null;
  /** Part of machineIdle spent waiting for disk I/O (iowait), % of all cores. */
  iowait: number | null;
  otherCpu: number | null;
}

let postfix: PostfixInstance | null = null;
let dovecot: DovecotInstance | null = null;
let postfixVersion = 'Postfix (version unknown)';

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
    console.log('usage: node --import tsx bench/postfix-e2e.ts [--sessions 20] [--messages 2000] [--rounds 2] [--warmup-messages 200] [--write] [--keep]');
    return 0;
  }
  const sessions = intArg('sessions', values.sessions, 1, 100);
  const messages = intArg('messages', values.messages, 1, 50_000);
  const rounds = intArg('rounds', values.rounds, 1, 4);
  const warmupMessages = intArg('warmup-messages', values['warmup-messages'], 0, 10_000);
  tmp.keep = values.keep;
  requireBuild();
  if (!existsSync(SMTP_SOURCE)) throw new Error(`${SMTP_SOURCE} is missing (it ships with Postfix: scripts/install-deps.sh)`);
  const why = postfixUnavailable() || dovecotUnavailable();
  if (why) throw new Error(why);

  const tmpDir = await makeTmpDir('overquota-bench-e2e-');
  log(`starting a private Dovecot with ${USERS} Maildirs and quota-status`);
  // Each smtpd process keeps its own policy connection: one quota-status process each.
  dovecot = await startPeersDovecot(USERS, 300);
  const fixed = await startFixed();
  const overquota = await startFrontend(LABELS.overquota, 'frontend', tmpDir, [...maildirStoreArgs(dovecot), '--log.level', 'info']);
  const dove: Target = { label: LABELS.dovecot, kind: 'dovecot', listen: `inet:127.0.0.1:${dovecot.quotaStatusPort}`, pid: dovecot.pid };
  const servers: Record<Exclude<Key, 'none'>, Target> = { fixed, overquota, dovecot: dove };

  postfix = await startPostfix({ smtpdRecipientRestrictions: 'reject_unauth_destination, permit' });
  postfixVersion = `Postfix ${(await postfix.postconf('-h', 'mail_version')).trim()}`;
  log(`${postfixVersion} on 127.0.0.1:${postfix.smtpPort} (${postfix.dir})`);

  const round: Key[] = ['none', 'fixed', 'overquota', 'dovecot'];
  const order: Key[] = [];
  for (let r = 0; r < rounds; r++) order.push(...(r % 2 === 0 ? round : [...round].reverse()));
  const runs: Run[] = [];
  const problems: string[] = [];
  let current: Key | null = null;
  for (const [i, key] of order.entries()) {
    const server = key === 'none' ? null : servers[key];
    if (current !== key) {
      const restrictions = server
        ? `reject_unauth_destination, check_policy_service ${server.listen}, permit`
        : 'reject_unauth_destination, permit';
      await postfix.postconf('-e', `smtpd_recipient_restrictions = ${restrictions}`);
      await postfix.reload();
      current = key;
      problems.push(...(await probe(postfix.smtpPort, key, server)));
    }
    log(`[${i + 1}/${order.length}] ${LABELS[key]}: smtp-source -s ${sessions} -m ${messages} (after ${warmupMessages} unmeasured)`);
    if (warmupMessages > 0) await smtpSource(postfix.smtpPort, sessions, warmupMessages);
    await waitForQuiet();
    const before = await requestsSeen(server, overquota);
    const run = await measured(key, postfix, server, sessions, messages);
    const after = await requestsSeen(server, overquota);
    run.requests = before === null || after === null ? null : after - before;
    if (run.requests !== null && run.requests < messages) problems.push(`run #${i + 1} (${LABELS[key]}): the policy server saw ${run.requests} requests for ${messages} messages`);
    runs.push(run);
    log(`    ${run.mps.toFixed(0)} msgs/s (${run.seconds.toFixed(2)} s); policy requests ${run.requests ?? '-'}; server CPU ${run.serverCpu ?? '-'}%, Postfix ${run.postfixCpu}%, other ${run.otherCpu ?? '?'}%`);
  }

  const maillog = await postfix.maillog();
  const policyWarnings = maillog.split('\n').filter((l) => /warning: .*(policy|problem talking)/i.test(l));
  if (policyWarnings.length > 0) problems.push(`${policyWarnings.length} policy warning(s) in the Postfix log, e.g. ${policyWarnings[0]}`);
  await postfix.stop();
  postfix = null;
  await stopChildren();
  await dovecot.stop();
  dovecot = null;

  const report = buildReport({ runs, sessions, messages, warmupMessages, rounds, problems, argv: process.argv.slice(2) });
  console.log(`\n${report.text}`);
  if (values.write) {
    updateMarkdown(BENCHMARKS_MD, 'postfix', 'Postfix end to end: no policy check, fixed server, overquota, Dovecot quota-status', INTRO, report.markdown);
    log('BENCHMARKS.md updated');
  }
  if (problems.length > 0) {
    for (const p of problems) log(`problem: ${p}`);
    return 1;
  }
  return 0;
}

/** One RCPT TO a full mailbox: 452 from overquota and Dovecot, 250 otherwise (fixed: counted). */
async function probe(port: number, key: Key, server: Target | null): Promise<string[]> {
  const before = key === 'fixed' && server ? await fixedRequests(server) : 0;
  const r = await sendEnvelope({ port, from: 'probe@example.org', rcpts: [FULL] });
  const code = r.rcpt[0]?.code;
  const expected = key === 'overquota' || key === 'dovecot' ? 452 : 250;
  const problems: string[] = [];
  if (code !== expected) problems.push(`${LABELS[key]}: RCPT TO:<${FULL}> got ${code} ${r.rcpt[0]?.text ?? ''}, expected ${expected}`);
  if (key === 'fixed' && server && (await fixedRequests(server)) <= before) problems.push('fixed-answer server: Postfix did not ask it');
  return problems;
}

async function requestsSeen(server: Target | null, overquota: Target): Promise<number | null> {
  if (!server) return null;
  if (server.kind === 'fixed') return fixedRequests(server);
  if (server === overquota) return countLines(overquota.logFile!, ['"msg":"decision"']);
  return null;
}

// ---------------------------------------------------------------- runs

/** [iowait, total] jiffies of the whole machine (/proc/stat), or null. */
function iowaitJiffies(): [number, number] | null {
  try {
    const n = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    return [n[4] ?? 0, n.reduce((a, b) => a + b, 0)];
  } catch {
    return null;
  }
}

/** Runs smtp-source; resolves to the seconds it took and its CPU (bash `times`: the child's). */
async function smtpSource(port: number, sessions: number, messages: number): Promise<{ seconds: number; cpu: number | null }> {
  const script = `"$@"; rc=$?; times >&2; exit $rc`;
  const args = ['-c', script, 'bash', SMTP_SOURCE, '-s', String(sessions), '-m', String(messages), '-t', RECIPIENT, `127.0.0.1:${port}`];
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

/** CPU seconds of a Postfix instance: every process in master's process group, plus what master reaped. */
function postfixCpuSeconds(masterPid: number): number | null {
  let total = 0;
  let sawMaster = false;
  for (const { pid, fields: f } of procStats()) {
    if (Number(f[2]) !== masterPid) continue;
    total += Number(f[11]) + Number(f[12]);
    if (Number(pid) === masterPid) {
      sawMaster = true;
      total += Number(f[13]) + Number(f[14]);
    }
  }
  return sawMaster ? total / 100 : null;
}

async function measured(key: Key, pf: PostfixInstance, server: Target | null, sessions: number, messages: number): Promise<Run> {
  const serverCpuNow = () => (server ? processTreeCpuSeconds([server.pid])[0]! : 0);
  const m0 = machineJiffies();
  const w0 = iowaitJiffies();
  const k0 = kernelThreadsCpuSeconds();
  const s0 = serverCpuNow();
  const p0 = postfixCpuSeconds(pf.pid);
  const { seconds, cpu } = await smtpSource(pf.smtpPort, sessions, messages);
  const m1 = machineJiffies();
  const w1 = iowaitJiffies();
  const k1 = kernelThreadsCpuSeconds();
  const s1 = serverCpuNow();
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
  return { key, messages, seconds, mps: messages / seconds, requests: null, serverCpu: server ? serverCpu : null, postfixCpu, sourceCpu, kernelCpu, machineIdle, iowait, otherCpu };
}

// ---------------------------------------------------------------- report

const INTRO = `**What is measured.** The issue's item 2: messages per second a private Postfix accepts from
\`smtp-source -s 20 -m 2000\` with no policy check, with \`check_policy_service\` to the fixed-answer
server, to overquota, and to Dovecot quota-status, in one invocation of \`bench/postfix-e2e.ts\`.
Targets (ratios within one run): with overquota ≥ 0.95× the messages/s with the fixed-answer server,
≥ 1.4× with Dovecot quota-status.

- **Postfix**: a private instance (\`test/helpers/postfix.ts\`, needs root) on a loopback port, every
  delivery **discarded** (discard(8)); \`smtpd_recipient_restrictions = reject_unauth_destination,
  check_policy_service inet:127.0.0.1:PORT, permit\` (without the middle one for "no policy
  check"), switched with \`postconf\` + \`postfix reload\`. Each smtpd process keeps its policy
  connection open between sessions (Postfix's defaults).
- **Policy servers**: \`bench/fixed-server.ts\`; \`dist/cli.js frontend\` reading the Maildirs of
  \`bench/peers-data.ts\` (\`--store.type maildir\`, \`--log.level info\`: one decision line per
  recipient, to a file); Dovecot 2.3 \`quota-status -p postfix\`, \`client_limit = 1\`, over the same
  Maildirs (20 users, 100 KiB quota each).
- **Load**: \`/usr/sbin/smtp-source -s 20 -m 2000 -t user000@example.com 127.0.0.1:PORT\` (a mailbox
  with room; one message, one recipient, one SMTP connection each), timed from start to exit,
  after an unmeasured run of 200 messages. Order: none, fixed, overquota, Dovecot, then the reverse;
  each configuration's figure is the mean of its runs.
- **Checks**: after each switch one \`RCPT TO:<user001@example.com>\` (a full mailbox) must get 452
  from overquota and Dovecot, 250 otherwise, and the fixed server must count it; during the runs
  the fixed server's request count and overquota's decision lines must reach the message count;
  the Postfix log must hold no policy warning.
- CPU columns in % of one core over the run: the policy server (Dovecot: every Dovecot process),
  Postfix (every process of the instance, the reaped ones too), smtp-source, kernel threads;
  other = busy cores minus all of those.

**Reproduce.** \`npm run bench\` runs it with \`--write\`, which rewrites the section below between its
markers; alone: \`node --import tsx bench/postfix-e2e.ts [--write]\` (about 1 minute; root, postfix,
dovecot-core) after \`npm run build\`. Options: \`--sessions 20\`, \`--messages 2000\`, \`--rounds 2\`,
\`--warmup-messages 200\`, \`--keep\`.`;

function buildReport(o: {
  runs: Run[];
  sessions: number;
  messages: number;
  warmupMessages: number;
  rounds: number;
  problems: string[];
  argv: string[];
}): { text: string; markdown: string } {
  const keys = Object.keys(LABELS) as Key[];
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const meanOrNull = (xs: (number | null)[]) => (xs.every((x) => x !== null) && xs.length > 0 ? Math.round(mean(xs as number[])) : null);
  const by = Object.fromEntries(keys.map((k) => [k, o.runs.filter((r) => r.key === k)])) as Record<Key, Run[]>;
  const mps = Object.fromEntries(keys.map((k) => [k, mean(by[k].map((r) => r.mps))])) as Record<Key, number>;
  const pctOrDash = (x: number | null) => (x === null ? '-' : `${x}%`);
  const head = ['configuration', 'runs', 'msgs/s (mean)', 'each run', 'vs no policy', 'vs fixed', 'vs Dovecot', 'policy server CPU', 'Postfix CPU', 'smtp-source CPU'];
  const rows = keys.map((k) => [
    LABELS[k],
    String(by[k].length),
    fmtInt(mps[k]),
    by[k].map((r) => fmtInt(r.mps)).join(', '),
    (mps[k] / mps.none).toFixed(2),
    (mps[k] / mps.fixed).toFixed(2),
    (mps[k] / mps.dovecot).toFixed(2),
    pctOrDash(meanOrNull(by[k].map((r) => r.serverCpu))),
    pctOrDash(meanOrNull(by[k].map((r) => r.postfixCpu))),
    pctOrDash(meanOrNull(by[k].map((r) => r.sourceCpu))),
  ]);
  const vf = mps.overquota / mps.fixed;
  const vd = mps.overquota / mps.dovecot;
  const verdict = (ok: boolean) => (ok ? 'meets' : 'MISSES');
  const checks = [
    ['overquota / fixed-answer server', `${vf.toFixed(2)}×`, `≥ ${TARGETS.vsFixed}×`, verdict(vf >= TARGETS.vsFixed)],
    ['overquota / Dovecot quota-status', `${vd.toFixed(2)}×`, `≥ ${TARGETS.vsDovecot}×`, verdict(vd >= TARGETS.vsDovecot)],
  ];
  const checkHead = ['msgs/s ratio', 'measured', 'target', 'verdict'];
  const runHead = ['#', 'configuration', 'messages', 'seconds', 'msgs/s', 'policy requests', 'policy server CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'of which iowait', 'other CPU'];
  const runRows = o.runs.map((r, i) => [
    String(i + 1),
    LABELS[r.key],
    fmtInt(r.messages),
    r.seconds.toFixed(2),
    fmtInt(r.mps),
    r.requests === null ? '-' : fmtInt(r.requests),
    pctOrDash(r.serverCpu),
    pctOrDash(r.postfixCpu),
    pctOrDash(r.sourceCpu),
    pctOrDash(r.kernelCpu),
    r.machineIdle === null ? '?' : `${r.machineIdle}%`,
    r.iowait === null ? '?' : `${r.iowait}%`,
    r.otherCpu === null ? '?' : `${r.otherCpu}%`,
  ]);
  const noise = noiseNote(o.runs.map((r) => r.otherCpu));
  const problems = o.problems.length === 0 ? 'Checks: every probe got the expected reply, the fixed server and overquota saw every recipient, no policy warning in the Postfix log.' : `PROBLEMS: ${o.problems.join('; ')}.`;
  const load = `\`smtp-source -s ${o.sessions} -m ${o.messages} -t ${RECIPIENT}\``;
  const text = [table(head, rows, false), '', table(checkHead, checks, false), '', 'Runs, in order:', table(runHead, runRows, false), '', noise, problems, ...textFooter()].join('\n');
  const markdown = [
    ...sectionHead('postfix', [postfixVersion, dovecotVersion()]),
    `Command: \`${commandLine('postfix-e2e.ts', o.argv)}\`${viaNpm()}. Each run ${load}, after ${o.warmupMessages} unmeasured messages; ${o.rounds} round(s), the second in reverse order; delivery discarded.`,
    '',
    table(head, rows, true),
    '',
    "The issue's targets:",
    '',
    table(checkHead, checks, true),
    '',
    'Every run, in order (CPU in % of one core over the run; machine idle (idle + iowait, /proc/stat) in % of all cores, iowait its part spent waiting for the disk; other = busy cores minus everything listed; a few % below zero is accounting slack):',
    '',
    table(runHead, runRows, true),
    '',
    noise,
    '',
    problems,
    '<!-- bench:postfix:end -->',
  ].join('\n');
  return { text, markdown };
}

async function cleanup(): Promise<void> {
  await postfix?.stop().catch(() => undefined);
  postfix = null;
  await stopChildren();
  await dovecot?.stop().catch(() => undefined);
  dovecot = null;
  await removeTmpDir();
}

runBench(main, cleanup, { onExit: removeTmpDirSync });
