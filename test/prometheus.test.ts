/*
 * overquota as a real Prometheus sees it (issue 13): a Prometheus server started here scrapes a
 * frontend's admin endpoint and a quota service and answers PromQL about the decisions just made;
 * the shipped alert rules (packaging/prometheus/) pass promtool's checks and unit tests; every
 * query of the shipped Grafana dashboard (packaging/grafana/) and of the rules names metrics the
 * daemons really export, and Prometheus evaluates each without error.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { redisUnavailable, startRedis, type RedisServer } from './helpers/redis.js';
import { eventually, needPrometheus, promtool, startPrometheus, type PrometheusServer } from './helpers/prometheus.js';

needPrometheus();

const PACKAGING = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../packaging');
const RULES = path.join(PACKAGING, 'prometheus/overquota-alerts.yml');
const DASHBOARD = path.join(PACKAGING, 'grafana/overquota.json');
const LIMIT = 1000;

/** Metric names in a PromQL expression: ours and the process metrics; label names and functions are not metric names. */
function metricNames(expr: string): string[] {
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...new Set([...withoutStrings.matchAll(/\b([a-z_][a-z0-9_]*)\s*(?=[{[)\s]|$)/g)].map((m) => m[1]!).filter((n) => /^(overquota|process|nodejs|postfix)_/.test(n)))];
}

describe('a real Prometheus scraping a frontend and a quota service', () => {
  let dir: TempDir;
  let qs: Running & { baseUrl: string };
  let fe: Running & { listeners: string[] };
  let prometheus: PrometheusServer;
  let admin: string;
  let redis: RedisServer;

  before(async () => {
    const why = redisUnavailable();
    if (why) throw new Error(why);
    // With Redis, so that every metric a frontend can export is there (overquota_redis_connected).
    redis = await startRedis();
    dir = await tempDir('overquota-prometheus-test-');
    const spool = path.join(dir.path, 'mail');
    await mkdir(spool);
    await writeFile(path.join(spool, 'full'), Buffer.alloc(LIMIT + 1, 'x'));
    qs = await startQuotaServiceProcess(['--store.path', spool, '--store.limit', String(LIMIT)]);
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--admin.listen', '127.0.0.1:0', '--source.type', 'http', '--source.url', `${qs.baseUrl}/quota?u={key}`, '--redis.url', redis.url]);
    admin = String(fe.logs.find((l) => l.msg === 'frontend ready')!.admin);
    prometheus = await startPrometheus({ 'overquota-frontend': [admin], 'overquota-quota-service': [qs.baseUrl.replace('http://', '')] }, [RULES]);
    await eventually('both targets scraped and up', async () => (await prometheus.query('up == 1')).length === 2);
  });

  after(async () => {
    await prometheus?.stop();
    await fe?.stop();
    await qs?.stop();
    await redis?.stop();
    await dir?.cleanup();
  });

  it('answers a PromQL query about the decisions just made, on both faces of the quota lookup', async () => {
    const client = await PolicyClient.connect(fe.listeners[0]!);
    for (const who of ['full', 'full', 'full', 'ann', 'bob']) await client.ask(rcpt(`${who}@example.com`));
    client.close();
    const byVerdict = async () =>
      Object.fromEntries((await prometheus.query('sum by (verdict) (overquota_decisions_total{job="overquota-frontend", verdict=~"over_quota|under_quota"})')).map((r) => [r.metric.verdict, Number(r.value[1])]));
    await eventually('Prometheus has scraped the decisions', async () => {
      const seen = await byVerdict();
      return seen.over_quota === 3 && seen.under_quota === 2;
    });
    // full once, then from memory; ann and bob once each: three lookups reached the quota service.
    await eventually('Prometheus has scraped the quota service since', async () => {
      const served = await prometheus.query('sum(overquota_quota_service_requests_total{job="overquota-quota-service", endpoint="quota", status="200"})');
      return Number(served[0]?.value[1]) === 3;
    });
    const up = await prometheus.query('up');
    assert.deepEqual(up.map((r) => [r.metric.job, r.value[1]]).sort(), [['overquota-frontend', '1'], ['overquota-quota-service', '1']]);
  });

  it('loads the alert rules and evaluates every one of them without error', async () => {
    await eventually('every rule evaluated', async () => {
      const res = (await (await fetch(`${prometheus.url}/api/v1/rules`)).json()) as { data: { groups: { rules: { name: string; health: string; lastError?: string }[] }[] } };
      const rules = res.data.groups.flatMap((g) => g.rules);
      for (const r of rules) assert.notEqual(r.health, 'err', `${r.name}: ${r.lastError}`);
      return rules.length === 6 && rules.every((r) => r.health === 'ok');
    });
  });

  it('every metric the dashboard and the alert rules name is exported for real, and every dashboard query evaluates', async () => {
    const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[]; templating: { list: { query: unknown }[] } };
    const titles = dashboard.panels.map((p) => p.title);
    for (const wanted of ['Decisions by verdict', 'Cache hit ratio', 'Source latency p50 / p99', 'Errors']) assert.ok(titles.includes(wanted), `no panel "${wanted}"`);
    const grafana = (expr: string) =>
      expr.replaceAll('$__rate_interval', '1m').replaceAll('$quota_service_job', 'overquota-quota-service').replaceAll('$job', 'overquota-frontend').replaceAll('$instance', '.*');
    const panelQueries = dashboard.panels.flatMap((p) => p.targets.map((t) => grafana(t.expr)));
    const variableQueries = dashboard.templating.list.map((v) => v.query).filter((q): q is { query: string } => typeof q === 'object' && q !== null);
    const ruleExprs = [...(await readFile(RULES, 'utf8')).matchAll(/expr: (?:\|\n((?: {10}.*\n)+)|(.*)\n)/g)].map((m) => (m[1] ?? m[2]!).trim());
    assert.equal(ruleExprs.length, 6);
    const named = new Set([...panelQueries, ...ruleExprs, ...variableQueries.map((v) => grafana(v.query))].flatMap(metricNames));
    assert.ok(named.size >= 15, `only ${named.size} metric names found: the extraction is broken`);
    const missing: string[] = [];
    for (const name of named) {
      // postfix_up is the Postfix exporter's (prometheus-postfix-exporter), not ours.
      if (name === 'postfix_up') continue;
      if ((await prometheus.series(name)).length === 0) missing.push(name);
    }
    assert.deepEqual(missing, [], 'named by the dashboard or the rules, exported by neither daemon');
    for (const expr of panelQueries) await prometheus.query(expr);
  });
});

describe('the alert rules', () => {
  it('pass promtool check rules', async () => {
    const r = await promtool('check', 'rules', RULES);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS: 6 rules found/);
  });

  it('pass their unit tests (promtool test rules): each fires when it should, and not otherwise', async () => {
    const r = await promtool('test', 'rules', path.join(PACKAGING, 'prometheus/overquota-alerts.test.yml'));
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS/);
  });

  it('the shipped scrape configuration is valid for Prometheus', async () => {
    const tmp = await tempDir('overquota-prometheus-config-');
    try {
      // It names the rules where a host installs them; check it against the file in this tree.
      const config = (await readFile(path.join(PACKAGING, 'prometheus/prometheus.yml'), 'utf8')).replace('/etc/prometheus/overquota-alerts.yml', RULES);
      await writeFile(path.join(tmp.path, 'prometheus.yml'), config);
      const r = await promtool('check', 'config', path.join(tmp.path, 'prometheus.yml'));
      assert.equal(r.code, 0, r.stdout + r.stderr);
    } finally {
      await tmp.cleanup();
    }
  });
});
