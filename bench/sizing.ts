/*
 * Sizing (issue 10): what one RCPT costs the shared tier and the backends on a scaled-down site,
 * next to what the README's model ("Sizing") predicts for the same load, and that model for a large
 * site (--site-*). Not in `npm run bench`: `node --import tsx bench/sizing.ts [--write]` (~3 min).
 * The site: --frontends frontends, cache settings at their defaults (TTLs 30 s under quota, 10 s
 * over, reservations 10 min), a 3-master Redis Cluster, one HTTP backend here answering the seed
 * CGI's text (1 MB quota, 1 in 10 mailboxes over it, nothing delivered: usage does not grow). The
 * load (bench/load.ts): --rate RCPT/s, Zipf (s = --zipf) over --mailboxes, SIZE on ~40%. Measured
 * after --warmup: backend lookups, Redis commands (total_commands_processed of every master: our
 * Lua scripts' commands included); at the end, keys and memory by kind.
 * The model: with one shared cache, a mailbox asked at λ RCPT/s (Poisson) is read once per cycle
 * of TTL + 1/λ: lookups/s = Σ λ/(1 + λ·TTL), a state key a fraction λ·TTL/(1 + λ·TTL) of the time;
 * a mailbox with an accepted, sized RCPT in the last t s has a reservation hash: Σ 1 - e^(-λ_sized·t).
 */
import { startBackend } from '../test/helpers/http-backend.js';
import { redisUnavailable, startRedisCluster } from '../test/helpers/redis.js';
import { bench, epochMs, fmtInt, onCleanup, requireBuild, runClient, runProcess, sleep, startOverquota, stopChild, treeCpu } from './harness.js';
import { mailboxName, requestPool, type PolicyLoadResult } from './load.js';

const QUOTA = 1_000_000;
const TTL_S = { under: 30, over: 10 };
const isOver = (rank: number) => rank % 10 === 7;

/** The model for `rate` RCPT/s Zipf(s) over n mailboxes after `t` s; `sized`: the fraction with a SIZE. */
export function model(n: number, s: number, rate: number, t: number, sized: number) {
  let h = 0;
  for (let k = 1; k <= n; k++) h += 1 / k ** s;
  let [lookups, stateKeys, hashes] = [0, 0, 0];
  for (let k = 1; k <= n; k++) {
    const [l, ttl] = [(rate / k ** s) / h, isOver(k) ? TTL_S.over : TTL_S.under];
    lookups += l / (1 + l * ttl);
    stateKeys += (l * ttl) / (1 + l * ttl);
    if (!isOver(k)) hashes += 1 - Math.exp(-l * sized * t);
  }
  return { lookups, stateKeys, hashes };
}

bench('sizing', { frontends: 4, mailboxes: 100_000, rate: 1000, connections: 40, zipf: 1, warmup: 60, duration: 60, seed: 1, 'site-frontends': 100, 'site-mailboxes': 10_000_000, 'site-rate': 5000 }, async (o) => {
  requireBuild(redisUnavailable());
  const cluster = await startRedisCluster(3);
  onCleanup(() => cluster.stop());
  const node = async (port: number, ...args: string[]) => (await runProcess('redis-cli', ['-p', String(port), ...args], { limitMs: 30_000 })).out;
  const info = async (field: string) => Promise.all(cluster.nodes.map(async (n) => Number(new RegExp(`^${field}:(\\d+)`, 'm').exec(await node(n.port, 'INFO', 'all'))![1])));
  const lookups: number[] = [];
  const backend = await startBackend((url, _req, res) => {
    lookups.push(epochMs());
    const user = url.searchParams.get('u') ?? '';
    const used = isOver(Number(user.slice(1))) ? 2 * QUOTA : 1000;
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`${used > QUOTA ? 'OVERQUOTA' : 'OK'} ${user} ${used} ${QUOTA}\n`);
  });
  onCleanup(() => backend.close());
  const frontends: Awaited<ReturnType<typeof startOverquota>>[] = [];
  for (let i = 0; i < o.frontends; i++) {
    const args = ['--source.type', 'http', '--source.url', backend.url('/quota?u={key}'), '--redis.mode', 'cluster', '--redis.url', cluster.url, '--log.level', 'warn'];
    frontends.push(await startOverquota(`frontend${i + 1}`, (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, ...args]));
  }
  onCleanup(() => Promise.all(frontends.map((f) => stopChild(f.proc))));
  const memoryBefore = await info('used_memory');

  // Redis's command counts, read every second: the window's are interpolated from them.
  const counts: { at: number; total: number }[] = [];
  const poll = async () => counts.push({ at: epochMs(), total: (await info('total_commands_processed')).reduce((a, b) => a + b, 0) });
  let polling = true;
  const poller = (async () => { for (; polling; await sleep(1000)) await poll(); })();
  const started = epochMs();
  const meters = { ...Object.fromEntries(frontends.map((f, i) => [`frontend${i}`, () => treeCpu(f.pid)])), ...Object.fromEntries(cluster.nodes.map((n, i) => [`redis${i}`, () => treeCpu(n.pid)])) };
  const load = { ports: frontends.map((f) => f.port), connections: o.connections, warmupS: o.warmup, durationS: o.duration, rate: o.rate, zipf: { mailboxes: o.mailboxes, s: o.zipf, seed: o.seed }, timeoutMs: 5000 };
  const { result, use } = await runClient<PolicyLoadResult>('load.ts', 'policy', load, { meters, limitMs: (o.warmup + o.duration + 30) * 1000 });
  await ((polling = false), poller.then(poll)); // and one more: a reading after the window's end
  const at = (t: number) => {
    const i = Math.max(1, counts.findIndex((c) => c.at >= t));
    const [a, b] = [counts[i - 1]!, counts[i] ?? counts.at(-1)!];
    return b.at === a.at ? b.total : a.total + ((b.total - a.total) * (t - a.at)) / (b.at - a.at);
  };
  const seconds = (result.windowEnd - result.windowStart) / 1000;
  const [elapsed, backendRps] = [(result.windowEnd - started) / 1000, lookups.filter((t) => t >= result.windowStart && t < result.windowEnd).length / seconds];
  const commands = at(result.windowEnd) - at(result.windowStart);
  // A full SCAN reclaims keys expired but not yet collected (Redis expires lazily: DBSIZE counted ~25% more).
  const perNode = await Promise.all(cluster.nodes.map(async (n) => (await node(n.port, '--scan')).split('\n').filter(Boolean)).map(async (ks) => ({ keys: (await ks).length, hashes: (await ks).filter((k) => k.endsWith(':r')).length })));
  const memory = (await info('used_memory')).reduce((a, b, i) => a + b - memoryBefore[i]!, 0);
  const [keys, hashes] = [perNode.reduce((a, n) => a + n.keys, 0), perNode.reduce((a, n) => a + n.hashes, 0)];
  const sized = requestPool([mailboxName(1)]).filter((b) => !/\nsize=0\n/.test(b.toString('latin1'))).length / 512;
  const predicted = model(o.mailboxes, o.zipf, result.rps, elapsed, sized);
  const site = model(o['site-mailboxes'], o.zipf, o['site-rate'], 600, sized);
  const [perRcpt, bytesPerKey] = [commands / result.requests, memory / keys];
  const row = (what: string, measured: number, model: number | null, unit: string) => [what, fmtInt(measured), model === null ? '-' : fmtInt(model), model === null ? '-' : `${((measured / model - 1) * 100).toFixed(0)}%`, unit];
  return {
    setup: `${o.frontends} frontends (default TTLs) on a 3-master Redis Cluster, one HTTP backend; ${o.connections} connections paced to ${fmtInt(o.rate)} RCPT/s in all, Zipf (s = ${o.zipf}) over ${fmtInt(o.mailboxes)} mailboxes, ${Math.round(sized * 100)}% with SIZE; ${o.warmup} s warm-up, ${o.duration} s measured (${fmtInt(result.rps)} RCPT/s, p99 ${result.p99Ms} ms, ${result.errors} errors). Keys and memory read at the end, ${Math.round(elapsed)} s after the start.`,
    tables: [
      {
        title: 'Measured against the model (the README\'s formulas for this load):',
        head: ['figure', 'measured', 'model', 'measured vs model', 'unit'],
        rows: [
          row('backend lookups per second', backendRps, predicted.lookups, 'lookups/s'),
          row('Redis state keys', keys - hashes, predicted.stateKeys, 'keys'),
          row('Redis reservation hashes', hashes, predicted.hashes, 'hashes'),
          row('Redis commands per second (all masters)', commands / seconds, null, 'commands/s'),
        ],
      },
      {
        title: 'Per RCPT and per key, the figures the README extrapolates from:',
        head: ['figure', 'value'],
        rows: [
          ['Redis commands per RCPT (Lua scripts\' own included)', perRcpt.toFixed(2)],
          ['backend lookups per RCPT', (backendRps / result.rps).toFixed(3)],
          ['Redis memory per key (state keys and reservation hashes, used_memory growth / keys)', `${fmtInt(bytesPerKey)} B`],
          ['keys per master', perNode.map((n) => fmtInt(n.keys)).join(' / ')],
          ['CPU per master, % of a core', cluster.nodes.map((_, i) => `${Math.round(use.cpu[`redis${i}`] ?? 0)}%`).join(' / ')],
          ['CPU per frontend, % of a core', frontends.map((_, i) => `${Math.round(use.cpu[`frontend${i}`] ?? 0)}%`).join(' / ')],
        ],
      },
      {
        title: `The same model and per-RCPT figures for the large site (${fmtInt(o['site-frontends'])} frontends, ${fmtInt(o['site-mailboxes'])} mailboxes, ${fmtInt(o['site-rate'])} RCPT/s, Zipf s = ${o.zipf}, reservations held their whole 10 minutes: the worst case):`,
        head: ['figure', 'value'],
        rows: [
          ['backend lookups per second, all backends', fmtInt(site.lookups)],
          ['Redis keys (state + reservation hashes)', `${fmtInt(site.stateKeys)} + ${fmtInt(site.hashes)}`],
          ['Redis memory', `${((site.stateKeys + site.hashes) * bytesPerKey / 1e6).toFixed(0)} MB`],
          ['Redis commands per second', fmtInt(o['site-rate'] * perRcpt)],
          ['RCPT/s per frontend', fmtInt(o['site-rate'] / o['site-frontends'])],
        ],
      },
    ],
    checks: [],
    problems: [...(result.errors ? [`${result.errors} failed request(s), e.g. ${result.errorSamples[0]}`] : []), ...(result.rps < o.rate * 0.95 ? [`only ${fmtInt(result.rps)} of ${fmtInt(o.rate)} RCPT/s`] : [])],
    figures: [{ backendRps, commandsPerRcpt: perRcpt, bytesPerKey, keys, hashes, predicted, site }],
  };
});
