/*
 * The milter on its own (issue 10): transactions/s from one load client (bench/milter-load.ts, 50
 * connections speaking the protocol as Postfix does) against the overquota milter (a frontend,
 * milter only, at its defaults — decision lines for refusals only, and every mailbox of the mbox
 * spool has room; its decisions are counted from /metrics — warm cache), the ceiling (bench/milter-fixed.c: libmilter answering CONTINUE to everything, built
 * here with cc) and the contrast (bench/pymilter_quota.py). Postfix is not in the loop: through
 * Postfix every milter hides behind Postfix's own ceiling (bench/postfix.ts). The client runs on
 * CPU 0, the milter under test on CPU 1 (taskset): each has a core of its own. Interleaved rounds,
 * each figure the median of its runs. Targets: overquota ≥ 0.8× the C milter, ≥ 5× the pymilter.
 * Installs libmilter-dev and python3-milter with apt-get when missing. The client and the milter
 * must never share a core (the C milter alone would then be the client's ceiling).
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { ROOT, bench, log, ensureDebianPackage, fmtInt, fmtSpread, freePort, interleaved, measureRounds, median, pct, ratioCheck, requireBuild, runClient, runProcess, scratch, spread, startOverquota, startServer, treeCpu } from './harness.js';
import type { MilterLoadResult } from './milter-load.js';
import { pymilterVersion, startPymilter } from './mailboxes.js';

const TARGETS = { vsC: 0.8, vsPymilter: 5 };
const [CLIENT_CPU, MILTER_CPU] = ['0', '1'];
/** Every mailbox of the (empty) spool has room under this limit. */
const LIMIT_BYTES = 200 * 1024 * 1024;
const LABELS: Record<string, string> = { c: 'C milter (libmilter, fixed reply)', overquota: 'overquota milter (defaults)', pymilter: 'pymilter' };

bench('milter-wire', { connections: 50, rounds: 3, warmup: 2, duration: 8, retries: 2, 'cpu-prof': '' }, async (o) => {
  requireBuild();
  await ensureDebianPackage('libmilter-dev', () => existsSync('/usr/include/libmilter/mfapi.h'));
  const dir = await scratch();
  const spool = path.join(dir, 'mail');
  await mkdir(spool);
  const binary = path.join(dir, 'milter-fixed');
  const cc = await runProcess('cc', ['-O2', '-o', binary, path.join(ROOT, 'bench', 'milter-fixed.c'), '-lmilter', '-lpthread'], { limitMs: 60_000 });
  if (cc.code !== 0) throw new Error(`cc bench/milter-fixed.c failed: ${cc.err.trim()}`);
  const [cPort, admin] = [await freePort(), await freePort()];
  const c = await startServer('taskset', ['-c', MILTER_CPU, binary, `inet:${cPort}@127.0.0.1`], path.join(dir, 'c.log'), cPort);
  const nodeFlags = o['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(o['cpu-prof'])}`] : [];
  const fe = await startOverquota('overquota', (port) => ['frontend', '--milter.listen', `inet:127.0.0.1:${port}`, '--policy.listen', '', '--store.path', spool, '--store.limit', String(LIMIT_BYTES), '--admin.listen', `127.0.0.1:${admin}`], { nodeFlags, pin: MILTER_CPU });
  const py = await startPymilter(spool, LIMIT_BYTES, MILTER_CPU);
  const milters: Record<string, { port: number; pid: number }> = { c: { port: cPort, pid: c.pid! }, overquota: fe, pymilter: py };
  const runs = await measureRounds(
    interleaved(Object.keys(LABELS), o.rounds),
    ({ key }) => `${LABELS[key]}: ${o.connections} connections, ${o.warmup} s warm-up, ${o.duration} s measured`,
    async ({ key, round }) => {
      const load = { port: milters[key]!.port, connections: o.connections, warmupS: o.warmup, durationS: o.duration, recipients: 200, timeoutMs: 5000 };
      const { result, use } = await runClient<MilterLoadResult>('milter-load.ts', 'milter', load, { meters: { milter: () => treeCpu(milters[key]!.pid) }, pin: CLIENT_CPU, limitMs: (o.warmup + o.duration + 30) * 1000 });
      log(`    ${fmtInt(result.tps)} transactions/s, ${result.errors} errors; other CPU ${use.other}%`);
      return { ...result, key, round, use, other: use.other };
    },
    { retries: o.retries },
  );
  const of = (key: string) => runs.filter((r) => r.key === key);
  const tps = (key: string) => median(of(key).map((r) => r.tps));
  const [vsC, vsPy] = [ratioCheck(`overquota milter / ${LABELS.c}, transactions/s, ${o.connections} connections`, tps('overquota'), tps('c'), 'transactions/s', '>=', TARGETS.vsC), ratioCheck(`overquota milter / pymilter, transactions/s, ${o.connections} connections`, tps('overquota'), tps('pymilter'), 'transactions/s', '>=', TARGETS.vsPymilter)];
  // Each overquota transaction's RCPT was decided, not passed unseen: the decisions counted.
  const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const [decided, measured] = [[...metrics.matchAll(/^overquota_decisions_total\{face="milter",[^}]*\} (\d+)$/gm)].reduce((a, m) => a + Number(m[1]), 0), of('overquota').reduce((a, r) => a + r.transactions, 0)];
  const busyClient = runs.flatMap((r, i) => ((r.use.cpu.client ?? 0) >= 90 ? [`#${i + 1}`] : []));
  return {
    setup: `${o.connections} connections, ${o.rounds} round(s), ${o.warmup} s warm-up and ${o.duration} s measured per run; client on CPU ${CLIENT_CPU}, milter on CPU ${MILTER_CPU}. CPU in % of one core; machine idle in % of both cores; other = busy cores minus the milter, the client and the kernel's threads.`,
    versions: [pymilterVersion()],
    tables: [
      { head: ['milter', 'runs', 'transactions/s (median)', 'min–max', 'each run', 'overquota vs this', 'milter CPU', 'client CPU', 'negotiated protocol'], rows: Object.keys(LABELS).map((k) => [LABELS[k]!, of(k).length, fmtInt(tps(k)), fmtSpread(spread(of(k).map((r) => r.tps))), of(k).map((r) => fmtInt(r.tps)).join(', '), k === 'overquota' ? '-' : `${(tps('overquota') / tps(k)).toFixed(2)}×`, pct(median(of(k).map((r) => r.use.cpu.milter ?? 0))), pct(median(of(k).map((r) => r.use.cpu.client ?? 0))), of(k)[0]!.protocol]) },
      { title: 'Every run, in order:', head: ['#', 'round', 'milter', 'transactions/s', 'milter CPU', 'client CPU', 'kernel threads', 'machine idle', 'other CPU', 'packets / replies per transaction', 'errors'], rows: runs.map((r, i) => [i + 1, r.round + 1, LABELS[r.key]!, fmtInt(r.tps), pct(r.use.cpu.milter), pct(r.use.cpu.client), pct(r.use.cpu.kernel), pct(r.use.idle), pct(r.other), `${r.packetsPerTransaction} / ${r.repliesPerTransaction}`, r.errors]) },
    ],
    checks: [vsC, vsPy],
    headline: Object.keys(LABELS).map((k) => ({ item: '3. milter on the wire', config: LABELS[k]!, runs: of(k).length, figure: tps(k), unit: 'transactions/s', spread: spread(of(k).map((r) => r.tps)), ratios: k === 'overquota' ? `${vsC.ratio!.toFixed(2)}× C, ${vsPy.ratio!.toFixed(2)}× pymilter` : '' })),
    notes: [`The pymilter reaches ${(tps('pymilter') / tps('c')).toFixed(2)}× the C milter (libmilter does its framing and I/O; Python runs four callbacks per transaction): a milter at the C ceiling would be ${(tps('c') / tps('pymilter')).toFixed(2)}× the pymilter.${busyClient.length ? ` The client used 90% or more of its core in run(s) ${busyClient.join(', ')}: there the figure may be the client's ceiling.` : ''}`],
    problems: [...runs.filter((r) => r.errors).map((r) => `${LABELS[r.key]}, round ${r.round + 1}: ${r.errors} errors, e.g. ${r.errorSamples[0]}`), ...(decided < measured ? [`overquota counted ${decided} decisions for ${measured} measured transactions`] : [])],
    otherCpu: runs.map((r) => r.other),
  };
});
