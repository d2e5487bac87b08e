/*
 * Backscatter (issue 10): how many messages a check lets in that the backend then bounces, and how
 * many it defers that would have fitted, on the real path: a private Postfix delivering over LMTP
 * to a private Dovecot with the quota plugin (1 MiB mailboxes, quota_grace = 0,
 * quota_full_tempfail = no: a full mailbox refuses with 552 and Postfix bounces). The servers are
 * started by bench/backscatter-rig.ts; scenarios and configurations are the data below, each
 * scenario with a fixed seed, so a run repeats.
 *
 * Definitions (also in BENCHMARKS.md):
 * - bounce: a recipient Postfix accepted and then bounced (maillog status=bounced), per recipient;
 *   bounces / 1,000 = bounced recipients per 1,000 recipients offered (RCPTs).
 * - false defer: a recipient deferred at RCPT (4xx) that would have been delivered had it been
 *   accepted. Oracle, from the run's event log (every RCPT with its reply time, code, size, queue
 *   id; each accepted recipient's final status in the maillog; the fills and expunges): the
 *   mailbox's true usage at the defer = the bytes Dovecot held at its last reset (fill or expunge)
 *   + every message accepted for it since, before the defer, that Postfix then delivered (stored or
 *   still on its way); a message's stored size = its LF size + the headers Postfix and Dovecot add
 *   (measured from the delivered files). The defer was false when usage + this message <= 1 MiB.
 * - backend lookups / RCPT: quota lookups the configuration made against the backend ÷ RCPTs:
 *   doveadm quotaGet requests (overquota), quota service requests (the seed's way), quota-status
 *   requests, address verification probes (LMTP RCPTs to Dovecot), counted by a proxy in front.
 * - added RCPT latency: RCPT -> reply time with the check minus without (no check), p50 and p99.
 *
 * It must never pass overquota a flag its build does not know (that exits 64): OVERQUOTA_FLAGS go
 * through `frontend --help` first. Never edits BENCHMARKS.md or the chart without --write.
 *
 *   node --import tsx bench/backscatter.ts [--write] [--keep] [--only none,overquota] [--scenarios burst,held]
 * About 3 minutes on the 2-core machine of BENCHMARKS.md (32 runs: 6 configurations × 5 scenarios,
 * plus freed space with the notify hook for the two overquota configurations).
 * With OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/backscatter.json (bench/results.ts).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { dovecotUnavailable } from '../test/helpers/dovecot.js';
import { postfixUnavailable } from '../test/helpers/postfix.js';
import { redisUnavailable } from '../test/helpers/redis.js';
import { dovecotVersion } from './peers-data.js';
import { LIMIT, SLOW_DELIVERY_MS, deliveredBytes, falseDefers, redisCalls, redisFootprint, sendMessage, startRig, verifyAddresses, waitDelivered, type ConfigKind, type RcptEvent, type Rig } from './backscatter-rig.js';
import { figureCheck, fmtMs, fmtTarget, fmtVerdict, ratioCheck, saveResults, versionsOf, type BackscatterFigure, type Check } from './results.js';
import { CLI, COMMON_OPTIONS, ROOT, commandLine, epochMs, log, makeTmpDir, printReport, problemsExitCode, prng, removeTmpDir, removeTmpDirSync, requireBuild, runBench, sectionHead, sleep, stopChildren, table, textFooter, tmp, viaNpm } from './shared.js';

/**
 * The overquota configurations' own flags, in this one place (e.g. '--reservations.ttl', '2m').
 * Empty: overquota's defaults. A flag this build does not list in `frontend --help` is left out.
 */
const OVERQUOTA_FLAGS: string[] = [];

const KB = 1000;
/** Room for exactly 3 messages of ~50 KB (Dovecot adds ~0.4 KB of headers to each). */
const ROOM_FOR_3 = 175 * KB;
const FREED_BYTES = 20 * KB;
/** Freed space: a new message every FREED_POLL_MS after the expunge, for at most FREED_CAP_MS. */
const FREED_POLL_MS = 250;
const FREED_CAP_MS = 15_000;
const SVG = path.join(ROOT, 'bench', 'backscatter.svg');

interface Msg {
  at: number;
  to: string[];
  bytes: number;
}
interface Scenario {
  key: string;
  label: string;
  seed: number;
  /** Sessions at once (each message is one session). */
  sessions: number;
  /** Bytes stored in each mailbox before the traffic (0: empty). */
  fill: (rnd: () => number) => Record<string, number>;
  messages?: (rnd: () => number) => Msg[];
  /** Deliveries held (defer_transports) until the traffic is over, then flushed, each SLOW_DELIVERY_MS slow. */
  held?: boolean;
  /** Freed space: full mailbox, expunge, time until a message is accepted again; with the notify hook? */
  freed?: { hook: boolean };
  only?: ConfigKind[];
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const burst = (box: string) => (rnd: () => number) =>
  range(20)
    .map(() => Math.floor(rnd() * 2000))
    .sort((a, b) => a - b)
    .map((at) => ({ at, to: [box], bytes: 48 * KB + Math.floor(rnd() * 4 * KB) }));
const fanout = range(200).map((i) => `f${String(i).padStart(3, '0')}`);

const SCENARIOS: Scenario[] = [
  { key: 'burst', label: 'burst: room for 3, 20 × ~50 KB over 2 s, 10 sessions', seed: 101, sessions: 10, fill: () => ({ b0: LIMIT - ROOM_FOR_3 }), messages: burst('b0') },
  { key: 'held', label: `burst in flight: the same, held then flushed, ${SLOW_DELIVERY_MS} ms per delivery`, seed: 102, sessions: 10, held: true, fill: () => ({ h0: LIMIT - ROOM_FOR_3 }), messages: burst('h0') },
  {
    key: 'slow',
    label: 'slow fill: 5 mailboxes from 90%, 30 messages of 2–60 KB, one every 200 ms',
    seed: 103,
    sessions: 1,
    fill: () => Object.fromEntries(range(5).map((i) => [`s${i}`, Math.floor(0.9 * LIMIT)])),
    messages: (rnd) => range(30).map((i) => ({ at: i * 200, to: [`s${i % 5}`], bytes: 2 * KB + Math.floor(rnd() ** 2 * 58 * KB) })),
  },
  {
    key: 'fanout',
    label: 'fan-out: one 20 KB message to 200 recipients, 30 with 0–40 KB of room',
    seed: 104,
    sessions: 1,
    fill: (rnd) => Object.fromEntries(fanout.map((m, i) => [m, i % 20 < 3 ? LIMIT - Math.floor(rnd() * 40 * KB) : 0])),
    messages: () => [{ at: 0, to: fanout, bytes: 20 * KB }],
  },
  { key: 'freed', label: 'freed space: full, doveadm expunge, a 20 KB message every 250 ms', seed: 105, sessions: 1, fill: () => ({ r0: LIMIT + FREED_BYTES }), freed: { hook: false } },
  { key: 'freed-hook', label: 'freed space, with the quota_warning → overquota notify hook', seed: 106, sessions: 1, fill: () => ({ r1: LIMIT + FREED_BYTES }), freed: { hook: true }, only: ['overquota', 'redis'] },
];

const CONFIGS: { key: ConfigKind; label: string }[] = [
  { key: 'none', label: 'no check' },
  { key: 'seed', label: "the seed's way (usage > quota, no size, no cache)" },
  { key: 'quota-status', label: 'Dovecot quota-status' },
  { key: 'verify', label: 'reject_unverified_recipient + lmtp_rcpt_check_quota' },
  { key: 'overquota', label: 'overquota defaults' },
  { key: 'redis', label: 'overquota + Redis, two frontends' },
];

type Figure = BackscatterFigure & { config: ConfigKind };

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { ...COMMON_OPTIONS, only: { type: 'string' }, scenarios: { type: 'string' } } });
  if (values.help) {
    console.log('usage: node --import tsx bench/backscatter.ts [--write] [--keep] [--only none,seed,quota-status,verify,overquota,redis] [--scenarios burst,held,slow,fanout,freed,freed-hook]');
    return 0;
  }
  tmp.keep = values.keep;
  requireBuild();
  const why = postfixUnavailable() || dovecotUnavailable({ lmtp: true }) || redisUnavailable();
  if (why) throw new Error(why);
  const pick = <T extends { key: string }>(all: T[], list: string | undefined): T[] => (list ? all.filter((x) => list.split(',').includes(x.key)) : all);
  const configs = pick(CONFIGS, values.only);
  const scenarios = pick(SCENARIOS, values.scenarios);
  const flags = knownFlags(OVERQUOTA_FLAGS);
  const started = Date.now();
  const dir = await makeTmpDir('overquota-bench-backscatter-');
  const plans = scenarios.map((s) => ({ s, fill: s.fill(prng(s.seed)), msgs: s.messages?.(prng(s.seed + 1)) ?? [] }));
  const users = [...new Set(plans.flatMap((p) => Object.keys(p.fill)))];
  const figures: Figure[] = [];
  const problems: string[] = [];
  for (const c of configs) {
    log(`${c.label}: starting Dovecot, Postfix and the check`);
    rig = await startRig(c.key, users, dir, flags);
    for (const p of plans) {
      if (p.s.only && !p.s.only.includes(c.key)) continue;
      const f = await runScenario(rig, c.key, c.label, p);
      log(`    ${p.s.key}: ${f.accepted} accepted, ${f.deferred} deferred, ${f.bounced} bounced, ${f.falseDefers} false defers, ${f.lookupsPerRcpt.toFixed(2)} lookups/RCPT, p50 ${fmtMs(f.p50Ms)} ms${f.freedMs === undefined ? '' : `, accepted again after ${f.freedMs === null ? `> ${FREED_CAP_MS / 1000} s` : `${fmtMs(f.freedMs)} ms`}`}`);
      if (f.rejected) problems.push(`${c.label}, ${p.s.key}: ${f.rejected} RCPT(s) refused with 5xx`);
      if (f.unfinished) problems.push(`${c.label}, ${p.s.key}: ${f.unfinished} accepted recipient(s) without a final status`);
      figures.push(f);
    }
    await rig.stop();
    rig = null;
  }
  const none = figures.find((f) => f.config === 'none' && f.scenario === 'burst');
  if (none && none.bounced === 0) problems.push('no check, burst: nothing bounced: the path does not reproduce issue 10');
  const seconds = (Date.now() - started) / 1000;
  const report = buildReport(figures, seconds, process.argv.slice(2));
  printReport(report, values.write, 'backscatter', 'Backscatter: bounces and false defers on the Postfix → LMTP → Dovecot path (issue 10)', INTRO);
  if (values.write) {
    writeFileSync(SVG, chart(figures));
    log(`chart in ${path.relative(process.cwd(), SVG)}`);
  }
  saveResults('backscatter', { command: commandLine('backscatter.ts', process.argv.slice(2)), figures, checks: report.checks, problems, versions: versionsOf(postfixVersion(), dovecotVersion(), redisVersion()) });
  log(`done in ${seconds.toFixed(0)} s`);
  return problemsExitCode(problems);
}

let rig: Rig | null = null;
/** Stored size - LF size of a delivered message, from the last scenario that delivered one. */
let overhead = 400;

async function runScenario(r: Rig, kind: ConfigKind, label: string, p: { s: Scenario; fill: Record<string, number>; msgs: Msg[] }): Promise<Figure> {
  const resets: { mailbox: string; t: number; bytes: number }[] = [];
  for (const [m, bytes] of Object.entries(p.fill)) {
    if (bytes > 0) await r.dovecot.fill(m, bytes, { messages: Math.ceil(bytes / 100_000) });
    resets.push({ mailbox: m, t: epochMs(), bytes });
  }
  const lookups0 = r.lookups();
  // A site using address verification has its addresses in verify(8)'s cache: probe each once.
  if (kind === 'verify') await verifyAddresses(r.ports[0], Object.keys(p.fill));
  const calls0 = r.redis ? await redisCalls(r.redis) : null;
  let events: RcptEvent[];
  let freedMs: number | null | undefined;
  if (p.s.freed) ({ events, freedMs } = await freedSpace(r, Object.keys(p.fill)[0]!, p.s.freed.hook, resets));
  else {
    if (p.s.held) await r.hold(true);
    r.slowDelivery(p.s.held ? SLOW_DELIVERY_MS : 0);
    events = await traffic(r, p.msgs, p.s.sessions);
  }
  const footprint = r.redis ? await redisFootprint(r.redis, r.redisPrefix, Object.keys(p.fill)) : null;
  if (p.s.held) await r.hold(false);
  const statuses = await waitDelivered(r, events);
  r.slowDelivery(0);
  const lookups = r.lookups() - lookups0;
  const calls = r.redis && calls0 ? [...(await redisCalls(r.redis))].map(([cmd, n]) => [cmd, n - (calls0.get(cmd) ?? 0)] as const).filter(([, n]) => n > 0) : [];
  const status = (e: RcptEvent) => (e.queueId ? statuses.get(`${e.queueId} ${e.mailbox}`) : undefined);
  const sent = events.filter((e) => status(e) === 'sent');
  const delivered = await deliveredBytes(r.dovecot, Object.keys(p.fill));
  if (delivered.files > 0 && delivered.files === sent.length) overhead = (delivered.bytes - sent.reduce((s, e) => s + e.lf, 0)) / delivered.files;
  const rcpts = events.length;
  const ms = events.map((e) => e.ms).sort((a, b) => a - b);
  const bounced = events.filter((e) => status(e) === 'bounced').length;
  return {
    scenario: p.s.key,
    config: kind,
    label,
    rcpts,
    accepted: events.filter((e) => e.code === 250).length,
    deferred: events.filter((e) => e.code >= 400 && e.code < 500).length,
    rejected: events.filter((e) => e.code >= 500).length,
    bounced,
    bouncesPer1000: (bounced / Math.max(1, rcpts)) * 1000,
    falseDefers: falseDefers(events, statuses, resets, overhead),
    unfinished: events.filter((e) => e.queueId && !status(e)).length,
    lookups,
    lookupsPerRcpt: lookups / Math.max(1, rcpts),
    p50Ms: percentile(ms, 0.5),
    p99Ms: percentile(ms, 0.99),
    ...(freedMs !== undefined ? { freedMs } : {}),
    ...(r.redis ? { redisPerRcpt: calls.reduce((s, [, n]) => s + n, 0) / Math.max(1, rcpts), redisCommands: Object.fromEntries(calls), redisBytesPerMailbox: footprint!.mailboxes ? footprint!.bytes / footprint!.mailboxes : 0, redisKeys: footprint!.keys } : {}),
  };
}

/** Each message at its time, at most `sessions` sessions at once, alternating between the two MX. */
async function traffic(r: Rig, msgs: Msg[], sessions: number): Promise<RcptEvent[]> {
  const start = performance.now();
  let free = sessions;
  const waiting: (() => void)[] = [];
  const all = await Promise.all(
    msgs.map(async (m, i) => {
      await sleep(m.at - (performance.now() - start));
      if (free === 0) await new Promise<void>((resolve) => waiting.push(resolve));
      else free--;
      try {
        return await sendMessage(r.ports[i % 2]!, i, m.to, m.bytes);
      } finally {
        const next = waiting.shift();
        if (next) next();
        else free++;
      }
    }),
  );
  return all.flat();
}

/** A full mailbox is asked once (so a cache holds "full"), emptied, then asked until it accepts. */
async function freedSpace(r: Rig, mailbox: string, hook: boolean, resets: { mailbox: string; t: number; bytes: number }[]): Promise<{ events: RcptEvent[]; freedMs: number | null }> {
  await r.notifyHook(hook);
  const events = await sendMessage(r.ports[0], 0, [mailbox], FREED_BYTES);
  await waitDelivered(r, events);
  await r.dovecot.expunge(mailbox);
  const t0 = epochMs();
  resets.push({ mailbox, t: t0, bytes: 0 });
  let freedMs: number | null = null;
  for (let i = 1; epochMs() - t0 < FREED_CAP_MS; i++) {
    const [e] = await sendMessage(r.ports[i % 2]!, i, [mailbox], FREED_BYTES);
    events.push(e!);
    if (e!.code === 250) {
      freedMs = e!.t - t0;
      break;
    }
    await sleep(FREED_POLL_MS);
  }
  await r.notifyHook(false);
  return { events, freedMs };
}

// ---------------------------------------------------------------- helpers

function percentile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]! : NaN;
}

/** OVERQUOTA_FLAGS without the ones this build's `frontend --help` does not list. */
function knownFlags(flags: string[]): string[] {
  const help = execFileSync(process.execPath, [CLI, 'frontend', '--help'], { encoding: 'utf8' });
  const out: string[] = [];
  for (let i = 0; i < flags.length; i++) {
    const name = flags[i]!.replace(/^--/, '').split('=')[0]!;
    const hasValue = !flags[i]!.includes('=') && flags[i + 1] !== undefined && !flags[i + 1]!.startsWith('--');
    if (help.includes(`--${name} `)) out.push(flags[i]!, ...(hasValue ? [flags[i + 1]!] : []));
    else log(`this overquota does not know --${name}: left out`);
    if (hasValue) i++;
  }
  return out;
}

const version = (cmd: string, args: string[], re: RegExp, name: string): string => {
  try {
    return `${name} ${re.exec(execFileSync(cmd, args, { encoding: 'utf8' }))?.[1] ?? '?'}`;
  } catch {
    return `${name} (version unknown)`;
  }
};
const postfixVersion = () => version('postconf', ['-d', '-h', 'mail_version'], /(\S+)/, 'Postfix');
const redisVersion = () => version('redis-server', ['--version'], /v=(\S+)/, 'Redis');

// ---------------------------------------------------------------- report

const INTRO = `**What is measured.** Issue 10: a message accepted at RCPT that the backend then cannot store is
bounced to its (often forged) sender. \`bench/backscatter.ts\` starts the issue's path on loopback — a
private Postfix delivering over LMTP to a private Dovecot 2.3 with the quota plugin (1 MiB
mailboxes, \`quota_grace = 0\`, \`quota_full_tempfail = no\`: a full mailbox refuses with 552 and
Postfix bounces) — and sends the same seeded traffic through six configurations:

- **no check**; **the seed's way**: a policy server in the bench asking the quota service's CGI
  answer per RCPT, 452 when usage > quota (no size, no cache); **Dovecot quota-status**
  (\`check_policy_service\`); **reject_unverified_recipient** with Dovecot
  \`lmtp_rcpt_check_quota = yes\` (the scenario's addresses probed once before its traffic, as a
  site's verify cache holds them; \`address_verify_poll_delay = 1s\`, other verify settings
  Postfix's); **overquota defaults** (\`--source.type doveadm\`; flags from \`OVERQUOTA_FLAGS\` in
  the script); **overquota + Redis, two frontends**. Postfix has two smtpd listeners (two MX,
  sessions alternate); in the last configuration each asks its own frontend.
- Scenarios: **burst** (room for 3, 20 messages of ~50 KB declaring SIZE over 2 s, ≤ 10 sessions
  at once); **burst in flight** (the same with \`defer_transports = lmtp\` until it is over, then
  \`postqueue -f\`, each LMTP delivery held ${SLOW_DELIVERY_MS} ms by a proxy); **slow fill**; **fan-out**; **freed
  space** (time from \`doveadm expunge\` to the first accepted RCPT, a message every ${FREED_POLL_MS} ms, at
  most ${FREED_CAP_MS / 1000} s; with the \`quota_warning\` → \`overquota notify\` hook for overquota).
- **bounce**: a recipient Postfix accepted and then bounced (maillog \`status=bounced\`); bounces /
  1,000 are per 1,000 recipients offered. **false defer**: a 4xx at RCPT for a message that would
  have been delivered: the oracle takes the mailbox's true usage at that moment — the bytes Dovecot
  held at its last fill or expunge + every message accepted for it since that Postfix then
  delivered (stored, or on its way) — and calls the defer false when that + this message ≤ 1 MiB
  (stored sizes: LF size + the headers Postfix and Dovecot add, measured from the delivered files).
  **lookups / RCPT**: quota lookups against the backend (doveadm requests, quota service requests,
  quota-status requests, verification probes; counted by a proxy in front) ÷ RCPTs. **added
  latency**: RCPT → reply with the check minus without, p50 / p99.
- Targets: overquota's bounces ≤ 1/10 of quota-status's where it has any (burst in flight: ≤ 1 of
  20), 0 where it has 0, slow fill 0; overquota's false defers (all scenarios, freed space with the
  hook) ≤ 2× quota-status's.

**Reading it.** Outcomes under concurrency can move by a bounce or two from run to run although
the traffic is seeded: Dovecot's own quota check races between concurrent LMTP deliveries (in the
held burst "no check" bounced 15 in one run, 17 in another; issue 10 saw 15–17 too). p99 over 20–30
RCPTs is nearly the maximum, so an "added p99" below zero is noise. overquota defaults runs with
\`--admin.listen\` (what \`overquota notify\` needs without Redis); address verification remembers a
"mailbox full" answer for \`address_verify_negative_refresh_time\` (3 h), so after an expunge it
keeps deferring.

**Reproduce.** \`node --import tsx bench/backscatter.ts [--write]\` after \`npm run build\` (about 3
minutes; root, postfix, dovecot-core, dovecot-lmtpd, redis-server). \`--write\` rewrites the section
below and \`bench/backscatter.svg\`; \`--only\` / \`--scenarios\` pick configurations / scenarios.

![bounces and false defers per configuration](bench/backscatter.svg)`;

const short: Record<ConfigKind, string> = { none: 'no check', seed: 'seed', 'quota-status': 'quota-status', verify: 'verify', overquota: 'overquota', redis: 'overquota+Redis' };

function buildReport(figures: Figure[], seconds: number, argv: string[]): { text: string; markdown: string; checks: Check[] } {
  const of = (scenario: string, config: ConfigKind) => figures.find((f) => f.scenario === scenario && f.config === config);
  const head = ['scenario', 'configuration', 'RCPTs', 'accepted', 'deferred', 'bounced', 'bounces / 1,000', 'false defers', 'lookups / RCPT', 'RCPT p50 / p99 ms', 'added p50 / p99 ms', 'accepted again after'];
  const rows = figures.map((f) => {
    const base = of(f.scenario, 'none') ?? of('freed', 'none');
    const added = base ? `${fmtMs(f.p50Ms - base.p50Ms)} / ${fmtMs(f.p99Ms - base.p99Ms)}` : '-';
    const freed = f.freedMs === undefined ? '-' : f.freedMs === null ? `> ${FREED_CAP_MS / 1000} s` : `${(f.freedMs / 1000).toFixed(2)} s`;
    return [f.scenario, f.label, String(f.rcpts), String(f.accepted), String(f.deferred), String(f.bounced), f.bouncesPer1000.toFixed(0), String(f.falseDefers), f.lookupsPerRcpt.toFixed(2), `${fmtMs(f.p50Ms)} / ${fmtMs(f.p99Ms)}`, f.config === 'none' ? '-' : added, freed];
  });
  const sizingHead = ['scenario', 'configuration', 'backend lookups / RCPT', 'Redis commands / RCPT', 'Redis commands (all)', 'Redis bytes / mailbox', 'Redis keys'];
  const sizing = figures
    .filter((f) => f.config === 'overquota' || f.config === 'redis')
    .map((f) => [f.scenario, f.label, f.lookupsPerRcpt.toFixed(2), f.redisPerRcpt?.toFixed(2) ?? '-', f.redisCommands ? Object.entries(f.redisCommands).map(([c, n]) => `${c} ${n}`).join(', ') : '-', f.redisBytesPerMailbox?.toFixed(0) ?? '-', f.redisKeys?.toString() ?? '-']);
  const checks = targets(figures);
  const checkRows = checks.map((c) => [c.name, c.ratio === null ? String(c.measured) : `${c.ratio.toFixed(2)}× (${c.measured} / ${c.baseline})`, fmtTarget(c), fmtVerdict(c)]);
  const checkHead = ['target', 'measured', 'target', 'verdict'];
  const note = `About ${Math.round(seconds)} s for ${figures.length} runs. Seeds fixed per scenario; added latency is against "no check" in the same scenario.`;
  const text = [table(head, rows, false), '', table(sizingHead, sizing, false), '', table(checkHead, checkRows, false), '', note, ...textFooter()].join('\n');
  const markdown = [
    ...sectionHead('backscatter', [postfixVersion(), dovecotVersion(), redisVersion()]),
    `Command: \`${commandLine('backscatter.ts', argv)}\`${viaNpm()}. ${note}`,
    '',
    table(head, rows, true),
    '',
    '**Sizing, toward a large site** (same runs): backend lookups, Redis commands (INFO commandstats deltas over the scenario) per RCPT, and Redis memory (MEMORY USAGE of the keys at the end of the traffic) per mailbox.',
    '',
    table(sizingHead, sizing, true),
    '',
    "The issue's targets:",
    '',
    table(checkHead, checkRows, true),
    '<!-- bench:backscatter:end -->',
  ].join('\n');
  return { text, markdown, checks };
}

/** Issue 10's targets, for each overquota configuration against Dovecot quota-status. */
function targets(figures: Figure[]): Check[] {
  const of = (scenario: string, config: ConfigKind) => figures.find((f) => f.scenario === scenario && f.config === config);
  const checks: Check[] = [];
  for (const config of ['overquota', 'redis'] as const) {
    const name = CONFIGS.find((c) => c.key === config)!.label;
    for (const s of SCENARIOS) {
      const f = of(s.key, config);
      const qs = of(s.key === 'freed-hook' ? 'freed' : s.key, 'quota-status');
      if (!f || !qs) continue;
      if (s.key === 'held') checks.push(figureCheck(`${name}, ${s.key}: bounces of 20`, f.bounced, 'bounces', '<=', 1));
      else if (s.key === 'slow' || qs.bounced === 0) checks.push(figureCheck(`${name}, ${s.key}: bounces (quota-status: ${qs.bounced})`, f.bounced, 'bounces', '<=', 0));
      else checks.push(ratioCheck(`${name}, ${s.key}: bounces / quota-status's`, f.bounced, qs.bounced, 'bounces', '<=', 0.1));
    }
    const mine = figures.filter((f) => f.config === config && f.scenario !== 'freed');
    const theirs = figures.filter((f) => f.config === 'quota-status');
    if (mine.length === 0 || theirs.length === 0) continue;
    const a = mine.reduce((s, f) => s + f.falseDefers, 0);
    const b = theirs.reduce((s, f) => s + f.falseDefers, 0);
    checks.push(b > 0 ? ratioCheck(`${name}: false defers / quota-status's`, a, b, 'false defers', '<=', 2) : figureCheck(`${name}: false defers (quota-status: 0)`, a, 'false defers', '<=', 0));
  }
  return checks;
}

/** Bounces and false defers per scenario and configuration, as horizontal bars (hand-written SVG). */
function chart(figures: Figure[]): string {
  const W = 760;
  const X0 = 150;
  const ROW = 16;
  const scale = (W - X0 - 60) / Math.max(1, ...figures.map((f) => Math.max(f.bounced, f.falseDefers)));
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const out: string[] = [];
  let y = 40;
  for (const s of SCENARIOS) {
    const rows = figures.filter((f) => f.scenario === s.key);
    if (rows.length === 0) continue;
    out.push(`<text x="8" y="${y}" font-weight="bold">${esc(s.label)}</text>`);
    y += 8;
    for (const f of rows) {
      out.push(`<text x="${X0 - 6}" y="${y + ROW - 4}" text-anchor="end">${esc(short[f.config])}</text>`);
      for (const [i, v, color] of [[0, f.bounced, '#c0392b'], [1, f.falseDefers, '#e6a23c']] as const) {
        const w = Math.max(1, v * scale);
        out.push(`<rect x="${X0}" y="${y + i * (ROW / 2)}" width="${w.toFixed(1)}" height="${ROW / 2 - 1}" fill="${color}"/><text x="${(X0 + w + 4).toFixed(1)}" y="${y + i * (ROW / 2) + ROW / 2 - 2}" font-size="9">${v}</text>`);
      }
      y += ROW + 2;
    }
    y += 14;
  }
  const legend = `<rect x="8" y="10" width="10" height="10" fill="#c0392b"/><text x="22" y="19">bounces (backscatter)</text><rect x="170" y="10" width="10" height="10" fill="#e6a23c"/><text x="184" y="19">false defers (would have fitted)</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n${legend}\n${out.join('\n')}\n</svg>\n`;
}

async function cleanup(): Promise<void> {
  await rig?.stop().catch(() => undefined);
  rig = null;
  await stopChildren();
  await removeTmpDir();
}

runBench(main, cleanup, { onExit: removeTmpDirSync, stack: true });
