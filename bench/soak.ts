/*
 * Soak (issue 11): the memory of one overquota frontend with Redis and an HTTP source over a long
 * paced run: VmRSS of /proc/PID/status at minute 1 and in the last minute, the slope, the peak.
 * Not part of `npm run bench` (30 minutes): `npm run soak -- --minutes N [--write]`. Never beside
 * another heavy load: on 2 cores one is the frontend's, the other Redis's, the backend's and the load's.
 *
 * On loopback: a private Redis (test/helpers/redis.ts); an HTTP backend in this process answering
 * the seed quota.cgi's text for --mailboxes mailboxes (100 MB quota, 1 in 10 over it); the built
 * frontend with `--source.type http --redis.url ... --log.level info` and every other setting at
 * its default (TTLs 30 s / 10 s / 60 s, memory tier 2 s, reservations 10 min). The load, in this
 * process (bench/load.ts): --connections connections paced to --rate requests/s, recipients Zipf
 * (s = 1) over the mailboxes, so entries expire and misses keep coming, a new `instance` every two
 * recipients (a Postfix transaction), so reservations are made. Mail that fits is "delivered" a
 * second after its RCPT (the backend's usage grows: a later reading drops its reservation), but
 * --phantoms of it (a transaction that failed after RCPT: only reservations.ttl ends those).
 *
 * Every --sample seconds: VmRSS, RssAnon, VmHWM, and the frontend's heap used and total and new
 * space, appended to a file by a preload (--import; measured: within 1 MB of RSS at start).
 * Targets: RSS ≤ 100 MB (10^6 bytes) at every reading; flat: a least-squares slope over the second
 * half ≤ 1 MB per 10 minutes. --node-flags= (with `=`) replaces the package's, --frontend-flags= adds
 * overquota settings. (--heap-snapshots DIR, which found the leaks, is in git history to 93682a3.)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startBackend } from '../test/helpers/http-backend.js';
import { startRedis } from '../test/helpers/redis.js';
import { ROOT, bench, figureCheck, fmtInt, log, onCleanup, pct, prng, requireBuild, scratch, sleep, startOverquota, stopChild, treeCpu, waitForQuiet } from './harness.js';
import { ClosedLoop, mailboxName, requestPool, zipfSampler } from './load.js';

const TARGET_RSS_MB = 100;
/** Flat: the slope of RSS over the second half of the run, MB per 10 minutes, at most this. */
const TARGET_SLOPE_MB = 1;
const QUOTA_BYTES = 100e6;
/** Accepted mail shows in the backend's usage this long after its RCPT (a quick delivery). */
const DELIVERY_DELAY_MS = 1000;

interface Reading {
  s: number;
  rss: number;
  anon: number;
  hwm: number;
  /** From the preload; null before its first line. MB, like the rest. */
  v8: { heapUsed: number; heapTotal: number; newSpace: number } | null;
}

const mb = (bytes: number) => Math.round(bytes / 1e5) / 10;

// The Debian package's node flags (its /usr/bin/overquota), unless --node-flags says others.
const SHIPPED = /exec \S+ (.*) \S+\/dist\/cli\.js/.exec(readFileSync(path.join(ROOT, 'packaging/bin/overquota'), 'utf8'))![1]!;
bench('soak', { minutes: 30, rate: 2000, connections: 50, mailboxes: 100_000, phantoms: 0.02, sample: 5, 'node-flags': SHIPPED, 'frontend-flags': '' }, async (o) => {
  requireBuild();
  const dir = await scratch();
  const words = (s: string) => s.split(/\s+/).filter(Boolean);

  // The backend: the seed CGI's "OK|OVERQUOTA user usage quota"; usage grows with deliveries.
  const rnd = prng(7);
  const usage = Float64Array.from({ length: o.mailboxes + 1 }, (_, k) => (k > 0 && k % 10 === 0 ? QUOTA_BYTES + 1e6 : Math.floor(rnd() * 0.99 * QUOTA_BYTES)));
  const backend = await startBackend((url, _req, res) => {
    const user = url.searchParams.get('u') ?? '';
    const used = usage[Number(user.slice(1))] ?? 0;
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`${used > QUOTA_BYTES ? 'OVERQUOTA' : 'OK'} ${user} ${used} ${QUOTA_BYTES}\n`);
  });
  onCleanup(() => backend.close());
  const deliveries: { rank: number; size: number; at: number }[] = [];
  const deliver = setInterval(() => {
    let n = 0;
    while (n < deliveries.length && deliveries[n]!.at <= performance.now()) usage[deliveries[n]!.rank]! += deliveries[n++]!.size;
    deliveries.splice(0, n);
  }, 100);
  onCleanup(() => clearInterval(deliver));
  const redis = await startRedis();
  onCleanup(() => redis.stop());

  const v8File = path.join(dir, 'v8.jsonl');
  const preload = path.join(dir, 'v8-figures.mjs');
  writeFileSync(
    preload,
    `import { appendFileSync } from 'node:fs'; import v8 from 'node:v8';
setInterval(() => { const m = process.memoryUsage(); const n = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
appendFileSync(${JSON.stringify(v8File)}, JSON.stringify({ heapUsed: m.heapUsed, heapTotal: m.heapTotal, newSpace: n ? n.space_size : 0 }) + '\\n'); }, ${o.sample * 1000}).unref();\n`,
  );
  const sourceUrl = backend.url('/cgi-bin/quota.cgi?u={key}');
  const nodeFlags = [...words(o['node-flags']), '--import', preload];
  const fe = await startOverquota('frontend', (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, '--source.type', 'http', '--source.url', sourceUrl, '--redis.url', redis.url, '--log.level', 'info', ...words(o['frontend-flags'])], { nodeFlags });
  log(`frontend pid ${fe.pid}, Redis ${redis.url}, backend ${sourceUrl}: ${o.minutes} min at ${o.rate} req/s`);
  await waitForQuiet();

  // The requests of load.ts with the recipient and the instance filled in per request.
  const templates = requestPool(['RCPT@example.com']).map((b) => {
    const [head, rest] = b.toString('latin1').split('RCPT@example.com') as [string, string];
    const m = /instance=[^\n]*/.exec(rest)!;
    return { head, mid: rest.slice(0, m.index + 9), tail: rest.slice(m.index + m[0].length), size: Number(/size=(\d+)/.exec(rest)![1]) };
  });
  const conns = Array.from({ length: o.connections }, (_, id) => ({ next: (id * 97) % templates.length, n: 0, draw: zipfSampler(o.mailboxes, 1, prng(1_000_003 + id)), phantom: prng(id) }));
  const loop = new ClosedLoop({
    ports: [fe.port],
    connections: o.connections,
    rate: o.rate,
    timeoutMs: 10_000,
    request: (id) => {
      const c = conns[id]!;
      const t = templates[c.next]!;
      c.next = (c.next + 1) % templates.length;
      const rank = c.draw();
      if (t.size > 0 && usage[rank]! + t.size <= QUOTA_BYTES && c.phantom() >= o.phantoms) deliveries.push({ rank, size: t.size, at: performance.now() + DELIVERY_DELAY_MS });
      return `${t.head}${mailboxName(rank)}@example.com${t.mid}${(0x1000 + id).toString(16)}.${(c.n++ >> 1).toString(16)}${t.tail}`;
    },
  });
  await loop.connect();
  const readings: Reading[] = [];
  const start = performance.now();
  const read = () => {
    const status = readFileSync(`/proc/${fe.pid}/status`, 'latin1');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status)![1]) * 1024;
    // The last whole line: the preload may be writing the next one (a+: empty before its first).
    const v8 = /([^\n]*)\n$/.exec(readFileSync(v8File, { encoding: 'latin1', flag: 'a+' }))?.[1];
    const m = v8 ? (JSON.parse(v8) as Record<string, number>) : null;
    readings.push({ s: (performance.now() - start) / 1000, rss: mb(kb('VmRSS')), anon: mb(kb('RssAnon')), hwm: mb(kb('VmHWM')), v8: m && { heapUsed: mb(m.heapUsed!), heapTotal: mb(m.heapTotal!), newSpace: mb(m.newSpace!) } });
  };
  const cpu0 = treeCpu(fe.pid);
  loop.measuring = true;
  loop.start();
  const sampler = setInterval(() => {
    read();
    const r = readings.at(-1)!;
    if (Math.floor(r.s / 60) === Math.floor((r.s - o.sample) / 60)) return;
    log(`  minute ${Math.round(r.s / 60)}: ${fmtInt(loop.counted)} replies, RSS ${r.rss} MB, heap used ${r.v8?.heapUsed ?? '?'} MB`);
  }, o.sample * 1000);
  onCleanup(() => clearInterval(sampler));
  await sleep(o.minutes * 60_000);
  clearInterval(sampler);
  read();
  const seconds = (performance.now() - start) / 1000;
  const cpu = cpu0 === null ? null : ((treeCpu(fe.pid)! - cpu0) / seconds) * 100;
  loop.measuring = false;
  await loop.stop();
  const keys = await redis.cli('DBSIZE');
  const redisMB = mb(Number(/used_memory:(\d+)/.exec(await redis.cli('INFO', 'memory'))?.[1]));
  await stopChild(fe.proc);

  const minute1 = readings.find((r) => r.s >= 60) ?? readings.at(-1)!;
  const last = readings.filter((r) => r.s >= seconds - 60).map((r) => r.rss).sort((a, b) => a - b);
  const lastMinute = last[last.length >> 1]!;
  const peak = Math.max(...readings.map((r) => r.rss));
  const slope = slopePer10Min(readings.filter((r) => r.s >= seconds / 2));
  const rps = loop.counted / seconds;
  const total = [...loop.actions.values()].reduce((a, b) => a + b, 0);
  const shown = new Set([1, 2, ...Array.from({ length: Math.floor(o.minutes / 5) }, (_, i) => (i + 1) * 5)].map((m) => readings.find((r) => r.s >= m * 60)).concat(readings.at(-1)));
  const config = `Redis + HTTP source, ${fmtInt(o.rate)} req/s, ${Math.round(seconds / 60)} min`;
  return {
    setup: `${o.connections} connections paced to ${fmtInt(o.rate)} req/s, Zipf over ${fmtInt(o.mailboxes)} mailboxes, ${o.phantoms * 100}% phantoms; node flags \`${o['node-flags'] || '(none)'}\`, frontend flags \`${o['frontend-flags'] || '(none)'}\`. ${fmtInt(loop.counted)} requests in ${(seconds / 60).toFixed(1)} min (${fmtInt(rps)} req/s, frontend CPU ${pct(cpu)} of a core, p99 ${(loop.histogram.percentile(99) / 1000).toFixed(1)} ms). RSS from \`/proc/PID/status\` every ${o.sample} s, V8's figures from the frontend itself; MB = 10^6 bytes.`,
    tables: [{ head: ['minute', 'VmRSS MB', 'RssAnon MB', 'VmHWM MB', 'heap used MB', 'heap total MB', 'new space MB'], rows: [...shown].filter((r) => r !== undefined).map((r) => [r.s / 60, r.rss, r.anon, r.hwm, r.v8?.heapUsed, r.v8?.heapTotal, r.v8?.newSpace].map((x) => x?.toFixed(1) ?? '?')) }],
    checks: [
      figureCheck(`soak: frontend RSS, highest reading (${config})`, peak, 'MB', '<=', TARGET_RSS_MB),
      figureCheck(`soak: frontend RSS slope over the second half, per 10 minutes (${config})`, Math.round(slope * 100) / 100, 'MB', '<=', TARGET_SLOPE_MB),
    ],
    headline: [{ item: '4. frontend RSS, soak', config: `${config}, minute 1 → last minute (median)`, runs: 1, figure: lastMinute, unit: 'MB', ratios: `${minute1.rss} MB at minute 1, peak ${peak} MB, slope ${slope >= 0 ? '+' : ''}${slope.toFixed(2)} MB per 10 min` }],
    notes: [
      `RSS ${minute1.rss} MB at minute 1, ${lastMinute} MB in the last minute (median), peak ${peak} MB (VmHWM ${Math.max(...readings.map((r) => r.hwm))} MB); slope over the second half ${slope >= 0 ? '+' : ''}${slope.toFixed(2)} MB per 10 minutes.`,
      `Redis at the end: ${keys} keys, used_memory ${redisMB} MB. Answers: ${[...loop.actions].map(([a, n]) => `${Math.round((n * 100) / Math.max(1, total))}% \`${a}\``).join(', ')}.`,
    ],
    problems: [...(loop.errors ? [`${loop.errors} failed request(s), e.g. ${loop.errorSamples[0]}`] : []), ...(rps < o.rate * 0.95 ? [`only ${fmtInt(rps)} of ${fmtInt(o.rate)} req/s: the frontend or the machine could not keep up`] : [])],
    figures: [{ minutes: Math.round(seconds / 6) / 10, rps: Math.round(rps), rssMinute1MB: minute1.rss, rssLastMinuteMB: lastMinute, peakRssMB: peak, slopeMBPer10Min: Math.round(slope * 100) / 100, readings }],
  };
});

/** Least-squares slope of VmRSS over time, MB per 10 minutes (0 with fewer than two readings). */
function slopePer10Min(rs: Reading[]): number {
  const [mt, mr] = [rs.reduce((a, r) => a + r.s, 0) / rs.length, rs.reduce((a, r) => a + r.rss, 0) / rs.length];
  const den = rs.reduce((a, r) => a + (r.s - mt) ** 2, 0);
  return den > 0 ? (rs.reduce((a, r) => a + (r.s - mt) * (r.rss - mr), 0) / den) * 600 : 0;
}
