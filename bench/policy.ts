/*
 * Item 1: Postfix policy requests/s and latency at 50 and 200 persistent connections, in one
 * invocation, of the fixed-answer server (bench/load.ts, the Node ceiling) and the same server
 * reading requests with overquota's decoder; overquota frontend reading the Maildirs with a warm
 * cache: every setting at its default (log info, a line for refusals only), --log.decisions all,
 * --log.level warn, and at the first connection count the defaults without the admin listener (no
 * metrics) and without reservations, in the same rounds (the A/B of issues 13 and 10); overquota
 * with every lookup a miss (--source.type http --cache.max_entries 0) asking overquota
 * quota-service; and Dovecot quota-status, all on the same 200 mailboxes (bench/mailboxes.ts).
 * The same closed-loop load (bench/load.ts, its own process) over 210 recipients; per connection
 * count, --rounds rounds in alternating order, each figure the median of its rounds. --calibrate
 * 2,5: the fixed server burning that many µs of CPU per request. --node-flags="--cpu-prof": node's
 * flags for overquota (the package's: packaging/bin/overquota). Ratios only ever within one run.
 */
import { dovecotUnavailable } from '../test/helpers/dovecot.js';
import { bench, countLines, log, figureCheck, fmtInt, fmtMs, fmtRatio, fmtSpread, interleaved, measureRounds, median, pct, ratioCheck, requireBuild, runClient, spread, startOverquota, stopChild, treeCpu, type Check, type Meters } from './harness.js';
import { startFixed, type PolicyLoadResult } from './load.js';
import { dovecotVersion, maildirArgs, recipients, startMailboxes } from './mailboxes.js';

/** Issue 6's targets; then issue 13's (metrics within 3% of none) and issue 10's (reservations within 5% of none). */
const TARGETS = { warmVsFixed: 0.8, warmVsDovecot: 20, warmP99Ms: 2, missVsDovecot: 5, metricsVsNone: 0.97, reservationsVsNone: 0.95 };
const LABELS: Record<string, string> = { fixed: 'fixed server', default: 'overquota, warm cache, defaults (log info, decisions: refusals)', info: 'overquota, warm cache (log info, decisions: all)', warn: 'overquota, warm cache (log warn)', miss: 'overquota, every lookup a miss (HTTP quota service)', dovecot: 'Dovecot quota-status', nometrics: 'overquota, warm cache, defaults but no admin listener (no metrics)', decoder: "overquota's decoder alone (DUNNO to all, no decision)", noreserve: 'overquota, warm cache, defaults but reservations off' };
const KEYS = ['fixed', 'decoder', 'default', 'info', 'warn', 'miss', 'dovecot'];
/** The A/B pairs, at the first connection count only: each against `default`, run next to it in every round (apart, drift within a round fell on them unequally). */
const AB_KEYS = ['nometrics', 'noreserve'];
/** Dovecot at 200 connections can take seconds for one answer: its latency, not a failure. */
const REQUEST_TIMEOUT_MS = 30_000;

bench('policy', { connections: '50,200', warmup: 2, duration: 5, users: 200, rounds: 5, retries: 1, calibrate: '', 'node-flags': '' }, async (o) => {
  requireBuild(dovecotUnavailable());
  const counts = o.connections.split(',').map(Number);
  const dovecot = await startMailboxes(o.users, Math.max(...counts) + 60);
  const store = maildirArgs(dovecot);
  const nodeFlags = o['node-flags'].split(' ').filter(Boolean);
  const frontend = (name: string, args: string[]) => startOverquota(name, (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, ...args], { nodeFlags });
  const [fixed, decoder] = [await startFixed(), await startFixed(0, true)];
  const info = await frontend('warm-info', [...store, '--log.level', 'info', '--log.decisions', 'all']);
  // The defaults and their A/B pairs: a fresh process each run, lest one process's luck pass for a setting's cost.
  const fresh: Record<string, string[]> = { default: store, nometrics: [...store, '--admin.listen', ''], noreserve: [...store, '--reservations.enabled', 'false'] };
  const warn = await frontend('warm-warn', [...store, '--log.level', 'warn']);
  // As many lookups at once as the frontend opens connections to it: the default 8 would answer the 9th 503.
  const qs = await startOverquota('quota-service', (port) => ['quota-service', '--quota_service.listen', `127.0.0.1:${port}`, '--quota_service.max_concurrent_scans', '16', ...store, '--log.level', 'info'], { nodeFlags });
  const miss = await frontend('miss', ['--source.type', 'http', '--source.url', `http://127.0.0.1:${qs.port}/quota?u={key}`, '--source.max_connections', '16', '--cache.max_entries', '0', '--log.level', 'info', '--log.decisions', 'all']);
  const servers: Record<string, { port: number; meters: Meters }> = {
    fixed: { port: fixed.port, meters: { server: () => treeCpu(fixed.pid) } },
    decoder: { port: decoder.port, meters: { server: () => treeCpu(decoder.pid) } },
    info: { port: info.port, meters: { server: () => treeCpu(info.pid) } },
    warn: { port: warn.port, meters: { server: () => treeCpu(warn.pid) } },
    miss: { port: miss.port, meters: { frontend: () => treeCpu(miss.pid), 'quota service': () => treeCpu(qs.pid) } },
    dovecot: { port: dovecot.quotaStatusPort!, meters: { Dovecot: () => treeCpu(dovecot.pid) } },
  };
  const calibrate = o.calibrate.split(',').filter(Boolean).map(Number);
  for (const us of calibrate) {
    const f = await startFixed(us);
    servers[`+${us}`] = { port: f.port, meters: { server: () => treeCpu(f.pid) } };
    LABELS[`+${us}`] = `fixed server + ${us} µs of CPU per request`;
  }
  const missCounts = () => Promise.all([countLines(miss.logFile, ['"msg":"decision"']), countLines(qs.logFile, ['"msg":"quota request"']), countLines(qs.logFile, ['"msg":"quota request"', '"level":40'])]);
  const keysAt = (c: number) => (c === counts[0] ? KEYS.flatMap((k) => (k === 'default' ? [k, ...AB_KEYS] : [k])) : KEYS);
  const steps = [...counts.flatMap((c) => interleaved(keysAt(c), o.rounds).map(({ key }) => ({ key, c }))), ...calibrate.map((us) => ({ key: `+${us}`, c: counts[0]! }))];
  const runs = await measureRounds(
    steps,
    ({ key, c }) => `${LABELS[key]}: ${c} connections, ${o.warmup} s warm-up, ${o.duration} s measured`,
    async ({ key, c }) => {
      const before = key === 'miss' ? await missCounts() : null;
      const own = fresh[key] ? await frontend(`warm-${key}`, fresh[key]) : null;
      const server = own ? { port: own.port, meters: { server: () => treeCpu(own.pid) } } : servers[key]!;
      const load = { ports: [server.port], connections: c, warmupS: o.warmup, durationS: o.duration, recipients: recipients(o.users), timeoutMs: REQUEST_TIMEOUT_MS };
      const { result, use } = await runClient<PolicyLoadResult>('load.ts', 'policy', load, { meters: server.meters, limitMs: (o.warmup + o.duration) * 1000 + 2 * REQUEST_TIMEOUT_MS }).finally(() => own && stopChild(own.proc));
      const after = before ? await missCounts() : null;
      log(`    ${fmtInt(result.rps)} req/s, p99 ${fmtMs(result.p99Ms)} ms, ${result.errors} errors; other CPU ${use.other}%`);
      // counts (every lookup a miss): decision lines of the frontend, request lines (and error ones) of the quota service, warm-up included.
      return { ...result, key, c, use, other: use.other, counts: after?.map((n, i) => n - before![i]!) };
    },
    { retries: o.retries, retryWithinMs: 150_000 },
  );

  type Run = (typeof runs)[number];
  const of = (key: string, c: number) => runs.filter((r) => r.key === key && r.c === c);
  const rps = (key: string, c: number) => median(of(key, c).map((r) => r.rps));
  const serverCpu = (r: Run) => Object.keys(servers[r.key]?.meters ?? { server: 0 }).map((m) => pct(r.use.cpu[m])).join(' + ');
  const groups = [...counts.flatMap((c) => keysAt(c).map((key) => ({ key, c }))), ...calibrate.map((us) => ({ key: `+${us}`, c: counts[0]! }))];
  const vs = (key: string, c: number, base: string) => fmtRatio(rps(key, c) / rps(base, c));
  const checks: Check[] = counts.flatMap((c) => [
    ...['default', 'warn'].flatMap((key) => [
      ratioCheck(`${LABELS[key]} / fixed server, ${c} connections`, rps(key, c), rps('fixed', c), 'req/s', '>=', TARGETS.warmVsFixed),
      ratioCheck(`${LABELS[key]} / Dovecot quota-status, ${c} connections`, rps(key, c), rps('dovecot', c), 'req/s', '>=', TARGETS.warmVsDovecot),
      ...(c === 50 ? [figureCheck(`${LABELS[key]}: p99, 50 connections`, median(of(key, c).map((r) => r.p99Ms)), 'ms', '<=', TARGETS.warmP99Ms)] : []),
    ]),
    ratioCheck(`${LABELS.miss} / Dovecot quota-status, ${c} connections`, rps('miss', c), rps('dovecot', c), 'req/s', '>=', TARGETS.missVsDovecot),
    ...(c === counts[0] ? [ratioCheck(`metrics on / off (defaults, warm cache), ${c} connections`, rps('default', c), rps('nometrics', c), 'req/s', '>=', TARGETS.metricsVsNone), ratioCheck(`reservations on / off (defaults, warm cache), ${c} connections`, rps('default', c), rps('noreserve', c), 'req/s', '>=', TARGETS.reservationsVsNone)] : []),
  ]);
  const shares = (r: Run) => {
    const total = Object.values(r.actions).reduce((a, b) => a + b, 0) || 1;
    return Object.entries(r.actions).sort((a, b) => b[1] - a[1]).map(([a, n]) => `${Math.round((n * 100) / total)}% \`${a}\``).join(', ');
  };
  const missRuns = runs.filter((r) => r.counts);
  return {
    setup: `${o.users} mailboxes, ${recipients(o.users).length} recipient addresses; ${o.warmup} s warm-up then ${o.duration} s measured per run; at ${counts.join(' and ')} connections ${o.rounds} round(s) of every target in alternating order, each figure the median of its rounds (max: the highest).`,
    versions: [dovecotVersion()],
    tables: [
      {
        head: ['connections', 'target', 'runs', 'req/s', 'min–max', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'vs fixed', 'vs Dovecot'],
        rows: groups.map(({ key, c }) => {
          const rs = of(key, c);
          return [c, LABELS[key]!, rs.length, fmtInt(rps(key, c)), fmtSpread(spread(rs.map((r) => r.rps))), fmtMs(median(rs.map((r) => r.p50Ms))), fmtMs(median(rs.map((r) => r.p99Ms))), fmtMs(Math.max(...rs.map((r) => r.maxMs))), rs.reduce((a, r) => a + r.errors, 0), serverCpu(rs[0]!), pct(median(rs.map((r) => r.use.cpu.client ?? 0))), vs(key, c, 'fixed'), key.startsWith('+') ? '-' : vs(key, c, 'dovecot')];
        }),
      },
      {
        title: 'Every run, in order (CPU in % of one core: the server (for the miss: frontend + quota service), the load client, the kernel threads; machine idle in % of all cores; other = busy cores minus all of those):',
        head: ['#', 'connections', 'target', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'server CPU', 'client CPU', 'kernel threads', 'machine idle', 'other CPU'],
        rows: runs.map((r, i) => [i + 1, r.c, LABELS[r.key]!, fmtInt(r.rps), fmtMs(r.p50Ms), fmtMs(r.p99Ms), fmtMs(r.maxMs), r.errors, serverCpu(r), pct(r.use.cpu.client), pct(r.use.cpu.kernel), pct(r.use.idle), pct(r.other)]),
      },
    ],
    checks,
    headline: groups.filter(({ key }) => !key.startsWith('+')).map(({ key, c }) => ({ item: `1. policy, ${c} connections`, config: LABELS[key]!, runs: of(key, c).length, figure: rps(key, c), unit: 'req/s', spread: spread(of(key, c).map((r) => r.rps)), p50: median(of(key, c).map((r) => r.p50Ms)), p99: median(of(key, c).map((r) => r.p99Ms)), ratios: `${vs(key, c, 'fixed')}× fixed, ${vs(key, c, 'dovecot')}× Dovecot` })),
    notes: [
      `Answers in the first run of each: ${['default', 'miss', 'dovecot'].map((key) => `${LABELS[key]}: ${shares(runs.find((r) => r.key === key)!)}`).join('; ')}.`,
      `Every lookup a miss: ${missRuns.map((r) => `${fmtInt(r.counts![1]!)} HTTP requests for ${fmtInt(r.counts![0]!)} decisions at ${r.c} connections (${(r.counts![1]! / Math.max(1, r.counts![0]!)).toFixed(2)} per decision: concurrent lookups of a mailbox share one)`).join(', ')}; warm-up included.`,
    ],
    problems: [...runs.filter((r) => r.errors).map((r) => `${LABELS[r.key]} at ${r.c} connections: ${r.errors} failed request(s), e.g. ${r.errorSamples[0]}`), ...missRuns.filter((r) => r.counts![2]).map((r) => `the quota service answered ${r.counts![2]} request(s) with an error at ${r.c} connections`)],
    otherCpu: runs.map((r) => r.other),
  };
});
