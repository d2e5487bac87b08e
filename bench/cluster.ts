/*
 * Backend (quota source) requests/s as overquota frontends sharing one Redis go 1 -> 2 -> 4 under
 * the same load (target: at most 1.1x one frontend's), and --contrast frontends without Redis:
 * what the shared tier saves. The backend is an HTTP server in this process answering the seed
 * CGI's text after --latency-ms, noting every request. The frontends have short TTLs (under quota
 * 2 s, over 1 s, memory tier 200 ms), so entries keep expiring; Redis is flushed and the frontends
 * are fresh for each run. The load (bench/load.ts): --connections connections spread evenly over the
 * frontends, paced to --rate requests/s in all (unpaced, the policy rate would depend on N, and the
 * backend rate follows it), recipients Zipf (s = --zipf) over --mailboxes mailboxes, 1 in 10 over
 * quota, each connection its own seeded stream. A redundant backend request: a mailbox asked again
 * less than its TTL - 100 ms after the previous answer, or while one for it was in flight.
 * The N frontends must never get different load: the paced, seeded streams are the same for every N.
 */
import { startBackend, cgiAnswer } from '../test/helpers/http-backend.js';
import { redisUnavailable, startRedis } from '../test/helpers/redis.js';
import { bench, epochMs, log, fmtInt, measureRounds, onCleanup, pct, ratioCheck, requireBuild, runClient, selfCpu, startOverquota, stopChild, treeCpu } from './harness.js';
import { mailboxName, type PolicyLoadResult } from './load.js';

const TARGET_RATIO = 1.1;
const TTL_MS = { under: 2000, over: 1000, memory: 200 };
/** A backend request less than TTL - this after the previous answer for its mailbox is redundant. */
const REDUNDANT_SLACK_MS = 100;
/** Every mailbox's quota, bytes: 1 in 10 uses twice that (OVERQUOTA), the others 1000. */
const QUOTA = 1_000_000;
const isOver = (rank: number) => rank % 10 === 7;

interface Fetch {
  mailbox: string;
  start: number;
  done: number;
}

bench('cluster', { frontends: '1,2,4', contrast: 2, connections: 40, warmup: 2, duration: 10, mailboxes: 10000, zipf: 1, 'latency-ms': 2, rate: 6000, seed: 1, retries: 1 }, async (o) => {
  requireBuild(redisUnavailable());
  const redis = await startRedis();
  onCleanup(() => redis.stop());
  const cgi = cgiAnswer(Object.fromEntries(Array.from({ length: o.mailboxes }, (_, k) => [mailboxName(k + 1), isOver(k + 1) ? 2 * QUOTA : 1000])), QUOTA);
  let fetches: Fetch[] = [];
  const backend = await startBackend((url, req, res) => {
    const start = epochMs();
    setTimeout(() => {
      cgi(url, req, res);
      fetches.push({ mailbox: url.searchParams.get('u') ?? '', start, done: epochMs() });
    }, o['latency-ms']);
  });
  onCleanup(() => backend.close());
  const configs = [...o.frontends.split(',').map((n) => ({ frontends: Number(n), redis: true })), ...(o.contrast ? [{ frontends: o.contrast, redis: false }] : [])];
  const describe = (c: (typeof configs)[0]) => `${c.frontends} frontend${c.frontends > 1 ? 's' : ''}, ${c.redis ? 'shared Redis' : 'no Redis (memory only)'}`;
  const ttls = ['--cache.ttl.under_quota', `${TTL_MS.under}ms`, '--cache.ttl.over_quota', `${TTL_MS.over}ms`, '--cache.memory_ttl', `${TTL_MS.memory}ms`];

  const runs = await measureRounds(configs, describe, async (config) => {
    if (config.redis) await redis.cli('FLUSHALL');
    const frontends: Awaited<ReturnType<typeof startOverquota>>[] = [];
    try {
      // One after the other: free ports picked at once could collide.
      for (let i = 0; i < config.frontends; i++) {
        frontends.push(await startOverquota(`frontend${i + 1}`, (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, '--source.type', 'http', '--source.url', backend.url('/quota?u={key}'), ...(config.redis ? ['--redis.url', redis.url] : []), ...ttls, '--log.level', 'warn']));
      }
      fetches = [];
      const meters = { ...Object.fromEntries(frontends.map((f, i) => [`frontend${i}`, () => treeCpu(f.pid)])), Redis: () => treeCpu(redis.pid), backend: selfCpu };
      const load = { ports: frontends.map((f) => f.port), connections: o.connections, warmupS: o.warmup, durationS: o.duration, rate: o.rate, zipf: { mailboxes: o.mailboxes, s: o.zipf, seed: o.seed }, timeoutMs: 5000 };
      const { result, use } = await runClient<PolicyLoadResult>('load.ts', 'policy', load, { meters, limitMs: (o.warmup + o.duration + 20) * 1000 });
      // Each backend request in the window against the previous one for its mailbox (warm-up included).
      const [previous, fetched, gaps] = [new Map<string, Fetch>(), new Set<string>(), [] as number[]];
      let [count, inFlight, rightAfter] = [0, 0, 0];
      for (const f of fetches.sort((a, b) => a.start - b.start)) {
        const prev = previous.get(f.mailbox);
        previous.set(f.mailbox, f);
        if (f.start < result.windowStart || f.start >= result.windowEnd) continue;
        count++;
        fetched.add(f.mailbox);
        const gap = prev ? f.start - prev.done : Infinity;
        if (gap < 0) inFlight++;
        else if (gap < (isOver(Number(f.mailbox.slice(1))) ? TTL_MS.over : TTL_MS.under) - REDUNDANT_SLACK_MS) gaps.push(gap);
        if (gap >= 0 && gap < 50) rightAfter++;
      }
      const seconds = (result.windowEnd - result.windowStart) / 1000;
      log(`    policy ${fmtInt(result.rps)} req/s, backend ${fmtInt(count / seconds)} req/s, ${inFlight + gaps.length} redundant; other CPU ${use.other}%`);
      return { config, result, use, other: use.other, backendRps: count / seconds, per1000: (count * 1000) / Math.max(1, result.requests), redundant: inFlight + gaps.length, count, inFlight, rightAfter, gapP50: gaps.sort((a, b) => a - b)[gaps.length >> 1], fetched: fetched.size, frontendCpu: frontends.map((_, i) => pct(use.cpu[`frontend${i}`])).join(' + '), seconds };
    } finally {
      await Promise.all(frontends.map((f) => stopChild(f.proc)));
    }
  }, { retries: o.retries, retryWithinMs: 110_000 });

  const base = runs[0]!;
  const shared = runs.filter((r) => r.config.redis && r !== base);
  const short = runs.filter((r) => o.rate && r.result.rps < o.rate * 0.97).map((r) => `${describe(r.config)} (${fmtInt(r.result.rps)} req/s)`);
  return {
    setup: `${o.connections} closed-loop connections in all, spread evenly over the frontends, ${o.rate ? `paced to ${fmtInt(o.rate)} policy requests/s in all` : 'unpaced'}; recipients Zipf (s = ${o.zipf}) over ${fmtInt(o.mailboxes)} mailboxes; backend latency ${o['latency-ms']} ms; TTLs under quota ${TTL_MS.under / 1000} s, over quota ${TTL_MS.over / 1000} s, memory tier ${TTL_MS.memory} ms; ${o.warmup} s warm-up then ${o.duration} s measured per run; Redis flushed and fresh frontends before each run.`,
    tables: [
      {
        title: 'CPU in % of one core over the measured window (backend: this bench process, which serves it; kernel threads: network work charged to no process); machine idle in % of all cores; other = busy cores minus everything listed:',
        head: ['frontends', 'cache', 'policy req/s (per frontend)', 'backend req/s', 'backend req per 1000 policy', 'vs 1 frontend', 'redundant (within 50 ms / in flight / median gap ms)', 'mailboxes asked / fetched', 'p99 ms', 'errors', 'frontend CPU', 'Redis CPU', 'backend CPU', 'client CPU', 'kernel threads', 'machine idle', 'other CPU'],
        rows: runs.map((r) => [r.config.frontends, r.config.redis ? 'shared Redis' : 'memory only', `${fmtInt(r.result.rps)} (${r.result.perPort.map((n) => fmtInt(n / r.seconds)).join(' / ')})`, fmtInt(r.backendRps), r.per1000.toFixed(1), (r.backendRps / base.backendRps).toFixed(2), `${fmtInt(r.redundant)} (${fmtInt(r.rightAfter)} / ${fmtInt(r.inFlight)} / ${r.gapP50?.toFixed(1) ?? '-'})`, `${fmtInt(r.result.mailboxesAsked)} / ${fmtInt(r.fetched)}`, r.result.p99Ms.toFixed(2), r.result.errors, r.frontendCpu, pct(r.use.cpu.Redis), pct(r.use.cpu.backend), pct(r.use.cpu.client), pct(r.use.cpu.kernel), pct(r.use.idle), pct(r.other)]),
      },
    ],
    checks: shared.map((r) => ratioCheck(`backend req/s with ${r.config.frontends} frontends on one Redis / with 1`, r.backendRps, base.backendRps, 'backend req/s', '<=', TARGET_RATIO)),
    headline: runs.map((r) => ({ item: 'cluster', config: describe(r.config), runs: 1, figure: r.backendRps, unit: 'backend req/s', ratios: `${(r.backendRps / base.backendRps).toFixed(2)}× 1 frontend; ${r.per1000.toFixed(1)} per 1000 policy requests` })),
    problems: [...(short.length ? [`below the ${fmtInt(o.rate)} req/s aimed at, so not comparable: ${short.join(', ')}; lower --rate`] : []), ...runs.filter((r) => r.result.errors).map((r) => `${describe(r.config)}: ${r.result.errors} failed policy request(s), e.g. ${r.result.errorSamples[0]}`)],
    otherCpu: runs.map((r) => r.other),
  };
});
