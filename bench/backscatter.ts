/*
 * Backscatter (issue 10): how many messages a check lets in that the backend then bounces, and how
 * many it defers that would have fitted, on the real path (bench/backscatter-rig.ts): Postfix
 * delivering over LMTP to Dovecot with the quota plugin (1 MiB mailboxes, quota_grace = 0,
 * quota_full_tempfail = no: a full mailbox refuses with 552 and Postfix bounces). Scenarios and
 * configurations are the data below, each scenario with its own seed, so a run repeats.
 * - bounce: a recipient Postfix accepted and then bounced (maillog status=bounced); per 1,000 RCPTs.
 * - false defer: a 4xx at RCPT for a message that would have been delivered (the rig's oracle).
 * - lookups / RCPT: quota lookups against the backend (doveadm requests, quota service requests,
 *   quota-status requests, verification probes), counted by a proxy in front, ÷ RCPTs.
 * - added latency: RCPT -> reply with the check minus without (no check), p50 and p99.
 * It must never pass overquota a flag its build does not know (that exits 64): OVERQUOTA_FLAGS go
 * through `frontend --help` first. --write also redraws bench/backscatter.svg.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { dovecotUnavailable } from '../test/helpers/dovecot.js';
import { postfixUnavailable } from '../test/helpers/postfix.js';
import { redisUnavailable } from '../test/helpers/redis.js';
import { LIMIT, SLOW_DELIVERY_MS, deliveredBytes, falseDefers, redisCalls, redisFootprint, sendMessage, startRig, verifyAddresses, waitDelivered, type ConfigKind, type RcptEvent, type Rig } from './backscatter-rig.js';
import { CLI, ROOT, bench, epochMs, figureCheck, fmtMs, log, onCleanup, prng, ratioCheck, requireBuild, scratch, sleep, versionOf, type Check } from './harness.js';
import { dovecotVersion } from './mailboxes.js';

/** The overquota configurations' own flags, in this one place: name and value pairs (e.g. '--reservations.ttl', '2m'); empty: the defaults. */
const OVERQUOTA_FLAGS: string[] = [];
const KB = 1000;
/** Room for exactly 3 messages of ~50 KB (Dovecot adds ~0.4 KB of headers to each). */
const ROOM_FOR_3 = 175 * KB;
const FREED_BYTES = 20 * KB;
/** Freed space: a new message every FREED_POLL_MS after the expunge, for at most FREED_CAP_MS. */
const [FREED_POLL_MS, FREED_CAP_MS] = [250, 15_000];
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
  /** Bytes stored in each mailbox before the traffic. */
  fill: (rnd: () => number) => Record<string, number>;
  messages?: (rnd: () => number) => Msg[];
  /** Deliveries held (defer_transports) until the traffic is over, then flushed, each SLOW_DELIVERY_MS slow. */
  held?: boolean;
  /** Freed space: full mailbox, expunge, time until a message is accepted again; with the notify hook? */
  freed?: { hook: boolean };
  only?: ConfigKind[];
}
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const burst = (box: string) => (rnd: () => number) => range(20).map(() => Math.floor(rnd() * 2000)).sort((a, b) => a - b).map((at) => ({ at, to: [box], bytes: 48 * KB + Math.floor(rnd() * 4 * KB) }));
const fanout = range(200).map((i) => `f${String(i).padStart(3, '0')}`);
const SCENARIOS: Scenario[] = [
  { key: 'burst', label: 'burst: room for 3, 20 × ~50 KB over 2 s, 10 sessions', seed: 101, sessions: 10, fill: () => ({ b0: LIMIT - ROOM_FOR_3 }), messages: burst('b0') },
  { key: 'held', label: `burst in flight: the same, held then flushed, ${SLOW_DELIVERY_MS} ms per delivery`, seed: 102, sessions: 10, held: true, fill: () => ({ h0: LIMIT - ROOM_FOR_3 }), messages: burst('h0') },
  { key: 'slow', label: 'slow fill: 5 mailboxes from 90%, 30 messages of 2–60 KB, one every 200 ms', seed: 103, sessions: 1, fill: () => Object.fromEntries(range(5).map((i) => [`s${i}`, Math.floor(0.9 * LIMIT)])), messages: (rnd) => range(30).map((i) => ({ at: i * 200, to: [`s${i % 5}`], bytes: 2 * KB + Math.floor(rnd() ** 2 * 58 * KB) })) },
  { key: 'fanout', label: 'fan-out: one 20 KB message to 200 recipients, 30 with 0–40 KB of room', seed: 104, sessions: 1, fill: (rnd) => Object.fromEntries(fanout.map((m, i) => [m, i % 20 < 3 ? LIMIT - Math.floor(rnd() * 40 * KB) : 0])), messages: () => [{ at: 0, to: fanout, bytes: 20 * KB }] },
  { key: 'freed', label: 'freed space: full, doveadm expunge, a 20 KB message every 250 ms', seed: 105, sessions: 1, fill: () => ({ r0: LIMIT + FREED_BYTES }), freed: { hook: false } },
  { key: 'freed-hook', label: 'freed space, with the quota_warning → overquota notify hook', seed: 106, sessions: 1, fill: () => ({ r1: LIMIT + FREED_BYTES }), freed: { hook: true }, only: ['overquota', 'redis'] },
];
const CONFIGS: { key: ConfigKind; label: string; short: string }[] = [
  { key: 'none', label: 'no check', short: 'no check' },
  { key: 'seed', label: "the seed's way (usage > quota, no size, no cache)", short: 'seed' },
  { key: 'quota-status', label: 'Dovecot quota-status', short: 'quota-status' },
  { key: 'verify', label: 'reject_unverified_recipient + lmtp_rcpt_check_quota', short: 'verify' },
  { key: 'overquota', label: 'overquota defaults', short: 'overquota' },
  { key: 'redis', label: 'overquota + Redis, two frontends', short: 'overquota+Redis' },
];

/** Stored size - LF size of a delivered message, from the last scenario that delivered one. */
let overhead = 400;
type Figure = Awaited<ReturnType<typeof runScenario>>;

async function runScenario(r: Rig, config: (typeof CONFIGS)[0], s: Scenario, fill: Record<string, number>, msgs: Msg[]) {
  const resets: { mailbox: string; t: number; bytes: number }[] = [];
  for (const [m, bytes] of Object.entries(fill)) {
    if (bytes > 0) await r.dovecot.fill(m, bytes, { messages: Math.ceil(bytes / 100_000) });
    resets.push({ mailbox: m, t: epochMs(), bytes });
  }
  const lookups0 = r.lookups();
  // A site using address verification has its addresses in verify(8)'s cache: probe each once.
  if (config.key === 'verify') await verifyAddresses(r.ports[0], Object.keys(fill));
  const calls0 = r.redis ? await redisCalls(r.redis) : null;
  let [events, freedMs] = [[] as RcptEvent[], undefined as number | null | undefined];
  if (s.freed) {
    // Asked once while full (so a cache holds "full"), emptied, then asked until it accepts.
    const mailbox = Object.keys(fill)[0]!;
    await r.notifyHook(s.freed.hook);
    events = await sendMessage(r.ports[0], 0, [mailbox], FREED_BYTES);
    await waitDelivered(r, events);
    await r.dovecot.expunge(mailbox);
    const t0 = epochMs();
    resets.push({ mailbox, t: t0, bytes: 0 });
    freedMs = null;
    for (let i = 1; freedMs === null && epochMs() - t0 < FREED_CAP_MS; i++) {
      const [e] = await sendMessage(r.ports[i % 2]!, i, [mailbox], FREED_BYTES);
      events.push(e!);
      if (e!.code === 250) freedMs = e!.t - t0;
      else await sleep(FREED_POLL_MS);
    }
    await r.notifyHook(false);
  } else {
    if (s.held) await r.hold(true);
    r.slowDelivery(s.held ? SLOW_DELIVERY_MS : 0);
    // Each message at its time, at most `sessions` sessions at once, alternating between the two MX.
    const [start, waiting] = [performance.now(), [] as (() => void)[]];
    let free = s.sessions;
    const sent = msgs.map(async (m, i) => {
      await sleep(m.at - (performance.now() - start));
      if (free === 0) await new Promise<void>((resolve) => waiting.push(resolve));
      else free--;
      try {
        return await sendMessage(r.ports[i % 2]!, i, m.to, m.bytes);
      } finally {
        if (waiting.length) waiting.shift()!();
        else free++;
      }
    });
    events = (await Promise.all(sent)).flat();
  }
  const footprint = r.redis ? await redisFootprint(r.redis, Object.keys(fill)) : null;
  if (s.held) await r.hold(false);
  const statuses = await waitDelivered(r, events);
  r.slowDelivery(0);
  const status = (e: RcptEvent) => (e.queueId ? statuses.get(`${e.queueId} ${e.mailbox}`) : undefined);
  const sent = events.filter((e) => status(e) === 'sent');
  const delivered = await deliveredBytes(r.dovecot, Object.keys(fill));
  if (delivered.files > 0 && delivered.files === sent.length) overhead = (delivered.bytes - sent.reduce((a, e) => a + e.lf, 0)) / delivered.files;
  const calls = r.redis && calls0 ? [...(await redisCalls(r.redis))].map(([cmd, n]) => [cmd, n - (calls0.get(cmd) ?? 0)] as const).filter(([, n]) => n > 0) : [];
  const ms = events.map((e) => e.ms).sort((a, b) => a - b);
  const q = (p: number) => ms[Math.min(ms.length - 1, Math.ceil(p * ms.length) - 1)] ?? NaN;
  const rcpts = Math.max(1, events.length);
  return {
    scenario: s.key,
    config: config.key,
    label: config.label,
    rcpts: events.length,
    accepted: events.filter((e) => e.code === 250).length,
    deferred: events.filter((e) => e.code >= 400 && e.code < 500).length,
    rejected: events.filter((e) => e.code >= 500).length,
    bounced: events.filter((e) => status(e) === 'bounced').length,
    falseDefers: falseDefers(events, statuses, resets, overhead),
    // Accepted recipients with no final status when the bench stopped waiting.
    unfinished: events.filter((e) => e.queueId && !status(e)).length,
    lookupsPerRcpt: (r.lookups() - lookups0) / rcpts,
    p50Ms: q(0.5),
    p99Ms: q(0.99),
    // Freed space: ms from the expunge to the first accepted RCPT; null: not within the cap.
    freedMs,
    ...(footprint ? { redis: { perRcpt: calls.reduce((a, [, n]) => a + n, 0) / rcpts, commands: calls.map(([c, n]) => `${c} ${n}`).join(', '), bytesPerMailbox: footprint.mailboxes ? footprint.bytes / footprint.mailboxes : 0, keys: footprint.keys } } : {}),
  };
}

/** Issue 10's targets for each overquota configuration against Dovecot quota-status: bounces ≤ 1/10 of its (0 where it has 0; burst in flight ≤ 1 of 20; slow fill 0), false defers ≤ 2× its. */
function targets(figures: Figure[]): Check[] {
  const of = (scenario: string, config: ConfigKind) => figures.find((f) => f.scenario === scenario && f.config === config);
  return (['overquota', 'redis'] as const).flatMap((config) => {
    const name = CONFIGS.find((c) => c.key === config)!.label;
    const checks = SCENARIOS.flatMap((s) => {
      const [f, qs] = [of(s.key, config), of(s.key === 'freed-hook' ? 'freed' : s.key, 'quota-status')];
      if (!f || !qs) return [];
      if (s.key === 'held') return [figureCheck(`${name}, ${s.key}: bounces of 20`, f.bounced, 'bounces', '<=', 1)];
      if (s.key === 'slow' || qs.bounced === 0) return [figureCheck(`${name}, ${s.key}: bounces (quota-status: ${qs.bounced})`, f.bounced, 'bounces', '<=', 0)];
      return [ratioCheck(`${name}, ${s.key}: bounces / quota-status's`, f.bounced, qs.bounced, 'bounces', '<=', 0.1)];
    });
    const [mine, theirs] = [figures.filter((f) => f.config === config && f.scenario !== 'freed'), figures.filter((f) => f.config === 'quota-status')];
    if (!mine.length || !theirs.length) return checks;
    const [a, b] = [mine, theirs].map((fs) => fs.reduce((s, f) => s + f.falseDefers, 0)) as [number, number];
    return [...checks, b > 0 ? ratioCheck(`${name}: false defers / quota-status's`, a, b, 'false defers', '<=', 2) : figureCheck(`${name}: false defers (quota-status: 0)`, a, 'false defers', '<=', 0)];
  });
}

/** Bounces and false defers per scenario and configuration as horizontal bars, hand-written SVG: a line per scenario. */
function chart(figures: Figure[]): string {
  const [W, X0, ROW] = [760, 150, 16];
  const scale = (W - X0 - 60) / Math.max(1, ...figures.map((f) => Math.max(f.bounced, f.falseDefers)));
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const lines: string[] = [];
  let y = 40;
  for (const s of SCENARIOS.filter((x) => figures.some((f) => f.scenario === x.key))) {
    const parts = [`<text x="8" y="${y}" font-weight="bold">${esc(s.label)}</text>`];
    for (const f of figures.filter((x) => x.scenario === s.key)) {
      y += ROW + 2;
      parts.push(`<text x="${X0 - 6}" y="${y + 2}" text-anchor="end">${esc(CONFIGS.find((c) => c.key === f.config)!.short)}</text>`);
      for (const [i, v, color] of [[0, f.bounced, '#c0392b'], [1, f.falseDefers, '#e6a23c']] as const) {
        const [w, top] = [Math.max(1, v * scale), y - 10 + i * (ROW / 2)];
        parts.push(`<rect x="${X0}" y="${top}" width="${w.toFixed(1)}" height="${ROW / 2 - 1}" fill="${color}"/><text x="${(X0 + w + 4).toFixed(1)}" y="${top + ROW / 2 - 2}" font-size="9">${v}</text>`);
      }
    }
    lines.push(parts.join(''));
    y += 22;
  }
  const legend = '<rect x="8" y="10" width="10" height="10" fill="#c0392b"/><text x="22" y="19">bounces (backscatter)</text><rect x="170" y="10" width="10" height="10" fill="#e6a23c"/><text x="184" y="19">false defers (would have fitted)</text>';
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>${legend}\n${lines.join('\n')}\n</svg>\n`;
}

bench('backscatter', { only: '', scenarios: '' }, async (o) => {
  requireBuild(postfixUnavailable(), dovecotUnavailable({ lmtp: true }), redisUnavailable());
  const pick = <T extends { key: string }>(all: T[], list: string) => (list ? all.filter((x) => list.split(',').includes(x.key)) : all);
  const [configs, scenarios] = [pick(CONFIGS, o.only), pick(SCENARIOS, o.scenarios)];
  const help = execFileSync(process.execPath, [CLI, 'frontend', '--help'], { encoding: 'utf8' });
  const pairs = Array.from({ length: OVERQUOTA_FLAGS.length / 2 }, (_, i) => OVERQUOTA_FLAGS.slice(2 * i, 2 * i + 2));
  for (const [name] of pairs.filter(([name]) => !help.includes(`${name} `))) log(`this overquota does not know ${name}: left out`);
  const flags = pairs.filter(([name]) => help.includes(`${name} `)).flat();
  const started = Date.now();
  const dir = await scratch();
  const plans = scenarios.map((s) => ({ s, fill: s.fill(prng(s.seed)), msgs: s.messages?.(prng(s.seed + 1)) ?? [] }));
  const users = [...new Set(plans.flatMap((p) => Object.keys(p.fill)))];
  const figures: Figure[] = [];
  for (const c of configs) {
    log(`${c.label}: starting Dovecot, Postfix and the check`);
    const rig = await startRig(c.key, users, dir, flags);
    onCleanup(() => rig.stop());
    for (const p of plans.filter((x) => !x.s.only || x.s.only.includes(c.key))) {
      const f = await runScenario(rig, c, p.s, p.fill, p.msgs);
      log(`    ${p.s.key}: ${f.accepted} accepted, ${f.deferred} deferred, ${f.bounced} bounced, ${f.falseDefers} false defers, ${f.lookupsPerRcpt.toFixed(2)} lookups/RCPT, p50 ${fmtMs(f.p50Ms)} ms`);
      figures.push(f);
    }
    await rig.stop();
  }
  if (o.write) writeFileSync(SVG, chart(figures));
  const of = (scenario: string, config: ConfigKind) => figures.find((f) => f.scenario === scenario && f.config === config);
  const freed = (f: Figure) => (f.freedMs === undefined ? '-' : f.freedMs === null ? `> ${FREED_CAP_MS / 1000} s` : `${(f.freedMs / 1000).toFixed(2)} s`);
  const added = (f: Figure) => {
    const base = of(f.scenario, 'none') ?? of('freed', 'none');
    return base && f.config !== 'none' ? `${fmtMs(f.p50Ms - base.p50Ms)} / ${fmtMs(f.p99Ms - base.p99Ms)}` : '-';
  };
  const none = of('burst', 'none');
  return {
    setup: `About ${Math.round((Date.now() - started) / 1000)} s for ${figures.length} runs. Seeds fixed per scenario; added latency is against "no check" in the same scenario.`,
    versions: [versionOf('Postfix', 'postconf', ['-d', '-h', 'mail_version']), dovecotVersion(), versionOf('Redis', 'redis-server', ['--version'], /v=(\S+)/)],
    tables: [
      { head: ['scenario', 'configuration', 'RCPTs', 'accepted', 'deferred', 'bounced', 'bounces / 1,000', 'false defers', 'lookups / RCPT', 'RCPT p50 / p99 ms', 'added p50 / p99 ms', 'accepted again after'], rows: figures.map((f) => [f.scenario, f.label, f.rcpts, f.accepted, f.deferred, f.bounced, ((f.bounced / Math.max(1, f.rcpts)) * 1000).toFixed(0), f.falseDefers, f.lookupsPerRcpt.toFixed(2), `${fmtMs(f.p50Ms)} / ${fmtMs(f.p99Ms)}`, added(f), freed(f)]) },
      {
        title: '**Sizing, toward a large site** (same runs): Redis commands (INFO commandstats deltas over the scenario) per RCPT, and Redis memory (MEMORY USAGE of the keys at the end of the traffic) per mailbox.',
        head: ['scenario', 'configuration', 'backend lookups / RCPT', 'Redis commands / RCPT', 'Redis commands (all)', 'Redis bytes / mailbox', 'Redis keys'],
        rows: figures.filter((f) => f.redis).map((f) => [f.scenario, f.label, f.lookupsPerRcpt.toFixed(2), f.redis!.perRcpt.toFixed(2), f.redis!.commands || '-', f.redis!.bytesPerMailbox.toFixed(0), f.redis!.keys]),
      },
    ],
    checks: targets(figures),
    figures,
    problems: [...figures.flatMap((f) => [...(f.rejected ? [`${f.label}, ${f.scenario}: ${f.rejected} RCPT(s) refused with 5xx`] : []), ...(f.unfinished ? [`${f.label}, ${f.scenario}: ${f.unfinished} accepted recipient(s) without a final status`] : [])]), ...(none && none.bounced === 0 ? ['no check, burst: nothing bounced: the path does not reproduce issue 10'] : [])],
  };
});
