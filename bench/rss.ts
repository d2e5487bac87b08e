/*
 * Memory of `overquota frontend` under many connections and many requests: its resident set
 * (VmRSS in /proc/PID/status) with 1000 idle plus 100 busy persistent policy connections, read at
 * 100k requests and after 1M, in one invocation.
 *
 * Starts, on loopback, the built `dist/cli.js frontend --policy.listen inet:127.0.0.1:PORT
 * --store.path TMP --store.limit 1000 --log.level warn` on the mbox spool of bench/policy.ts (7
 * mailboxes: room, full, over, missing), then, in this process:
 *   - 1000 idle connections (--idle), opened 100 at a time; each sends one realistic RCPT request
 *     and reads its reply first, as a Postfix smtpd's connection does before it idles, then sends
 *     nothing more (the frontend's idle timeout, 330 s by default, is far away);
 *   - 100 busy connections (--busy), the closed loop of bench/policy-load.ts (one request in
 *     flight each, 8 recipients over the 7 mailboxes, so the cache is warm after the first few).
 * VmRSS (and RssAnon, VmHWM) of the frontend is read from /proc at fixed reply counts: before any
 * connection, with the connections open, then every 100k replies of the busy connections up to
 * --requests (1M); the read happens in the reply handler that reaches the count, so it is exact.
 * Targets (issue): RSS ≤ 100 MB (10^6 bytes) at every reading, and flat from 100k to 1M: growth
 * ≤ 10%. --write puts the report into BENCHMARKS.md between the bench:rss markers.
 *
 *   npm run bench      # build, then every bench with --write (scripts/bench.sh raises ulimit -n)
 *   node --import tsx bench/rss.ts [--idle 1000] [--busy 100] [--requests 1000000]
 *        [--checkpoint 100000] [--max-seconds 120] [--heap-snapshots DIR] [--node-flags FLAGS]
 *        [--write] [--keep]
 *
 * --heap-snapshots DIR starts the frontend with --heapsnapshot-signal=SIGUSR2 and takes a V8 heap
 * snapshot right after the reading at --checkpoint and after the last one (to compare in Chrome
 * DevTools, Memory tab, "Comparison"); writing a snapshot inflates RSS, so the readings after the
 * first snapshot are not the figures to quote. --node-flags "FLAGS" starts the frontend's node with
 * those flags (e.g. --max-semi-space-size=1), to see what V8's settings do to RSS. Needs about 2,300 file descriptors (ulimit -n).
 *
 * With OVERQUOTA_BENCH_RESULTS=DIR it also writes DIR/rss.json (bench/results.ts): RSS at the
 * checkpoint and at the end, the highest reading, the growth, and the two target checks, for
 * bench/summary.ts.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ClosedLoop } from './closed-loop.js';
import { buildRequestPool } from './policy-load.js';
import { RECIPIENTS, STORE_LIMIT, writeSpool } from './policy-spool.js';
import { figureCheck, saveResults, type Check, type ResultsOfRun, type RssFigure } from './results.js';
import {
  CLI,
  COMMON_OPTIONS,
  commandLine,
  fmtInt,
  freePort,
  intArg,
  log,
  makeTmpDir,
  processCpuSeconds,
  removeTmpDir,
  requireBuild,
  runBench,
  sectionHead,
  sleep,
  spawnLogged,
  stopChild,
  stopChildren,
  table,
  textFooter,
  tmp,
  viaNpm,
  waitForQuiet,
  printReport,
} from './shared.js';

/** Targets from the issue: RSS at most this many bytes, and at most this growth from 100k to the end. */
const TARGET_RSS_BYTES = 100e6;
const TARGET_GROWTH_PCT = 10;

interface Memory {
  rss: number;
  anon: number;
  hwm: number;
}

interface Reading extends Memory {
  label: string;
  /** Replies on the busy connections so far. */
  requests: number;
  /** Seconds since the busy load started (0 before). */
  seconds: number;
}

/** VmRSS, RssAnon and VmHWM of a process in bytes, from /proc/PID/status. */
function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1');
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
  };
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), hwm: kb('VmHWM') };
}

/** The soft limit on open files of this process (its children inherit it), or null. */
function openFilesLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'latin1'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : null;
  } catch {
    return null;
  }
}

let frontend: ChildProcess | null = null;
const idleSockets: net.Socket[] = [];

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      idle: { type: 'string', default: '1000' },
      busy: { type: 'string', default: '100' },
      requests: { type: 'string', default: '1000000' },
      checkpoint: { type: 'string', default: '100000' },
      'max-seconds': { type: 'string', default: '120' },
      'heap-snapshots': { type: 'string' },
      'node-flags': { type: 'string', default: '' },
      ...COMMON_OPTIONS,
    },
  });
  if (values.help) {
    console.log('usage: node --import tsx bench/rss.ts [--idle 1000] [--busy 100] [--requests 1000000] [--checkpoint 100000] [--max-seconds 120] [--heap-snapshots DIR] [--node-flags "--max-semi-space-size=1"] [--write] [--keep]');
    return 0;
  }
  const idle = intArg('idle', values.idle, 0, 20_000);
  const busy = intArg('busy', values.busy, 1, 2_000);
  const requests = intArg('requests', values.requests, 1000, 50_000_000);
  const checkpoint = intArg('checkpoint', values.checkpoint, 100, requests);
  const maxSeconds = intArg('max-seconds', values['max-seconds'], 5, 580);
  const snapshotDir = values['heap-snapshots'] ? path.resolve(values['heap-snapshots']) : null;
  tmp.keep = values.keep;
  requireBuild();

  // Each connection is a descriptor here and one in the frontend (which inherits our limit).
  const needed = idle + busy + 200;
  const limit = openFilesLimit();
  if (limit !== null && limit < needed) {
    throw new Error(`the open-files limit is ${limit} and this run needs about ${needed} (ulimit -n): run it as scripts/bench.sh does, e.g. (ulimit -n 8192; node --import tsx bench/rss.ts)`);
  }

  const tmpDir = await makeTmpDir('overquota-bench-rss-');
  const spool = path.join(tmpDir, 'mail');
  await writeSpool(spool);
  if (snapshotDir) await mkdir(snapshotDir, { recursive: true });

  const port = await freePort();
  const logFile = path.join(tmpDir, 'frontend.log');
  const extraFlags = values['node-flags'].split(/\s+/).filter(Boolean);
  const nodeFlags = [...extraFlags, ...(snapshotDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] : [])];
  const args = [...nodeFlags, CLI, 'frontend', '--policy.listen', `inet:127.0.0.1:${port}`, '--store.path', spool, '--store.limit', String(STORE_LIMIT), '--log.level', 'warn'];
  frontend = await spawnLogged(process.execPath, args, logFile, port);
  const pid = frontend.pid!;
  log(`frontend pid ${pid} on inet:127.0.0.1:${port}, log ${logFile}`);
  await waitForQuiet();

  const readings: Reading[] = [];
  let loadStart = 0;
  const read = (label: string, n: number) => {
    const r = { label, requests: n, seconds: loadStart ? (performance.now() - loadStart) / 1000 : 0, ...memoryOf(pid) };
    readings.push(r);
    return r;
  };
  const mb = (b: number) => (b / 1e6).toFixed(1);
  await sleep(500);
  let r = read('started, no connection', 0);
  log(`started: RSS ${mb(r.rss)} MB`);

  // ---- 1000 idle connections, each used once (one request and its reply), then left alone.
  const pool = buildRequestPool(RECIPIENTS);
  let idleClosed = 0;
  const openIdle = (i: number) =>
    new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
      let buffer = '';
      s.setEncoding('latin1');
      s.once('error', reject);
      s.once('connect', () => s.write(pool[i % pool.length]!));
      s.on('data', (t: string) => {
        buffer += t;
        if (buffer.includes('\n\n')) {
          if (!buffer.startsWith('action=')) reject(new Error(`idle connection ${i}: unexpected reply ${JSON.stringify(buffer.slice(0, 80))}`));
          buffer = '';
          resolve();
        }
      });
      s.on('close', () => {
        if (!stopping) idleClosed++;
      });
      idleSockets.push(s);
    });
  for (let i = 0; i < idle; i += 100) await Promise.all(Array.from({ length: Math.min(100, idle - i) }, (_, k) => openIdle(i + k)));
  await sleep(500);
  r = read(`${fmtInt(idle)} idle connections open`, 0);
  log(`${idle} idle connections: RSS ${mb(r.rss)} MB`);

  // ---- 100 busy connections, closed loop, until `requests` replies or maxSeconds.
  const targets = new Set<number>();
  for (let n = checkpoint; n <= requests; n += checkpoint) targets.add(n);
  targets.add(requests);
  let snapshots = 0;
  const snapshot = () => {
    if (!snapshotDir) return;
    frontend!.kill('SIGUSR2');
    snapshots++;
  };
  let done: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const loop: ClosedLoop = new ClosedLoop({
    connections: busy,
    timeoutMs: 10_000,
    idleCloseNote: ' while idle',
    connection: (id) => {
      let next = (id * 97) % pool.length;
      return {
        host: '127.0.0.1',
        port,
        request: () => {
          const req = pool[next]!;
          next = next + 1 === pool.length ? 0 : next + 1;
          return req;
        },
        measured: () => {
          const n = loop.counted;
          if (!targets.has(n)) return;
          read(`${fmtInt(n)} requests`, n);
          if (n === checkpoint || n === requests) snapshot();
          if (n === requests) {
            loop.measuring = false;
            done();
          }
        },
      };
    },
  });
  await loop.connect();
  await sleep(500);
  r = read(`+ ${fmtInt(busy)} busy connections open`, 0);
  log(`+ ${busy} busy connections: RSS ${mb(r.rss)} MB; load until ${fmtInt(requests)} replies (at most ${maxSeconds} s)`);
  const cpu0 = processCpuSeconds(pid);
  loadStart = performance.now();
  loop.measuring = true;
  loop.start();
  const progress = setInterval(() => {
    const last = readings[readings.length - 1]!;
    log(`    ${fmtInt(loop.counted)} replies, ${((performance.now() - loadStart) / 1000).toFixed(0)} s; RSS at ${last.label}: ${mb(last.rss)} MB`);
  }, 5000);
  // A timer, not sleep(): it must not keep the process alive for --max-seconds once the load is done.
  let stopAt: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([finished.then(() => false), new Promise<boolean>((resolve) => (stopAt = setTimeout(() => resolve(true), maxSeconds * 1000)))]);
  clearTimeout(stopAt);
  clearInterval(progress);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const cpu1 = processCpuSeconds(pid);
  const served = loop.counted;
  loop.measuring = false;
  await loop.stop();
  if (timedOut) read(`stopped after ${maxSeconds} s (${fmtInt(served)} requests)`, served);
  await sleep(1000);
  const after = read('load stopped, idle connections still open', served);
  log(`load: ${fmtInt(served)} replies in ${loadSeconds.toFixed(1)} s; RSS after ${mb(after.rss)} MB`);

  const stillOpen = idleSockets.filter((s) => !s.destroyed && s.readyState === 'open').length;
  const problems: string[] = [];
  if (timedOut) problems.push(`only ${fmtInt(served)} of ${fmtInt(requests)} requests in ${maxSeconds} s (--max-seconds)`);
  if (loop.errors > 0) problems.push(`${loop.errors} failed request(s), e.g. ${loop.errorSamples.slice(0, 3).join('; ')}`);
  if (idleClosed > 0 || stillOpen !== idle) problems.push(`${idle - stillOpen} of ${idle} idle connections were closed during the run`);
  if (snapshotDir) {
    // Wait for the snapshot files (written by the frontend, can take seconds).
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && (await readdir(snapshotDir)).filter((f) => f.endsWith('.heapsnapshot')).length < snapshots) await sleep(500);
    await sleep(2000);
    log(`heap snapshots in ${snapshotDir}`);
  }
  stopping = true;
  for (const s of idleSockets) s.destroy();
  await stopChild(frontend);
  frontend = null;

  const report = buildReport({
    readings,
    idle,
    busy,
    requests,
    checkpoint,
    served,
    loadSeconds,
    frontendCpu: cpu0 !== null && cpu1 !== null ? Math.round(((cpu1 - cpu0) / loadSeconds) * 1000) / 10 : null,
    actions: loop.actions,
    problems,
    snapshots: snapshotDir !== null,
    argv: process.argv.slice(2),
  });
  printReport(report, values.write, 'rss', 'Frontend memory: 1000 idle plus 100 busy connections, 1M requests', INTRO);
  saveResults('rss', { ...report.results, problems });
  for (const p of problems) log(`problem: ${p}`);
  return problems.length > 0 ? 1 : 0;
}

let stopping = false;

// ---------------------------------------------------------------- report

const INTRO = `
**What is measured.** The resident memory of one \`overquota frontend\` (VmRSS in
\`/proc/PID/status\`) holding 1000 idle and 100 busy persistent policy connections, read at 100k
requests and again after 1M, in one invocation of \`bench/rss.ts\`. Targets (issue): **RSS ≤ 100 MB**
at every reading, and **flat: ≤ 10% growth from 100k to 1M requests** (a leak per request or per
connection would show as growth; 1M requests is about 15 s at this rate).

- **Frontend**: the built \`dist/cli.js frontend --policy.listen inet:127.0.0.1:PORT --store.path TMP
  --store.limit 1000 --log.level warn\` on the mbox spool of the policy benchmark (7 mailboxes:
  room, full, over, missing), so after the first requests every lookup is a cache hit, except when
  an entry's TTL runs out (over-quota answers are cached 10 s).
- **Idle connections** (1000): opened 100 at a time; each sends one realistic Postfix RCPT request
  and reads its reply, as a Postfix smtpd's connection does before it idles, then sends nothing
  (the frontend closes idle connections after 330 s, far beyond the run; the bench checks that
  all of them are still open at the end).
- **Busy connections** (100): the closed loop of \`bench/policy-load.ts\` (one request in flight per
  connection, the same 31-attribute requests, 8 recipients over the 7 mailboxes), run in the bench
  process itself.
- **Readings**: VmRSS (everything resident), RssAnon (the anonymous part: V8 heap, buffers, malloc;
  the rest is mapped files, mostly the node binary's code) and VmHWM (the peak so far), read
  synchronously when the reply that reaches the count arrives: before any connection, with the
  idle and then the busy connections open, every 100k requests, and a second after the load
  stopped. Growth is (RSS at 1M − RSS at 100k) / RSS at 100k. MB here is 10^6 bytes.

**Reproduce.** \`npm run bench\` runs it with \`--write\` (under \`ulimit -n 8192\`: the run needs about
2,300 descriptors), which rewrites the section below between its markers; alone: \`node --import tsx
bench/rss.ts [--write]\` (about 30 s) after \`npm run build\`. Options: \`--idle 1000\`, \`--busy 100\`,
\`--requests 1000000\`, \`--checkpoint 100000\`, \`--max-seconds 120\` (the load stops there even short
of --requests), \`--heap-snapshots DIR\` (V8 heap snapshots of the frontend at the checkpoint and at
the end, to compare in DevTools; they inflate the readings after them), \`--keep\`.
`;

function buildReport(o: {
  readings: Reading[];
  idle: number;
  busy: number;
  requests: number;
  checkpoint: number;
  served: number;
  loadSeconds: number;
  frontendCpu: number | null;
  actions: Map<string, number>;
  problems: string[];
  snapshots: boolean;
  argv: string[];
}): { text: string; markdown: string; results: ResultsOfRun<RssFigure> } {
  const mb = (b: number) => (b / 1e6).toFixed(1);
  const at = (n: number) => o.readings.find((r) => r.requests === n && r.label.endsWith(' requests'));
  const first = at(o.checkpoint);
  const last = at(o.requests);
  const growth = first && last ? ((last.rss - first.rss) / first.rss) * 100 : null;
  const max = Math.max(...o.readings.map((r) => r.rss));
  const peak = Math.max(...o.readings.map((r) => r.hwm));
  const head = ['reading', 'requests', 'seconds', 'VmRSS MB', 'RssAnon MB', 'VmHWM MB', `vs ${fmtInt(o.checkpoint)}`];
  const rows = o.readings.map((r) => [
    r.label,
    fmtInt(r.requests),
    r.seconds.toFixed(1),
    mb(r.rss),
    mb(r.anon),
    mb(r.hwm),
    first && r.requests >= o.checkpoint ? `${r.rss >= first.rss ? '+' : ''}${(((r.rss - first.rss) / first.rss) * 100).toFixed(1)}%` : '-',
  ]);
  const rssVerdict = `${mb(max)} MB ${max <= TARGET_RSS_BYTES ? 'meets' : 'MISSES'} ≤ ${TARGET_RSS_BYTES / 1e6} MB`;
  const growthVerdict =
    growth === null ? 'not measured (the run stopped short of the requests)' : `${growth >= 0 ? '+' : ''}${growth.toFixed(1)}% ${growth <= TARGET_GROWTH_PCT ? 'meets' : 'MISSES'} ≤ ${TARGET_GROWTH_PCT}%`;
  const summaryHead = ['idle + busy connections', 'requests', 'req/s', 'frontend CPU', `RSS at ${fmtInt(o.checkpoint)}`, `RSS at ${fmtInt(o.requests)}`, 'highest RSS read', `growth ${fmtInt(o.checkpoint)} → ${fmtInt(o.requests)}`];
  const summary = [
    [
      `${fmtInt(o.idle)} + ${fmtInt(o.busy)}`,
      fmtInt(o.served),
      fmtInt(o.served / o.loadSeconds),
      o.frontendCpu === null ? '?' : `${o.frontendCpu}%`,
      first ? `${mb(first.rss)} MB` : '-',
      last ? `${mb(last.rss)} MB` : '-',
      rssVerdict,
      growthVerdict,
    ],
  ];
  const total = [...o.actions.values()].reduce((a, b) => a + b, 0);
  const actions = [...o.actions.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([a, n]) => `${Math.round((n / Math.max(1, total)) * 100)}% \`${a}\``)
    .join(', ');
  const sentence =
    `With ${fmtInt(o.idle)} idle and ${fmtInt(o.busy)} busy connections the frontend's RSS is ${first ? `${mb(first.rss)} MB at ${fmtInt(o.checkpoint)} requests` : 'not read at the checkpoint'}` +
    `${last ? ` and ${mb(last.rss)} MB at ${fmtInt(o.requests)}` : ''} (highest reading ${mb(max)} MB, peak VmHWM ${mb(peak)} MB): ` +
    `RSS target ${max <= TARGET_RSS_BYTES ? 'met' : 'MISSED'}, growth ${growthVerdict.replace(/ (meets|MISSES) /, ' against ')}: flatness target ${growth !== null && growth <= TARGET_GROWTH_PCT ? 'met' : 'MISSED'}.`;
  const checks = o.problems.length === 0 ? `No failed request; all ${fmtInt(o.idle)} idle connections still open at the end. Answers: ${actions}.` : `PROBLEMS: ${o.problems.join('; ')}.`;
  const caveat = o.snapshots ? ' Heap snapshots were taken (--heap-snapshots): the readings after the first snapshot include its cost.' : '';
  const command = commandLine('rss.ts', o.argv);
  const text = [table(summaryHead, summary, false), '', table(head, rows, false), '', sentence, checks + caveat, ...textFooter()].join('\n');
  const markdown = [
    ...sectionHead('rss'),
    `Command: \`${command}\`${viaNpm()}. ${fmtInt(o.idle)} idle connections (one request each, then silent), ${fmtInt(o.busy)} busy ones in a closed loop until ${fmtInt(o.requests)} requests; frontend at \`--log.level warn\`; RSS from \`/proc/PID/status\`, MB = 10^6 bytes.`,
    '',
    table(summaryHead, summary, true),
    '',
    'Every reading, in order (seconds since the busy load started; growth against the reading at the checkpoint):',
    '',
    table(head, rows, true),
    '',
    `${sentence} ${checks}${caveat}`,
    '<!-- bench:rss:end -->',
  ].join('\n');
  const mbNum = (b: number) => Math.round(b / 1e5) / 10;
  const conns = `${fmtInt(o.idle)} idle + ${fmtInt(o.busy)} busy connections`;
  const targetChecks: Check[] = [
    figureCheck(`frontend RSS, highest reading (${conns}, up to ${fmtInt(o.requests)} requests)`, max / 1e6, 'MB', '<=', TARGET_RSS_BYTES / 1e6),
    // null (the run stopped short of the requests): not measured, so missed.
    figureCheck(`frontend RSS growth from ${fmtInt(o.checkpoint)} to ${fmtInt(o.requests)} requests`, growth, '%', '<=', TARGET_GROWTH_PCT),
  ];
  const results: ResultsOfRun<RssFigure> = {
    command,
    figures: [
      {
        idle: o.idle,
        busy: o.busy,
        requests: o.requests,
        checkpoint: o.checkpoint,
        served: o.served,
        rps: Math.round(o.served / o.loadSeconds),
        rssAtCheckpointMB: first ? mbNum(first.rss) : null,
        rssAtEndMB: last ? mbNum(last.rss) : null,
        highestRssMB: mbNum(max),
        peakHwmMB: mbNum(peak),
        growthPct: growth === null ? null : Math.round(growth * 10) / 10,
      },
    ],
    checks: targetChecks,
  };
  return { text, markdown, results };
}

// ---------------------------------------------------------------- cleanup

async function cleanup(): Promise<void> {
  stopping = true;
  for (const s of idleSockets) s.destroy();
  await stopChildren();
  frontend = null;
  await removeTmpDir();
}

runBench(main, cleanup);
