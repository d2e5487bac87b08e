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
 * their policy connections open). Rounds (--rounds, 6 by default: about 2.5 minutes in all) go
 * none, fixed, overquota, Dovecot, then back in reverse order, and so on, so drift of the machine
 * falls on every configuration alike. Postfix's own messages/s scatter by ±25% from run to run
 * (BENCHMARKS.md), so each configuration's figure is the median of its runs, shown with their
 * spread (min–max), and the ratios are those of the medians; the target table also gives the
 * range of the ratio within each round. Before each run it waits for a quiet machine (10 s at
 * most, 20 s in all: quietWaiter in bench/postfix-runs.ts). Before the measured runs of a policy
 * configuration one RCPT TO a full mailbox must get the server's 452 (fixed: 250, and the fixed
 * server must count the requests): proof that Postfix asks it.
 *
 *   node --import tsx bench/postfix-e2e.ts [--sessions 20] [--messages 2000] [--rounds 6]
 *        [--warmup-messages 200] [--write] [--keep]
 *
 * With OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/postfix.json (bench/results.ts): each
 * configuration's median, spread and runs, and the two target checks, for bench/summary.ts.
 */
import { dovecotUnavailable, type DovecotInstance } from '../test/helpers/dovecot.js';
import type { PostfixInstance } from '../test/helpers/postfix.js';
import { sendEnvelope } from '../test/helpers/smtp.js';
import { dovecotVersion, maildirStoreArgs, startPeersDovecot, userName } from './peers-data.js';
import { fixedRequests, startFixed, startFrontend, type Target } from './policy-targets.js';
import { fmtSpread, interleavedOrder, measureSmtpSource, msgsFigure, quietWaiter, medianOrNull, perRoundRatios, requirePostfix, smtpSource, smtpSourceCommand, spreadOf, startBenchPostfix, type SmtpSourceRun, type Spread } from './postfix-runs.js';
import { fmtTarget, fmtVerdict, ratioCheck, saveResults, versionsOf, type MsgsFigure, type ResultsOfRun } from './results.js';
import {
  commandLine,
  countLines,
  fmtInt,
  log,
  makeTmpDir,
  noiseNote,
  processTreeCpuSeconds,
  removeTmpDir,
  removeTmpDirSync,
  requireBuild,
  runBench,
  sectionHead,
  stopChildren,
  table,
  textFooter,
  viaNpm,
  printReport,
  problemsExitCode,
} from './shared.js';

const USERS = 20;
/** user000: a mailbox with room (every message is accepted); user001: full. */
const RECIPIENT = `${userName(0)}@example.com`;
const FULL = `${userName(1)}@example.com`;
const TARGETS = { vsFixed: 0.95, vsDovecot: 1.4 };
/** Rounds by default: 24 runs, about 2.5 minutes with the start-up of Dovecot and Postfix. */
const DEFAULT_ROUNDS = 6;
/** Waiting for a quiet machine before the runs: at most this much in all (quietWaiter). */
const QUIET_BUDGET_MS = 20_000;

const LABELS = {
  none: 'no policy check',
  fixed: 'fixed-answer server',
  overquota: 'overquota (warm cache, log info)',
  dovecot: 'Dovecot quota-status',
} as const;
type Key = keyof typeof LABELS;

interface Run extends SmtpSourceRun {
  key: Key;
  round: number;
  messages: number;
  /** Policy requests the server saw during the run (fixed: its count; overquota: decision lines); null: not countable. */
  requests: number | null;
}

let postfix: PostfixInstance | null = null;
let dovecot: DovecotInstance | null = null;
let postfixVersion = 'Postfix (version unknown)';

async function main(): Promise<number> {
  const args = smtpSourceCommand('postfix-e2e.ts', DEFAULT_ROUNDS, 12);
  if (!args) return 0;
  const { sessions, messages, rounds, warmupMessages } = args;
  requireBuild();
  requirePostfix(() => dovecotUnavailable());

  const tmpDir = await makeTmpDir('overquota-bench-e2e-');
  log(`starting a private Dovecot with ${USERS} Maildirs and quota-status`);
  // Each smtpd process keeps its own policy connection: one quota-status process each.
  dovecot = await startPeersDovecot(USERS, 300);
  const fixed = await startFixed();
  const overquota = await startFrontend(LABELS.overquota, 'frontend', tmpDir, [...maildirStoreArgs(dovecot), '--log.level', 'info']);
  const dove: Target = { label: LABELS.dovecot, kind: 'dovecot', listen: `inet:127.0.0.1:${dovecot.quotaStatusPort}`, pid: dovecot.pid };
  const servers: Record<Exclude<Key, 'none'>, Target> = { fixed, overquota, dovecot: dove };

  ({ postfix, version: postfixVersion } = await startBenchPostfix({ smtpdRecipientRestrictions: 'reject_unauth_destination, permit' }));

  const order = interleavedOrder(Object.keys(LABELS) as Key[], rounds);
  const runs: Run[] = [];
  const waitQuiet = quietWaiter(QUIET_BUDGET_MS);
  const problems: string[] = [];
  let current: Key | null = null;
  for (const [i, { key, round }] of order.entries()) {
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
    if (warmupMessages > 0) await smtpSource(postfix.smtpPort, sessions, warmupMessages, RECIPIENT);
    await waitQuiet();
    const before = await requestsSeen(server, overquota);
    const run = await measured(key, round, postfix, server, sessions, messages);
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
  printReport(report, args.write, 'postfix', 'Postfix end to end: no policy check, fixed server, overquota, Dovecot quota-status', INTRO);
  saveResults('postfix', { ...report.results, problems });
  return problemsExitCode(problems);
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

async function measured(key: Key, round: number, pf: PostfixInstance, server: Target | null, sessions: number, messages: number): Promise<Run> {
  const r = await measureSmtpSource(pf, { sessions, messages, recipient: RECIPIENT, serverCpuSeconds: () => (server ? processTreeCpuSeconds([server.pid])[0]! : 0) });
  return { key, round, messages, ...r, requests: null, serverCpu: server ? r.serverCpu : null };
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
  after an unmeasured run of 200 messages. Order: none, fixed, overquota, Dovecot, then the reverse,
  6 rounds; each configuration's figure is the **median** of its 6 runs, with their spread
  (min–max), and the ratios are those of the medians (the target table also gives the ratio's
  range within single rounds).
- **Checks**: after each switch one \`RCPT TO:<user001@example.com>\` (a full mailbox) must get 452
  from overquota and Dovecot, 250 otherwise, and the fixed server must count it; during the runs
  the fixed server's request count and overquota's decision lines must reach the message count;
  the Postfix log must hold no policy warning.
- CPU columns in % of one core over the run: the policy server (Dovecot: every Dovecot process),
  Postfix (every process of the instance, the reaped ones too), smtp-source, kernel threads;
  other = busy cores minus all of those.

**Reproduce.** \`npm run bench\` runs it with \`--write\`, which rewrites the section below between its
markers; alone: \`node --import tsx bench/postfix-e2e.ts [--write]\` (about 2.5 minutes; root, postfix,
dovecot-core) after \`npm run build\`. Options: \`--sessions 20\`, \`--messages 2000\`, \`--rounds 6\`,
\`--warmup-messages 200\`, \`--keep\`.`;

function buildReport(o: {
  runs: Run[];
  sessions: number;
  messages: number;
  warmupMessages: number;
  rounds: number;
  problems: string[];
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<MsgsFigure> } {
  const keys = Object.keys(LABELS) as Key[];
  const by = Object.fromEntries(keys.map((k) => [k, o.runs.filter((r) => r.key === k)])) as Record<Key, Run[]>;
  const spread = Object.fromEntries(keys.map((k) => [k, spreadOf(by[k])])) as Record<Key, Spread>;
  const mps = Object.fromEntries(keys.map((k) => [k, spread[k].median])) as Record<Key, number>;
  const pctOrDash = (x: number | null) => (x === null ? '-' : `${x}%`);
  const head = ['configuration', 'runs', 'msgs/s (median)', 'min–max', 'each run', 'vs no policy', 'vs fixed', 'vs Dovecot', 'policy server CPU', 'Postfix CPU', 'smtp-source CPU'];
  const rows = keys.map((k) => [
    LABELS[k],
    String(by[k].length),
    fmtInt(mps[k]),
    fmtSpread(spread[k]),
    by[k].map((r) => fmtInt(r.mps)).join(', '),
    (mps[k] / mps.none).toFixed(2),
    (mps[k] / mps.fixed).toFixed(2),
    (mps[k] / mps.dovecot).toFixed(2),
    pctOrDash(medianOrNull(by[k].map((r) => r.serverCpu))),
    pctOrDash(medianOrNull(by[k].map((r) => r.postfixCpu))),
    pctOrDash(medianOrNull(by[k].map((r) => r.sourceCpu))),
  ]);
  const targetChecks = [
    { check: ratioCheck('Postfix msgs/s with overquota / with the fixed-answer server', mps.overquota, mps.fixed, 'msgs/s', '>=', TARGETS.vsFixed), base: 'fixed' as Key },
    { check: ratioCheck('Postfix msgs/s with overquota / with Dovecot quota-status', mps.overquota, mps.dovecot, 'msgs/s', '>=', TARGETS.vsDovecot), base: 'dovecot' as Key },
  ];
  const checks = targetChecks.map(({ check, base }) => [
    `overquota / ${LABELS[base]}`,
    `${check.ratio!.toFixed(2)}×`,
    perRoundRatios(o.runs, 'overquota', base),
    fmtTarget(check),
    fmtVerdict(check),
  ]);
  const checkHead = ['msgs/s ratio (of the medians)', 'measured', 'within each round', 'target', 'verdict'];
  const runHead = ['#', 'round', 'configuration', 'messages', 'seconds', 'msgs/s', 'policy requests', 'policy server CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'of which iowait', 'other CPU'];
  const runRows = o.runs.map((r, i) => [
    String(i + 1),
    String(r.round + 1),
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
  const command = commandLine('postfix-e2e.ts', o.argv);
  const text = [table(head, rows, false), '', table(checkHead, checks, false), '', 'Runs, in order:', table(runHead, runRows, false), '', noise, problems, ...textFooter()].join('\n');
  const markdown = [
    ...sectionHead('postfix', [postfixVersion, dovecotVersion()]),
    `Command: \`${command}\`${viaNpm()}. Each run ${load}, after ${o.warmupMessages} unmeasured messages; ${o.rounds} round(s), every other one in reverse order; delivery discarded. Each configuration's msgs/s is the median of its runs (min–max: their spread); the ratios are those of the medians.`,
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
  const results: ResultsOfRun<MsgsFigure> = {
    command,
    figures: keys.map((k) => msgsFigure(k, LABELS[k], by[k], o)),
    checks: targetChecks.map((c) => c.check),
    noise,
    versions: versionsOf(postfixVersion, dovecotVersion()),
  };
  return { text, markdown, results };
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
