/*
 * Lookups/s and latency of each quota store, in this process, on data written to the temporary
 * directory, with 1 lookup in flight and with --concurrency in flight (a closed loop), after 500
 * unmeasured: mbox (MboxStore: --users sparse spool files of 0-300 MiB, a few missing); Maildir
 * with a maildirsize Courier's rules trust (read, nothing scanned); one Maildir of --messages
 * messages and no maildirsize, scanned: INBOX new/ 2%, cur/ 58%, .Sent 15%, .Archive.2024 20%,
 * .Drafts 5%, plus 1,000 in .Trash (excluded, never read); 99% of the names carry ,S= (those files
 * are empty), 1% cost a stat. Cold: the first lookup of a fresh store, --cold-runs times, the event
 * loop watched by monitorEventLoopDelay (10 ms resolution: an idle loop reads ~10.1 ms) and a 1 ms
 * setInterval probe; cold for overquota only (the kernel's dentry cache holds what was just
 * written). Warm: the --warm-lookups right after (V8 still optimising the warm path meanwhile),
 * then --lookups after 2,000 more. Dovecot HTTP (DoveadmSource, a private Dovecot, root and
 * dovecot-core): as shipped (service_count = 1: a doveadm-server per connection, and doveadm
 * answers Connection: close) and with processes reused, at most 5 s a row.
 * Targets: cold ≤ 2 s, warm ≤ 1 ms (p50 and p99), no event-loop stall over 50 ms during the scan.
 * It never measures on data it did not write (a wrong count fails the run).
 */
import { closeSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { mkdir, truncate, writeFile } from 'node:fs/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import path from 'node:path';
import type { QuotaSource } from '../src/quota.js';
import { DoveadmSource } from '../src/sources/doveadm.js';
import { MboxStore } from '../src/stores/mbox.js';
import { MaildirStore, RACY_MARGIN_MS, type MaildirScanStats } from '../src/stores/maildir/store.js';
import { dovecotUnavailable, startDovecot } from '../test/helpers/dovecot.js';
import { bench, figureCheck, fmtInt, fmtMs, log, pct, prng, sample, scratch, selfCpu, sleep, usage, waitForQuiet } from './harness.js';
import { dovecotVersion } from './mailboxes.js';

const TARGET = { coldMs: 2000, warmMs: 1, stallMs: 50 };
const MIB = 1024 * 1024;
const LAYOUT: [string, number][] = [['new', 0.02], ['cur', 0.58], ['.Sent/cur', 0.15], ['.Archive.2024/cur', 0.2], ['.Drafts/cur', 0.05]];
const TRASH_MESSAGES = 1000;
/** One name in this many carries no ,S=: its size comes from a stat. */
const NO_SIZE_EVERY = 100;
/** Doveadm per row: at most this long. */
const DOVECOT_ROW_S = 5;
const DOVECOT_CONFIGS = [['default service doveadm', ''], ['service_count = 0, process_min_avail = 4', 'service doveadm {\n  service_count = 0\n  process_min_avail = 4\n}']];

/** `lookups` lookups of random keys, `inFlight` at a time, after `warmup` unmeasured. */
async function measure(label: string, source: QuotaSource, keys: string[], o: { inFlight: number; lookups: number; warmup: number; maxSeconds?: number }) {
  const rand = prng(4);
  let errors = 0;
  const run = async (count: number, latencies: number[] | null) => {
    const deadline = performance.now() + (o.maxSeconds ?? Infinity) * 1000;
    let issued = 0;
    const worker = async () => {
      while (issued++ < count && performance.now() < deadline) {
        const key = keys[Math.floor(rand() * keys.length)]!;
        const t0 = performance.now();
        // One signal per lookup, as the core gives each its own latency budget.
        const state = await source.lookup(key, new AbortController().signal).catch((err: Error) => ({ kind: err.message }));
        if (state.kind === 'found') latencies?.push(performance.now() - t0);
        else if (errors++ === 0) log(`    ${label}: lookup of ${key}: ${state.kind}`);
      }
    };
    await Promise.all(Array.from({ length: o.inFlight }, worker));
  };
  await run(o.warmup, null);
  const latencies: number[] = [];
  const a = sample({ own: selfCpu });
  await run(o.lookups, latencies);
  const use = usage(a, sample({ own: selfCpu }));
  latencies.sort((x, y) => x - y);
  const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
  log(`    ${label}, ${o.inFlight} in flight: ${fmtInt(latencies.length / use.seconds)} lookups/s, p50 ${fmtMs(q(0.5))} ms, p99 ${fmtMs(q(0.99))} ms`);
  // ownCpu: this process (the store's work, its thread pool included); otherCpu: busy cores minus that.
  return { label, inFlight: o.inFlight, lookups: latencies.length, perSecond: latencies.length / use.seconds, p50: q(0.5), p99: q(0.99), max: latencies.at(-1) ?? NaN, errors, ownCpu: use.cpu.own ?? null, otherCpu: use.other };
}

/** The big Maildir, written synchronously before anything is measured: its bytes and messages. */
function bigMaildir(dir: string, messages: number): { bytes: number; messages: number } {
  const rand = prng(3);
  let [bytes, counted, serial] = [0, 0, 0];
  for (const sub of ['', '.Sent', '.Archive.2024', '.Drafts', '.Trash']) {
    for (const leaf of ['cur', 'new', 'tmp']) mkdirSync(path.join(dir, sub, leaf), { recursive: true });
    if (sub) writeFileSync(path.join(dir, sub, 'maildirfolder'), '');
  }
  let left = messages;
  const shares = LAYOUT.map(([sub, share], i) => {
    const n = i === LAYOUT.length - 1 ? left : Math.round(messages * share);
    left -= n;
    return [sub, n] as const;
  });
  for (const [sub, count] of [...shares, ['.Trash/cur', TRASH_MESSAGES] as const]) {
    for (let i = 0; i < count; i++, serial++) {
      const size = 500 + Math.floor(rand() * 60_000);
      const [base, flags, trash] = [`${1_700_000_000 + serial}.M${serial}P4242.bench`, sub.endsWith('new') ? '' : ':2,S', sub.startsWith('.Trash')];
      // ,S= says the size, so the file is never read and left empty; without it the file holds its bytes (fewer, to spare the disk).
      const real = serial % NO_SIZE_EVERY === NO_SIZE_EVERY - 1 ? 1 + (size % 4096) : 0;
      if (real) writeFileSync(path.join(dir, sub, `${base}${flags}`), Buffer.alloc(real, 120));
      else closeSync(openSync(path.join(dir, sub, `${base},S=${size},W=${size + 40}${flags}`), 'w'));
      if (!trash) [bytes, counted] = [bytes + (real || size), counted + 1];
    }
  }
  return { bytes, messages: counted };
}

bench('stores', { users: 1000, messages: 100_000, 'cold-runs': 3, 'warm-lookups': 1000, lookups: 5000, concurrency: 16, 'dovecot-users': 50, 'no-dovecot': false }, async (o) => {
  const dir = await scratch();
  const users = Array.from({ length: o.users }, (_, i) => `user${String(i).padStart(5, '0')}`);
  const both = async (label: string, source: QuotaSource, keys: string[], extra = {}) => {
    await waitForQuiet();
    return [await measure(label, source, keys, { inFlight: 1, lookups: o.lookups, warmup: 500, ...extra }), await measure(label, source, keys, { inFlight: o.concurrency, lookups: o.lookups * 2, warmup: 500, ...extra })];
  };
  const [rand, spool, vmail] = [prng(1), path.join(dir, 'spool'), path.join(dir, 'vmail')];
  await mkdir(spool);
  for (const [i, user] of users.entries()) {
    if (i % 50 === 49) continue; // no file: an empty mailbox
    await writeFile(path.join(spool, user), 'From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n\n');
    await truncate(path.join(spool, user), Math.floor(rand() * 300 * MIB));
  }
  const phases = await both('mbox', new MboxStore({ root: spool, defaultLimitBytes: 200 * MIB }), users);
  const rand2 = prng(2);
  for (const user of users) {
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(vmail, user, 'Maildir', sub), { recursive: true });
    const used = Math.floor(rand2() * 120 * MIB);
    await writeFile(path.join(vmail, user, 'Maildir', 'maildirsize'), `${100 * MIB}S,10000C\n${used > 100 * MIB ? `${used} 1000\n` : `${used - 4096} 998\n2048 1\n2048 1\n`}`);
  }
  const withSize = new MaildirStore({ root: vmail, mailbox: '{user}/Maildir', defaultLimitBytes: null });
  phases.push(...(await both('Maildir, maildirsize', withSize, users)));
  if (withSize.scanStats.scans > 0) throw new Error('the maildirsize mailboxes were scanned: the bench data is wrong');

  log(`Maildir scan: writing ${fmtInt(o.messages)} messages (+${fmtInt(TRASH_MESSAGES)} in .Trash)`);
  const expected = bigMaildir(path.join(dir, 'big', 'big', 'Maildir'), o.messages);
  // A directory changed less than RACY_MARGIN_MS before a scan is read again by the next lookup: let them age.
  await sleep(RACY_MARGIN_MS + 500);
  const cold: { ms: number; entries: number; dirs: number; delayMax: number; probeGap: number }[] = [];
  let store = new MaildirStore({ root: path.join(dir, 'big'), mailbox: '{user}/Maildir', defaultLimitBytes: null });
  for (let i = 0; i < o['cold-runs']; i++) {
    await waitForQuiet();
    store = new MaildirStore({ root: path.join(dir, 'big'), mailbox: '{user}/Maildir', defaultLimitBytes: null });
    const [delay, probe] = [monitorEventLoopDelay(), { gap: 0, last: performance.now() }];
    const timer = setInterval(() => {
      probe.gap = Math.max(probe.gap, performance.now() - probe.last);
      probe.last = performance.now();
    }, 1);
    await sleep(20); // both watchers running before the scan
    [probe.gap, probe.last] = [0, performance.now()];
    delay.enable();
    const t0 = performance.now();
    const state = await store.lookup('big', new AbortController().signal);
    const ms = performance.now() - t0;
    await sleep(5); // the probe's callback after the scan's last slice
    delay.disable();
    clearInterval(timer);
    if (state.kind !== 'found' || state.usageBytes !== expected.bytes || state.usageMessages !== expected.messages) throw new Error(`cold scan: ${JSON.stringify(state)}, expected ${expected.bytes} bytes, ${expected.messages} messages`);
    cold.push({ ms, entries: store.scanStats.entries, dirs: store.scanStats.directoriesRead, delayMax: delay.max / 1e6, probeGap: probe.gap });
    log(`    cold ${i + 1}: ${fmtInt(ms)} ms; event loop max delay ${fmtMs(delay.max / 1e6)} ms, probe's largest gap ${fmtMs(probe.gap)} ms`);
  }
  const before: MaildirScanStats = { ...store.scanStats };
  const warm = await measure(`Maildir scan, warm: the first ${fmtInt(o['warm-lookups'])} after the cold scan`, store, ['big'], { inFlight: 1, lookups: o['warm-lookups'], warmup: 0 });
  const steady = await measure('Maildir scan, warm', store, ['big'], { inFlight: 1, lookups: o.lookups, warmup: 2000 });
  phases.push(warm, steady, await measure('Maildir scan, warm', store, ['big'], { inFlight: o.concurrency, lookups: o.lookups * 2, warmup: 500 }));
  const warmWork = Object.fromEntries(Object.entries(store.scanStats).map(([k, v]) => [k, v - before[k as keyof MaildirScanStats]]));

  const why = o['no-dovecot'] ? '--no-dovecot' : dovecotUnavailable();
  for (const [label, extraConfig] of why ? [] : DOVECOT_CONFIGS) {
    const names = Array.from({ length: o['dovecot-users'] }, (_, i) => `u${i}`);
    const dovecot = await startDovecot({ users: names.map((name) => ({ name, quota: '10M' })), extraConfig });
    const source = new DoveadmSource({ url: dovecot.doveadmUrl, password: dovecot.password, maxConnections: o.concurrency });
    try {
      for (const [i, name] of names.slice(0, 10).entries()) await dovecot.fill(name, 100_000 * (i + 1), { messages: 3 });
      phases.push(...(await both(`Dovecot HTTP (doveadm quotaGet), ${label}`, source, names, { maxSeconds: DOVECOT_ROW_S, warmup: 100 })));
    } finally {
      await source.close();
      await dovecot.stop();
    }
  }

  const worst = { cold: Math.max(...cold.map((c) => c.ms)), stall: Math.max(...cold.map((c) => Math.max(c.delayMax, c.probeGap))) };
  const first = `the first ${fmtInt(warm.lookups)} after the cold scan`;
  return {
    setup: `${fmtInt(o.users)} mbox spool files and ${fmtInt(o.users)} Maildirs with maildirsize, keys drawn at random (seeded); ${fmtInt(o.lookups)} measured lookups with 1 in flight and ${fmtInt(o.lookups * 2)} with ${o.concurrency}; one Maildir of ${fmtInt(o.messages)} messages scanned cold ${cold.length} times, then warm; Dovecot at most ${DOVECOT_ROW_S} s a row. CPU in % of one core: this process (the store and its thread pool), other = the rest of the machine (Dovecot in its rows).`,
    versions: why ? [] : [dovecotVersion()],
    tables: [
      { head: ['store', 'in flight', 'lookups', 'lookups/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'bench CPU', 'other CPU'], rows: [...phases.map((p) => [p.label, p.inFlight, fmtInt(p.lookups), fmtInt(p.perSecond), p.p50.toFixed(3), p.p99.toFixed(3), p.max.toFixed(3), p.errors, pct(p.ownCpu), pct(p.otherCpu)]), ...(why ? [['Dovecot HTTP', '-', '-', '-', '-', '-', '-', '-', '-', `not measured: ${why}`]] : [])] },
      { title: 'Cold scans (the first lookup of a fresh store):', head: ['cold run', 'ms', 'entries read', 'directories read', 'event loop delay max ms', '1 ms probe largest gap ms'], rows: cold.map((c, i) => [i + 1, fmtInt(c.ms), fmtInt(c.entries), c.dirs, fmtMs(c.delayMax), fmtMs(c.probeGap)]) },
    ],
    checks: [
      figureCheck(`cold scan of a ${fmtInt(o.messages)}-message Maildir, worst of ${cold.length}`, worst.cold, 'ms', '<=', TARGET.coldMs),
      figureCheck(`warm lookup p50, ${first}`, warm.p50, 'ms', '<=', TARGET.warmMs),
      figureCheck(`warm lookup p99, ${first}`, warm.p99, 'ms', '<=', TARGET.warmMs),
      figureCheck('warm lookup p50, after 2,000 more', steady.p50, 'ms', '<=', TARGET.warmMs),
      figureCheck('warm lookup p99, after 2,000 more', steady.p99, 'ms', '<=', TARGET.warmMs),
      figureCheck('longest event-loop stall during the cold scans', worst.stall, 'ms', '<=', TARGET.stallMs),
    ],
    headline: [...phases.filter((p) => p.inFlight === 1).map((p) => ({ item: 'stores', config: p.label, runs: 1, figure: p.perSecond, unit: 'lookups/s', p50: p.p50, p99: p.p99 })), { item: 'stores', config: 'Maildir scan, cold (worst)', runs: cold.length, figure: worst.cold, unit: 'ms' }],
    notes: [`During the warm lookups (warm-ups included) ${fmtInt(warmWork.directoriesRead!)} directories were read and ${fmtInt(warmWork.rootListings!)} roots listed; ${fmtInt(warmWork.directoriesReused!)} directory counts were reused.`],
    problems: phases.filter((p) => p.errors).map((p) => `${p.label}, ${p.inFlight} in flight: ${p.errors} failed lookup(s)`),
  };
});
