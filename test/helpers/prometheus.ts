/*
 * The real Prometheus tools for tests (Debian package `prometheus`: prometheus and promtool), and
 * reading the text format. A private Prometheus server per test: its own config, data folder and
 * free loopback port, scraping every second; stopped and removed by stop().
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from './ports.js';
import { run, type RunResult } from './supervised.js';
import { tempDir } from './tmp.js';

export const PROMETHEUS = '/usr/bin/prometheus';
export const PROMTOOL = '/usr/bin/promtool';

/** Why the tools cannot run here, or false. */
export function prometheusUnavailable(): string | false {
  for (const bin of [PROMETHEUS, PROMTOOL]) {
    if (!existsSync(bin)) return `${bin} missing: apt-get install prometheus (or run scripts/install-deps.sh)`;
  }
  return false;
}

export function needPrometheus(): void {
  const why = prometheusUnavailable();
  if (why) throw new Error(why);
}

/** `promtool check metrics` on exposition text: exit 0 and no complaint when it is clean. */
export function promtoolCheckMetrics(text: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(PROMTOOL, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.stdin.end(text);
  });
}

export const promtool = (...args: string[]): Promise<RunResult> => run(PROMTOOL, args);

/** GET a /metrics endpoint: the text, after checking it is Prometheus' text format. */
export async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('text/plain') || !type.includes('version=0.0.4')) throw new Error(`${url}: content-type ${type}`);
  return res.text();
}

/**
 * The value of one sample: `name` with at least these labels (all of them must match); undefined
 * when there is none. Several matching samples: an error (the test must be precise).
 */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const found: number[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1]!, l[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) found.push(Number(m[4]));
  }
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return found[0];
}

/** Every metric family named in the text (# TYPE lines). */
export function families(text: string): Set<string> {
  return new Set([...text.matchAll(/^# TYPE (\S+) \S+$/gm)].map((m) => m[1]!));
}

/** Polls `check` until it is true, or fails naming `what` after `ms`. */
export async function eventually(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface PrometheusServer {
  url: string;
  /** An instant query: the result vector (throws on a query error). */
  query(expr: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]>;
  /** Series of a metric name known to the server. */
  series(match: string): Promise<Record<string, string>[]>;
  stop(): Promise<void>;
}

/**
 * Starts Prometheus scraping `targets` (job name -> host:port list) every second, with `rules`
 * files loaded; resolves once it answers.
 */
export async function startPrometheus(targets: Record<string, string[]>, rules: string[] = []): Promise<PrometheusServer> {
  needPrometheus();
  const dir = await tempDir('overquota-prometheus-');
  const jobs = Object.entries(targets).map(([job, hosts]) => `  - job_name: ${job}\n    static_configs:\n      - targets: [${hosts.map((h) => `'${h}'`).join(', ')}]\n`);
  const config = path.join(dir.path, 'prometheus.yml');
  await writeFile(config, `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n${rules.length ? `rule_files: [${rules.map((r) => `'${r}'`).join(', ')}]\n` : ''}scrape_configs:\n${jobs.join('')}`);
  const port = await freePort();
  const child = spawn(PROMETHEUS, [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir.path, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const api = async (p: string) => {
    const res = await fetch(`${url}${p}`);
    const body = (await res.json()) as { status: string; data: unknown; error?: string };
    if (body.status !== 'success') throw new Error(`prometheus ${p}: ${body.error}`);
    return body.data;
  };
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    await dir.cleanup();
  };
  try {
    await eventually(`prometheus answering on ${url} (log: ${log})`, async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited ${child.exitCode}: ${log}`);
      return fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url,
    query: async (expr) => ((await api(`/api/v1/query?query=${encodeURIComponent(expr)}`)) as { result: { metric: Record<string, string>; value: [number, string] }[] }).result,
    series: async (match) => (await api(`/api/v1/series?match[]=${encodeURIComponent(match)}`)) as Record<string, string>[],
    stop,
  };
}
