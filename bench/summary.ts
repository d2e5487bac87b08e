/*
 * One table of the issue's figures and ratios, from the results the benches of one `npm run bench`
 * left (bench/results.ts): policy requests/s and latency at 50 and 200 connections (bench/peers.ts:
 * fixed-answer server, overquota warm with log info and warn, overquota with every lookup a miss,
 * Dovecot quota-status; and bench/policy.ts's longer warm-cache runs), Postfix msgs/s end to end
 * (bench/postfix-e2e.ts), Postfix msgs/s through the milters (bench/milter.ts), frontend RSS
 * (bench/rss.ts); then every target of every bench (cluster.ts and stores.ts too) with measured
 * value, target and verdict; then the benches whose results are missing (they failed or did not
 * run). Prints it; --write puts it into BENCHMARKS.md between the bench:summary markers (under the
 * intro), with the machine's description, the commit, the date and the load average at start.
 *
 *   node --import tsx bench/summary.ts [--write]   # the table of the last run's results
 *   node --import tsx bench/summary.ts --start     # scripts/bench.sh, first: a new run
 *
 * The results are read from $OVERQUOTA_BENCH_RESULTS, else bench/results/ (where scripts/bench.sh
 * has the benches write them; git ignores it): NAME.json per bench, and run.json, written by
 * --start: it empties the directory's *.json files and notes when the run started, the load
 * average then, the commit and the command. A result older than run.json is from an earlier run
 * and counts as missing. Exit code 1 when there is no result at all (with run.json it
 * still prints, and with --write writes, a summary naming every bench as missing).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { dovecotVersion } from './peers-data.js';
import {
  BENCHES,
  DEFAULT_RESULTS_DIR,
  RESULTS_FORMAT,
  SCRIPTS,
  fmtMs,
  fmtRatio,
  fmtTarget,
  fmtVerdict,
  loadAverage,
  resultsDirFromEnv,
  versionsOf,
  type BenchName,
  type Check,
  type MsgsFigure,
  type PolicyFigure,
  type Results,
  type RssFigure,
} from './results.js';
import { BENCHMARKS_MD, ROOT, codeVersion, cpuModel, fmtInt, isMain, isoNow, log, shownPath, table, updateMarkdown } from './shared.js';

/** run.json: written by --start. */
interface RunInfo {
  started: string;
  loadavg: string | null;
  code: string;
  command: string;
}

interface Loaded {
  run: RunInfo | null;
  results: Partial<Record<BenchName, Results>>;
  /** Bench → why it has no results. */
  missing: Partial<Record<BenchName, string>>;
}

const RUN_FILE = 'run.json';

function resultsDir(): string {
  return resultsDirFromEnv() ?? DEFAULT_RESULTS_DIR;
}

function main(): number {
  const { values } = parseArgs({ options: { start: { type: 'boolean', default: false }, write: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } } });
  if (values.help) {
    console.log('usage: node --import tsx bench/summary.ts [--write] | --start   (results from $OVERQUOTA_BENCH_RESULTS, else bench/results/)');
    return 0;
  }
  const dir = resultsDir();
  if (values.start) {
    startRun(dir);
    return 0;
  }
  const loaded = load(dir);
  const none = Object.keys(loaded.results).length === 0;
  if (none && !loaded.run) {
    log(`no bench results in ${shownPath(dir)}: run \`npm run bench\` (or a bench with OVERQUOTA_BENCH_RESULTS=DIR)`);
    return 1;
  }
  // A run whose every bench failed still gets its summary: all of them named as missing.
  const report = buildSummary(loaded);
  console.log(`\n${report.text}`);
  if (values.write) {
    updateMarkdown(BENCHMARKS_MD, 'summary', 'Summary', '', report.markdown);
    log('BENCHMARKS.md updated (summary)');
  }
  return none ? 1 : 0;
}

/** A new run: the directory emptied of results, run.json noting the start. */
function startRun(dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) if (f.endsWith('.json')) rmSync(path.join(dir, f), { force: true });
  const run: RunInfo = {
    started: isoNow(),
    loadavg: loadAverage(),
    code: codeVersion(),
    command: process.env.npm_lifecycle_event === 'bench' ? 'npm run bench' : 'bash scripts/bench.sh',
  };
  writeFileSync(path.join(dir, RUN_FILE), `${JSON.stringify(run, null, 2)}\n`);
  log(`new bench run: results in ${shownPath(dir)}, load average ${run.loadavg ?? '?'}`);
}

function load(dir: string): Loaded {
  const readJson = (file: string): unknown => JSON.parse(readFileSync(file, 'utf8'));
  const runFile = path.join(dir, RUN_FILE);
  const run = existsSync(runFile) ? (readJson(runFile) as RunInfo) : null;
  const results: Loaded['results'] = {};
  const missing: Loaded['missing'] = {};
  for (const bench of BENCHES) {
    const file = path.join(dir, `${bench}.json`);
    if (!existsSync(file)) {
      missing[bench] = 'no results: it failed or did not run (see its output)';
      continue;
    }
    let r: Results;
    try {
      r = readJson(file) as Results;
    } catch (err) {
      missing[bench] = `its results file is unreadable: ${(err as Error).message}`;
      continue;
    }
    if (r.format !== RESULTS_FORMAT || r.bench !== bench || !Array.isArray(r.figures) || !Array.isArray(r.checks)) {
      missing[bench] = `its results file is not of format ${RESULTS_FORMAT}`;
    } else if (run && r.started < run.started) {
      missing[bench] = `its results are from an earlier run (${r.started})`;
    } else {
      results[bench] = r;
    }
  }
  return { run, results, missing };
}

// ---------------------------------------------------------------- the machine

/** Versions of what the benches ran against: what they reported, else what is installed. */
function versions(loaded: Loaded): Record<string, string> {
  const sh = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }).trim();
    } catch {
      return '';
    }
  };
  const installed: Record<string, string> = versionsOf(
    `Postfix ${sh('/usr/sbin/postconf', ['-d', '-h', 'mail_version'])}`,
    dovecotVersion(),
    sh('/usr/bin/python3', ['-c', 'import sys, Milter; print("Python %d.%d.%d, pymilter %s" % (sys.version_info[:3] + (Milter.__version__,)))']),
  );
  const redis = /v=(\S+)/.exec(sh('/usr/bin/redis-server', ['--version']));
  if (redis) installed.Redis = redis[1]!;
  const reported = Object.values(loaded.results).map((r) => r.versions);
  return Object.assign(installed, ...reported) as Record<string, string>;
}

function machine(loaded: Loaded): string {
  const v = versions(loaded);
  const gib = (os.totalmem() / 2 ** 30).toFixed(1);
  const software = [
    v.Postfix && `Postfix ${v.Postfix}`,
    v.Dovecot && `Dovecot ${v.Dovecot}`,
    v.Python && `Python ${v.Python}${v.pymilter ? ` + pymilter ${v.pymilter}` : ''}`,
    v.Redis && `Redis ${v.Redis}`,
  ].filter(Boolean);
  return [`${os.availableParallelism()} CPU (nproc), ${cpuModel()}`, `${gib} GiB memory`, `${os.type()} ${os.release()}`, `Node ${process.version}`, ...software].join(', ');
}

// ---------------------------------------------------------------- the table

const ITEMS: Record<BenchName, string> = {
  peers: '1',
  postfix: '2',
  milter: '3',
  rss: '4',
  policy: 'policy.ts',
  cluster: 'cluster.ts',
  stores: 'stores.ts',
  backscatter: 'backscatter.ts',
  'milter-wire': '3',
};
/** The order of the targets: what overquota is for (bounces prevented) first, then speed and memory. */
const CHECK_ORDER: BenchName[] = ['backscatter', 'peers', 'postfix', 'milter-wire', 'milter', 'rss', 'policy', 'cluster', 'stores'];

const HEAD = ['item', 'configuration', 'runs', 'figure', 'unit', 'min–max', 'p50 ms', 'p99 ms', 'max ms', 'vs fixed', 'vs Dovecot', 'other ratios'];

function policyRows(item: string, figures: PolicyFigure[], keys: string[]): string[][] {
  const rows: string[][] = [];
  for (const c of [...new Set(figures.map((f) => f.connections))]) {
    const at = figures.filter((f) => f.connections === c);
    const fixed = at.find((f) => f.key === 'fixed');
    const dove = at.find((f) => f.key === 'dovecot');
    const vs = (f: PolicyFigure, b: PolicyFigure | undefined) => (b && b.rps > 0 ? fmtRatio(f.rps / b.rps) : '-');
    for (const f of at.filter((x) => keys.includes(x.key))) {
      rows.push([`${item}, ${c} connections`, f.label, String(f.runs), fmtInt(f.rps), 'req/s', '-', fmtMs(f.p50Ms), fmtMs(f.p99Ms), fmtMs(f.maxMs), vs(f, fixed), vs(f, dove), f.errors > 0 ? `${f.errors} errors` : '']);
    }
  }
  return rows;
}

function msgsRows(item: string, figures: MsgsFigure[], others: (f: MsgsFigure, by: (key: string) => MsgsFigure | undefined) => string): string[][] {
  const by = (key: string) => figures.find((f) => f.key === key);
  const vs = (f: MsgsFigure, key: string) => {
    const b = by(key);
    return b && b.median > 0 ? (f.median / b.median).toFixed(2) : '-';
  };
  return figures.map((f) => [
    item,
    f.label,
    String(f.runs),
    fmtInt(f.median),
    'msgs/s (median)',
    `${fmtInt(f.min)}–${fmtInt(f.max)}`,
    '-',
    '-',
    '-',
    by('fixed') ? vs(f, 'fixed') : '-',
    by('dovecot') ? vs(f, 'dovecot') : '-',
    others(f, by),
  ]);
}

function rssRows(f: RssFigure): string[][] {
  const conns = `${fmtInt(f.idle)} idle + ${fmtInt(f.busy)} busy connections`;
  const mb = (x: number | null) => (x === null ? '-' : x.toFixed(1));
  const row = (what: string, value: string, other = '') => ['4. frontend RSS', `${conns}, ${what}`, '1', value, 'MB', '-', '-', '-', '-', '-', '-', other];
  return [
    row(`at ${fmtInt(f.checkpoint)} requests`, mb(f.rssAtCheckpointMB)),
    row(`at ${fmtInt(f.requests)} requests`, mb(f.rssAtEndMB), f.growthPct === null ? 'growth not measured' : `growth ${f.growthPct >= 0 ? '+' : ''}${f.growthPct.toFixed(1)}% from ${fmtInt(f.checkpoint)}`),
    row(`highest reading (${fmtInt(f.rps)} req/s)`, mb(f.highestRssMB)),
  ];
}

function figureRows(loaded: Loaded): string[][] {
  const r = loaded.results;
  const rows: string[][] = [];
  if (r.peers) rows.push(...policyRows('1. policy', r.peers.figures as PolicyFigure[], ['fixed', 'info', 'warn', 'miss', 'dovecot']));
  if (r.policy) rows.push(...policyRows('1. policy (policy.ts, mbox spool)', r.policy.figures as PolicyFigure[], ['fixed', 'info', 'warn']));
  if (r.postfix) {
    rows.push(
      ...msgsRows('2. Postfix end to end', r.postfix.figures as MsgsFigure[], (f, by) => {
        const none = by('none');
        return none && f.key !== 'none' && none.median > 0 ? `${(f.median / none.median).toFixed(2)}× no policy check` : '';
      }),
    );
  }
  if (r.milter) {
    rows.push(
      ...msgsRows('3. Postfix milter', r.milter.figures as MsgsFigure[], (f, by) => {
        const none = by('none');
        const py = by('pymilter');
        const parts: string[] = [];
        if (none && f.key !== 'none' && none.median > 0) parts.push(`${(f.median / none.median).toFixed(2)}× no milter`);
        if (py && f.key === 'overquota' && py.median > 0) parts.push(`${(f.median / py.median).toFixed(2)}× pymilter`);
        return parts.join(', ');
      }),
    );
  }
  const rss = r.rss?.figures[0] as RssFigure | undefined;
  if (rss) rows.push(...rssRows(rss));
  return rows;
}

function fmtMeasured(c: Check): string {
  const figure = (x: number | null) => {
    if (x === null) return 'not measured';
    if (c.unit === 'ms') return `${fmtMs(x)} ms`;
    if (c.unit === 'MB') return `${x.toFixed(1)} MB`;
    if (c.unit === '%') return `${x >= 0 ? '+' : ''}${x.toFixed(1)}%`;
    return `${fmtInt(x)} ${c.unit}`;
  };
  if (c.ratio === null) return figure(c.measured);
  return `${fmtRatio(c.ratio)}× (${fmtInt(c.measured ?? 0)} / ${fmtInt(c.baseline ?? 0)} ${c.unit})`;
}

function checkRows(loaded: Loaded): { rows: string[][]; met: number; total: number; missed: string[] } {
  const rows: string[][] = [];
  let met = 0;
  const missed: string[] = [];
  for (const bench of CHECK_ORDER) {
    const r = loaded.results[bench];
    for (const c of r?.checks ?? []) {
      rows.push([ITEMS[bench], c.name, fmtMeasured(c), fmtTarget(c), fmtVerdict(c)]);
      if (c.met) met++;
      else missed.push(`${ITEMS[bench]}: ${c.name}`);
    }
  }
  return { rows, met, total: rows.length, missed };
}

function buildSummary(loaded: Loaded): { text: string; markdown: string } {
  const present = BENCHES.filter((b) => loaded.results[b]);
  // The commit at the start of the run; each bench notes its own (a commit during the run shows).
  const codes = [...new Set(present.map((b) => loaded.results[b]!.code))];
  const code = loaded.run?.code ?? (codes.length === 1 ? codes[0]! : codes.length === 0 ? codeVersion() : 'at several commits');
  const codeNote =
    codes.length > 1 || (codes.length === 1 && codes[0] !== code)
      ? ` (per bench: ${present.map((b) => `${SCRIPTS[b].replace('bench/', '')} ${loaded.results[b]!.code.replace(/^at commit /, '')}`).join('; ')})`
      : '';
  const first = [...present].sort((a, b) => (loaded.results[a]!.started < loaded.results[b]!.started ? -1 : 1))[0];
  const started = loaded.run?.started ?? loaded.results[first!]!.started;
  const loadavg = loaded.run ? loaded.run.loadavg : (loaded.results[first!]!.loadavg ?? null);
  const run = loaded.run ? `Last run: \`${loaded.run.command}\`, started ${started}` : `Results of benches run separately (no \`npm run bench\` start noted), the first started ${started}`;
  const head =
    `${run}${loadavg ? ` with a load average of ${loadavg} (1, 5, 15 min)` : ''}; overquota ${code}${codeNote}. ` +
    `Machine: ${machine(loaded)}. Summary made ${isoNow()} by \`bench/summary.ts\` from ${resultsDir().startsWith(ROOT + path.sep) ? path.relative(ROOT, resultsDir()) : resultsDir()}/.`;
  const runs = `Benches: ${BENCHES.map((b) => {
    const r = loaded.results[b];
    if (!r) return `${SCRIPTS[b]} MISSING`;
    // Options other than --write (e.g. \`npm run bench -- --duration 5\` for policy.ts).
    const options = r.command.replace(/^node --import tsx \S+/, '').replace(/(^| )--write( |$)/, ' ').trim();
    return `${SCRIPTS[b]}${options ? ` \`${options}\`` : ''} ${r.started.slice(11)}–${r.finished.slice(11)}`;
  }).join(', ')}.`;

  const rows = figureRows(loaded);
  const checks = checkRows(loaded);
  const checkHead = ['item', 'target', 'measured', 'target', 'verdict'];
  const where = loaded.run ? 'in this run' : 'in these results';
  const verdict =
    checks.total === 0
      ? 'No target was checked.'
      : checks.met === checks.total
        ? `All ${checks.total} targets met ${where}.`
        : `${checks.met} of ${checks.total} targets met ${where}. Missed (${checks.total - checks.met}): ${checks.missed.join('; ')}.`;
  const notes: string[] = [];
  for (const b of BENCHES) {
    const r = loaded.results[b];
    if (r?.problems.length) notes.push(`${SCRIPTS[b]}: PROBLEMS: ${r.problems.join('; ')}.`);
    if (r?.noise) notes.push(`${SCRIPTS[b]}: ${r.noise}`);
  }
  const missing = BENCHES.filter((b) => loaded.missing[b]).map((b) => `MISSING: ${SCRIPTS[b]}: ${loaded.missing[b]}.`);
  const legend =
    'Items are the issue\'s: 1. policy requests/s and latency (bench/peers.ts; bench/policy.ts: its longer warm-cache runs on an mbox spool), 2. Postfix end to end with smtp-source, 3. Postfix through the milter, 4. frontend memory. Ratios are of requests/s or msgs/s within this run ("vs fixed": the fixed-answer server; "vs Dovecot": Dovecot quota-status at the same connection count); Postfix figures are medians of interleaved runs (min–max: their spread). Each bench\'s section below has its runs and CPU figures.';
  const text = [head, runs, '', table(HEAD, rows, false), '', table(checkHead, checks.rows, false), '', verdict, ...notes, ...missing].join('\n');
  const markdown = [
    '<!-- bench:summary:start -->',
    head,
    '',
    runs,
    '',
    table(HEAD, rows, true),
    '',
    legend,
    '',
    "The targets (issue 6's, then each bench's own):",
    '',
    table(checkHead, checks.rows, true),
    '',
    verdict,
    ...(notes.length + missing.length > 0 ? ['', ...[...notes, ...missing].map((n) => `- ${n}`)] : []),
    '<!-- bench:summary:end -->',
  ].join('\n');
  return { text, markdown };
}

if (isMain(import.meta.url)) process.exitCode = main();
