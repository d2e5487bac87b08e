/*
 * One table of the last run's headline figures and every target with its verdict, from the results
 * the benches left in $OVERQUOTA_BENCH_RESULTS, else bench/results/ (scripts/bench.sh points them
 * there; git ignores it); the benches whose results are missing are named.
 *   node --import tsx bench/summary.ts --start     a new run (scripts/bench.sh, first): the directory
 *                                                  emptied, run.json noting the start, load average, commit
 *   node --import tsx bench/summary.ts [--write]   prints the summary; --write: into BENCHMARKS.md
 * A result older than run.json is an earlier run's: missing. Exit 1 when there is no result at all.
 * It runs no bench and never touches BENCHMARKS.md without --write.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RESULTS_ENV, RESULTS_FORMAT, ROOT, codeVersion, cpuModel, fmtInt, fmtMs, isoNow, loadAverage, log, checkRow, table, versionOf, writeSection, type Check, type Headline } from './harness.js';

/** In the order scripts/bench.sh runs them; their targets in this order too: what overquota is for (bounces prevented) first. */
const BENCHES = ['backscatter', 'policy', 'postfix', 'milter-wire', 'rss', 'cluster', 'stores'];
const DIR = path.resolve(process.env[RESULTS_ENV] ?? path.join(ROOT, 'bench', 'results'));
const RUN_FILE = path.join(DIR, 'run.json');

interface Results {
  format: number;
  bench: string;
  command: string;
  started: string;
  finished: string;
  code: string;
  versions: Record<string, string>;
  headline: Headline[];
  checks: Check[];
  problems: string[];
  noise: string | null;
}

const args = process.argv.slice(2);
if (args.includes('--start')) {
  mkdirSync(DIR, { recursive: true });
  for (const f of readdirSync(DIR)) if (f.endsWith('.json')) rmSync(path.join(DIR, f));
  const command = process.env.npm_lifecycle_event === 'bench' ? 'npm run bench' : 'bash scripts/bench.sh';
  writeFileSync(RUN_FILE, `${JSON.stringify({ started: isoNow(), loadavg: loadAverage(), code: codeVersion(), command }, null, 2)}\n`);
  log(`new bench run: results in ${DIR.startsWith(ROOT) ? path.relative(ROOT, DIR) : DIR}/, load average ${loadAverage() ?? '?'}`);
} else {
  const run = existsSync(RUN_FILE) ? (JSON.parse(readFileSync(RUN_FILE, 'utf8')) as { started: string; loadavg: string | null; code: string; command: string }) : null;
  const results = new Map<string, Results>();
  const missing: string[] = [];
  for (const bench of BENCHES) {
    const file = path.join(DIR, `${bench}.json`);
    const r = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Results) : null;
    if (!r) missing.push(`bench/${bench}.ts: no results: it failed or did not run (see its output)`);
    else if (r.format !== RESULTS_FORMAT) missing.push(`bench/${bench}.ts: its results are not of format ${RESULTS_FORMAT}`);
    else if (run && r.started < run.started) missing.push(`bench/${bench}.ts: its results are from an earlier run (${r.started})`);
    else results.set(bench, r);
  }
  const all = [...results.values()];
  const versions: Record<string, string> = Object.assign({}, ...all.map((r) => r.versions));
  versions.Postfix ??= versionOf('Postfix', '/usr/sbin/postconf', ['-d', '-h', 'mail_version']).split(' ')[1]!;
  const software = ['Postfix', 'Dovecot', 'Python', 'pymilter', 'Redis'].filter((k) => versions[k] && !versions[k].includes('unknown')).map((k) => `${k} ${versions[k]}`);
  const machine = [`${os.availableParallelism()} CPU (nproc), ${cpuModel()}`, `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB memory`, `${os.type()} ${os.release()}`, `Node ${process.version}`, ...software].join(', ');
  const codes = [...new Set(all.map((r) => r.code))];
  const code = run?.code ?? (codes.length === 1 ? codes[0] : 'at several commits');
  const perBench = codes.some((c) => c !== code) ? ` (per bench: ${all.map((r) => `${r.bench} ${r.code.replace('at commit ', '')}`).join('; ')})` : '';
  const started = run ? `Last run: \`${run.command}\`, started ${run.started}${run.loadavg ? ` with a load average of ${run.loadavg} (1, 5, 15 min)` : ''}` : 'Results of benches run separately';
  const options = (r: Results) => r.command.replace(/^node --import tsx \S+ ?/, '').replace(/(^| )--write\b/, '').trim();
  const benches = `Benches: ${all.map((r) => `bench/${r.bench}.ts${options(r) ? ` \`${options(r)}\`` : ''} ${r.started.slice(11)}–${r.finished.slice(11)}`).join(', ')}.`;
  const headline = all.flatMap((r) => r.headline).sort((a, b) => a.item.localeCompare(b.item, 'en', { numeric: true }));
  const figureRows = headline.map((h) => [h.item, h.config, h.runs, h.unit === 'MB' ? h.figure.toFixed(1) : fmtInt(h.figure), h.unit, h.spread ? `${fmtInt(h.spread.min)}–${fmtInt(h.spread.max)}` : '-', h.p50 === undefined ? '-' : fmtMs(h.p50), h.p99 === undefined ? '-' : fmtMs(h.p99), h.ratios ?? '']);
  const checks = all.flatMap((r) => r.checks.map((c) => ({ bench: r.bench, c })));
  const missed = checks.filter(({ c }) => !c.met).map(({ bench, c }) => `${bench}: ${c.name}`);
  const verdict = !checks.length ? 'No target was checked.' : `${checks.length - missed.length} of ${checks.length} targets met in ${run ? 'this run' : 'these results'}${missed.length ? `. Missed (${missed.length}): ${missed.join('; ')}` : ''}.`;
  const notes = [...all.flatMap((r) => [...(r.problems.length ? [`bench/${r.bench}.ts: PROBLEMS: ${r.problems.join('; ')}.`] : []), ...(r.noise ? [`bench/${r.bench}.ts: ${r.noise}`] : [])]), ...missing.map((m) => `MISSING: ${m}.`)];
  const markdown = [
    '<!-- bench:summary:start -->',
    `${started}; overquota ${code}${perBench}. Machine: ${machine}. Summary made ${isoNow()} by \`bench/summary.ts\`.`,
    '',
    benches,
    '',
    table(['item', 'configuration', 'runs', 'figure', 'unit', 'min–max', 'p50 ms', 'p99 ms', 'ratios (within this run)'], figureRows),
    '',
    "Items are the issue's: 1. policy requests/s and latency, 2. Postfix end to end with smtp-source, 3. the milter (through Postfix, and on the wire alone), 4. frontend memory; then the other benches' headline figures. Figures are medians of interleaved runs (min–max: their spread). Each bench's section below has its runs and CPU figures.",
    '',
    'The targets:',
    '',
    table(['bench', 'target', 'measured', 'target', 'verdict'], checks.map(({ bench, c }) => [bench, ...checkRow(c)])),
    '',
    verdict,
    ...(notes.length ? ['', ...notes.map((n) => `- ${n}`)] : []),
    '<!-- bench:summary:end -->',
  ].join('\n');
  console.log(`\n${markdown}`);
  if (args.includes('--write')) writeSection('summary', markdown);
  process.exitCode = results.size ? 0 : 1;
}
