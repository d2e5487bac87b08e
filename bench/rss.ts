/*
 * Item 4: the resident memory of one overquota frontend (VmRSS of /proc/PID/status) holding
 * --idle persistent policy connections (each sends one request, as smtpd's do before they idle,
 * then nothing) and --busy ones in a closed loop (bench/load.ts, in this process), read before
 * any connection, with them open, at every --checkpoint replies up to --requests, and a second
 * after the load: in the reply handler that reaches the count, so exact. Targets: RSS ≤ 100 MB
 * (10^6 bytes) at every reading, growth from the checkpoint to the end ≤ 10%. The frontend reads a
 * 7-mailbox mbox spool at --log.level warn, so every lookup is a cache hit once warm (over-quota
 * answers live 10 s). --heap-snapshots DIR: V8 heap snapshots at the checkpoint and at the end
 * (they inflate the readings after them). Needs about idle + busy + 200 descriptors (ulimit -n).
 * A reading must never wait for a timer: it is taken when its reply arrives.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { bench, figureCheck, fmtInt, log, pct, requireBuild, scratch, sleep, startOverquota, stopChild, treeCpu, waitForQuiet } from './harness.js';
import { ClosedLoop, requestPool } from './load.js';

const TARGET_RSS_MB = 100;
const TARGET_GROWTH_PCT = 10;
const STORE_LIMIT = 1000;
/** Bytes in each mbox (limit 1000): room, a message of 300+ bytes does not fit (carol), full, over; ghost has none. */
const MAILBOXES: Record<string, number> = { alice: 0, bob: 120, carol: 700, dave: 450, erin: 1000, frank: 4096 };
/** As Postfix hands them over: mixed case, an address extension, two domains. */
const RECIPIENTS = ['alice@example.com', 'Bob@Example.com', 'carol+lists@example.com', 'dave@example.org', 'erin@example.com', 'frank@example.com', 'ghost@example.com', 'alice+news@example.org'];

const mb = (bytes: number) => bytes / 1e6;

bench('rss', { idle: 1000, busy: 100, requests: 1_000_000, checkpoint: 100_000, 'max-seconds': 120, 'heap-snapshots': '' }, async (o) => {
  requireBuild();
  const limit = Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'latin1'))?.[1] ?? Infinity);
  if (limit < o.idle + o.busy + 200) throw new Error(`ulimit -n is ${limit}; this run needs about ${o.idle + o.busy + 200} descriptors: (ulimit -n 8192; node --import tsx bench/rss.ts), as scripts/bench.sh does`);
  const spool = path.join(await scratch(), 'mail');
  await mkdir(spool);
  for (const [user, bytes] of Object.entries(MAILBOXES)) await writeFile(path.join(spool, user), Buffer.alloc(bytes, 'x'));
  const snapshots = o['heap-snapshots'] ? path.resolve(o['heap-snapshots']) : null;
  if (snapshots) await mkdir(snapshots, { recursive: true });
  const fe = await startOverquota('frontend', (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, '--store.path', spool, '--store.limit', String(STORE_LIMIT), '--log.level', 'warn'], { nodeFlags: snapshots ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshots}`] : [] });
  await waitForQuiet();
  const readings: { label: string; requests: number; seconds: number; rss: number; anon: number; hwm: number }[] = [];
  let loadStart = 0;
  const read = (label: string, requests: number) => {
    const status = readFileSync(`/proc/${fe.pid}/status`, 'latin1');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status)![1]) * 1024;
    readings.push({ label, requests, seconds: loadStart ? (performance.now() - loadStart) / 1000 : 0, rss: mb(kb('VmRSS')), anon: mb(kb('RssAnon')), hwm: mb(kb('VmHWM')) });
  };
  await sleep(500);
  read('started, no connection', 0);

  const pool = requestPool(RECIPIENTS);
  let stopping = false;
  const idle: net.Socket[] = [];
  const openIdle = (i: number) =>
    new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: fe.port, noDelay: true }).setEncoding('latin1');
      idle.push(s.once('error', reject).once('connect', () => s.write(pool[i % pool.length]!)));
      s.on('data', (t: string) => (t.startsWith('action=') ? resolve() : reject(new Error(`idle connection ${i}: ${t.slice(0, 80)}`))));
      s.on('close', () => stopping || log(`idle connection ${i} closed by the frontend`));
    });
  for (let i = 0; i < o.idle; i += 100) await Promise.all(Array.from({ length: Math.min(100, o.idle - i) }, (_, k) => openIdle(i + k)));
  await sleep(500);
  read(`${fmtInt(o.idle)} idle connections open`, 0);

  let done: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const cursor = Array.from({ length: o.busy }, (_, id) => (id * 97) % pool.length);
  const loop: ClosedLoop = new ClosedLoop({
    ports: [fe.port],
    connections: o.busy,
    timeoutMs: 10_000,
    request: (id) => pool[(cursor[id] = (cursor[id]! + 1) % pool.length)]!,
    measured: () => {
      const n = loop.counted;
      if (n % o.checkpoint !== 0 && n !== o.requests) return;
      read(`${fmtInt(n)} requests`, n);
      if (snapshots && (n === o.checkpoint || n === o.requests)) fe.proc.kill('SIGUSR2');
      if (n < o.requests) return;
      loop.measuring = false;
      done();
    },
  });
  await loop.connect();
  await sleep(500);
  read(`+ ${fmtInt(o.busy)} busy connections open`, 0);
  const cpu0 = treeCpu(fe.pid);
  loadStart = performance.now();
  loop.measuring = true;
  loop.start();
  const timedOut = await Promise.race([finished.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), o['max-seconds'] * 1000).unref())]);
  const [seconds, cpu1, served] = [(performance.now() - loadStart) / 1000, treeCpu(fe.pid), loop.counted];
  loop.measuring = false;
  await loop.stop();
  if (timedOut) read(`stopped after ${o['max-seconds']} s`, served);
  await sleep(1000);
  read('load stopped, idle connections still open', served);
  const stillOpen = idle.filter((s) => !s.destroyed && s.readyState === 'open').length;
  if (snapshots) await sleep(5000); // the frontend writes its snapshots: seconds
  stopping = true;
  idle.forEach((s) => s.destroy());
  await stopChild(fe.proc);

  const at = (n: number) => readings.find((r) => r.requests === n && r.label.endsWith(' requests'));
  const [first, last] = [at(o.checkpoint), at(o.requests)];
  const growth = first && last ? ((last.rss - first.rss) / first.rss) * 100 : null;
  const highest = Math.max(...readings.map((r) => r.rss));
  const conns = `${fmtInt(o.idle)} idle + ${fmtInt(o.busy)} busy connections`;
  const total = [...loop.actions.values()].reduce((a, b) => a + b, 0);
  const row = (what: string, figure: number | undefined, ratios = '') => ({ item: '4. frontend RSS', config: `${conns}, ${what}`, runs: 1, figure: figure ?? NaN, unit: 'MB', ratios });
  return {
    setup: `${conns} until ${fmtInt(o.requests)} requests: ${fmtInt(served)} in ${seconds.toFixed(1)} s (${fmtInt(served / seconds)} req/s, frontend CPU ${pct(cpu0 !== null && cpu1 !== null ? ((cpu1 - cpu0) / seconds) * 100 : null)}); RSS from \`/proc/PID/status\`, MB = 10^6 bytes; growth against the reading at ${fmtInt(o.checkpoint)} requests.`,
    tables: [{ head: ['reading', 'requests', 'seconds', 'VmRSS MB', 'RssAnon MB', 'VmHWM MB', `vs ${fmtInt(o.checkpoint)}`], rows: readings.map((r) => [r.label, fmtInt(r.requests), r.seconds.toFixed(1), r.rss.toFixed(1), r.anon.toFixed(1), r.hwm.toFixed(1), first && r.requests >= o.checkpoint ? `${r.rss >= first.rss ? '+' : ''}${(((r.rss - first.rss) / first.rss) * 100).toFixed(1)}%` : '-']) }],
    checks: [
      figureCheck(`frontend RSS, highest reading (${conns}, up to ${fmtInt(o.requests)} requests)`, Math.round(highest * 10) / 10, 'MB', '<=', TARGET_RSS_MB),
      // null (the run stopped short of the requests): not measured, so missed.
      figureCheck(`frontend RSS growth from ${fmtInt(o.checkpoint)} to ${fmtInt(o.requests)} requests`, growth === null ? null : Math.round(growth * 10) / 10, '%', '<=', TARGET_GROWTH_PCT),
    ],
    headline: [row(`at ${fmtInt(o.checkpoint)} requests`, first?.rss), row(`at ${fmtInt(o.requests)} requests`, last?.rss, growth === null ? '' : `growth ${growth >= 0 ? '+' : ''}${growth.toFixed(1)}% from ${fmtInt(o.checkpoint)}`), row(`highest reading (${fmtInt(served / seconds)} req/s)`, highest)],
    notes: [`Answers: ${[...loop.actions].map(([a, n]) => `${Math.round((n * 100) / Math.max(1, total))}% \`${a}\``).join(', ')}.${snapshots ? ' Heap snapshots were taken: the readings after the first include their cost.' : ''}`],
    problems: [...(timedOut ? [`only ${fmtInt(served)} of ${fmtInt(o.requests)} requests in ${o['max-seconds']} s`] : []), ...(loop.errors ? [`${loop.errors} failed request(s), e.g. ${loop.errorSamples[0]}`] : []), ...(stillOpen < o.idle ? [`${o.idle - stillOpen} of ${o.idle} idle connections closed during the run`] : [])],
  };
});
