/*
 * The Metrics interface (metrics.ts) served in Prometheus' text format, with prom-client. Loaded
 * only by the daemons (frontend with its admin listener on, quota service), never by check/config.
 *
 * Counting must not slow the warm path (issue 13: the policy bench within 3% of metrics off), and a
 * prom-client child's inc() hashes its labels and returns an object on every call. So counters
 * are plain numbers here (Tally), bound to their labels once at start-up, and copied into
 * prom-client's metrics only when Prometheus scrapes (each metric's collect()). Histograms are
 * observed on cold paths only (a source lookup, a Maildir scan), through prom-client directly.
 * It must never export a label value that is not from metrics.ts's lists or the configuration.
 */
import { readFileSync } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import {
  LOOKUP_OUTCOMES,
  PROTOCOL_ERROR_CODES,
  QUOTA_SERVICE_ENDPOINTS,
  TIERS,
  VERDICTS,
  type Count,
  type Face,
  type FaceCounts,
  type Metrics,
  type MetricsExport,
  type QuotaServiceEndpoint,
  type SourceCounts,
  type Timing,
} from './metrics.js';

/**
 * Source lookups, in seconds: a warm local store answers in well under a millisecond, an HTTP
 * backend in a few; source.timeout is 1.5 s and latency_budget 2 s, so the last buckets show
 * lookups that hit them.
 */
const LOOKUP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 5];
/** Maildir recounts: milliseconds for a small mailbox, seconds for one of 100k messages on a cold disk. */
const SCAN_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/**
 * Distinct HTTP statuses counted per quota service endpoint. It answers a handful (200, 400, 401,
 * 404, 405, 414, 500, 503); past this bound a new status is not counted rather than grow the series.
 */
const MAX_STATUSES_PER_ENDPOINT = 16;

/** A counter's value, counted on the hot path as a plain number. */
class Tally implements Count {
  n = 0;
  inc(by = 1): void {
    this.n += by;
  }
}

type Labels = Record<string, string>;

/**
 * A family whose samples are read when scraped: a counter's from its tallies, a gauge's from
 * whatever it reads. `samples` gives each with its labels (none: no series).
 */
function family(registry: Registry | null, type: 'counter' | 'gauge', name: string, help: string, labelNames: string[], samples: () => Iterable<[Labels, number]>): void {
  const config = { name, help, labelNames, registers: registry ? [registry] : [] };
  if (type === 'counter') {
    new Counter({
      ...config,
      collect() {
        this.reset();
        for (const [labels, v] of samples()) this.inc(labels, v);
      },
    });
    return;
  }
  new Gauge({
    ...config,
    collect() {
      this.reset();
      for (const [labels, v] of samples()) this.set(labels, v);
    },
  });
}

/** A counter family of tallies, each with its labels. */
function counterFamily(registry: Registry | null, name: string, help: string, labelNames: string[], cells: () => Iterable<[Labels, Tally]>): void {
  family(registry, 'counter', name, help, labelNames, function* () {
    for (const [labels, t] of cells()) yield [labels, t.n];
  });
}

function tallies<K extends string>(keys: readonly K[]): Record<K, Tally> {
  return Object.fromEntries(keys.map((k) => [k, new Tally()])) as Record<K, Tally>;
}

export interface PrometheusMetrics extends Metrics, MetricsExport {}

/**
 * prom-client's defaults that are gauges named like counters: `promtool check metrics` rejects
 * them ("non-counter metrics should not have _total suffix"), so they are not exported.
 */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/**
 * @param daemon whose metrics are exported: the frontend's (decisions, cache, sources, faces) or
 *   the quota service's (requests, scans); both export reloads, Redis and build info, and
 *   prom-client's process and Node.js metrics (CPU, memory, event loop lag, GC).
 */
export function createPrometheusMetrics(daemon: 'frontend' | 'quota-service'): PrometheusMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  for (const name of MISNAMED_DEFAULTS) registry.removeSingleMetric(name);
  const frontend = daemon === 'frontend' ? registry : null;
  const quotaService = daemon === 'quota-service' ? registry : null;

  const faces = new Map<Face, { decisions: Record<string, Tally>; errors: Record<string, Tally> }>();
  const face = (f: Face): FaceCounts => {
    let counts = faces.get(f);
    if (!counts) {
      counts = { decisions: tallies(VERDICTS), errors: tallies(PROTOCOL_ERROR_CODES[f]) };
      faces.set(f, counts);
    }
    const { decisions, errors } = counts;
    return { decisions, protocolError: (code) => (errors[code] ?? errors.INTERNAL!).inc() };
  };
  counterFamily(frontend, 'overquota_decisions_total', 'Recipients decided, by face and verdict.', ['face', 'verdict'], function* () {
    for (const [f, c] of faces) for (const v of VERDICTS) yield [{ face: f, verdict: v }, c.decisions[v]!];
  });
  counterFamily(frontend, 'overquota_protocol_errors_total', 'Clients dropped without a reply for breaking the protocol, by face and code.', ['face', 'code'], function* () {
    for (const [f, c] of faces) for (const code of PROTOCOL_ERROR_CODES[f]) yield [{ face: f, code }, c.errors[code]!];
  });

  const answers = tallies(TIERS);
  counterFamily(frontend, 'overquota_cache_answers_total', 'Answers about one mailbox, by the tier that gave them (shared: another lookup of the same mailbox, waited for).', ['tier'], function* () {
    for (const t of TIERS) yield [{ tier: t }, answers[t]];
  });

  const sources = new Map<string, Record<string, Tally>>();
  const lookupDuration = new Histogram({
    name: 'overquota_source_lookup_duration_seconds',
    help: 'Time of one source lookup, whatever its outcome.',
    labelNames: ['source'],
    buckets: LOOKUP_BUCKETS,
    registers: frontend ? [frontend] : [],
  });
  const source = (name: string): SourceCounts => {
    let lookups = sources.get(name);
    if (!lookups) {
      lookups = tallies(LOOKUP_OUTCOMES);
      sources.set(name, lookups);
      lookupDuration.zero({ source: name });
    }
    const bound = lookupDuration.labels(name);
    return { lookups: lookups as Record<(typeof LOOKUP_OUTCOMES)[number], Count>, duration: { observe: (s) => bound.observe(s) } };
  };
  counterFamily(frontend, 'overquota_source_lookups_total', 'Source lookups, by source and outcome (ok, unknown, timeout, unreachable, http_status, bad_answer, io, bad_key, busy, internal).', ['source', 'outcome'], function* () {
    for (const [name, lookups] of sources) for (const o of LOOKUP_OUTCOMES) yield [{ source: name, outcome: o }, lookups[o]!];
  });

  const single = (where: Registry | null, name: string, help: string): Tally => {
    const t = new Tally();
    counterFamily(where, name, help, [], () => [[{}, t]]);
    return t;
  };
  const budgetExhausted = single(frontend, 'overquota_latency_budget_exhausted_total', 'Lookups answered on_error because latency_budget ran out.');
  const waits = { process: new Tally(), cluster: new Tally() };
  counterFamily(frontend, 'overquota_single_flight_waits_total', 'Lookups that waited for another lookup of the same mailbox: in this process, or on another frontend (the Redis lock).', ['scope'], () => [
    [{ scope: 'process' }, waits.process],
    [{ scope: 'cluster' }, waits.cluster],
  ]);
  const redisErrors = single(registry, 'overquota_redis_errors_total', 'Redis commands that failed or timed out (the answer then came without Redis).');
  const reservations = {
    made: single(frontend, 'overquota_reservations_total', 'Reservations made: an accepted recipient counted against its mailbox until a reading shows its message.'),
    delivered: new Tally(),
    expired: new Tally(),
    tipped: single(frontend, 'overquota_pending_tipped_verdicts_total', 'Verdicts of over quota that mail on its way (reservations) tipped.'),
  };
  counterFamily(frontend, 'overquota_reservations_ended_total', 'Reservations ended, by why: delivered (a reading showed the message stored) or expired (reservations.ttl).', ['reason'], () => [
    [{ reason: 'delivered' }, reservations.delivered],
    [{ reason: 'expired' }, reservations.expired],
  ]);
  const reloads = { ok: new Tally(), failed: new Tally() };
  counterFamily(registry, 'overquota_config_reloads_total', 'Re-reads of the aliases and limits files (SIGHUP), by result: ok, or failed (the previous contents kept).', ['result'], () => [
    [{ result: 'ok' }, reloads.ok],
    [{ result: 'failed' }, reloads.failed],
  ]);

  const requests = new Map<QuotaServiceEndpoint, Map<number, Tally>>(QUOTA_SERVICE_ENDPOINTS.map((e) => [e, new Map()]));
  counterFamily(quotaService, 'overquota_quota_service_requests_total', 'Quota service requests answered, by endpoint and HTTP status (503: busy or the store failing).', ['endpoint', 'status'], function* () {
    for (const [endpoint, byStatus] of requests) for (const [status, t] of byStatus) yield [{ endpoint, status: String(status) }, t];
  });
  const scans = new Histogram({ name: 'overquota_maildir_scan_duration_seconds', help: 'Maildir recounts (directory scans) and their duration.', buckets: SCAN_BUCKETS, registers: quotaService ? [quotaService] : [] });
  scans.zero({});

  const connections = new Map<Face, () => number>();
  family(frontend, 'gauge', 'overquota_open_connections', 'Connections open now, by face (an MTA keeps one per smtpd process or SMTP session).', ['face'], function* () {
    for (const [f, read] of connections) yield [{ face: f }, read()];
  });
  /** A gauge without labels exists only once it has something to read: no Redis, no overquota_redis_connected (an alert on 0 must not fire). */
  const readLater = (where: Registry | null, name: string, help: string) => (read: () => number) => family(where, 'gauge', name, help, [], () => [[{}, read()]]);
  const redisConnected = readLater(registry, 'overquota_redis_connected', 'Whether the shared Redis tier is connected (1) or not (0); absent without redis.url.');
  const lookupsInFlight = readLater(quotaService, 'overquota_quota_service_lookups_in_flight', 'Quota lookups being answered by the quota service now, waiting ones included.');
  const info = new Gauge({ name: 'overquota_build_info', help: 'Always 1: the overquota version and the Node.js version running it.', labelNames: ['version', 'node'], registers: [registry] });
  info.set({ version: packageVersion(), node: process.versions.node }, 1);

  const scanTiming: Timing = { observe: (s) => scans.observe(s) };
  return {
    face,
    source,
    answers,
    budgetExhausted,
    singleFlightWaits: waits,
    redisErrors,
    reservations,
    reloads,
    quotaServiceRequest(endpoint, status) {
      const byStatus = requests.get(endpoint)!;
      let t = byStatus.get(status);
      if (!t) {
        if (byStatus.size >= MAX_STATUSES_PER_ENDPOINT) return;
        t = new Tally();
        byStatus.set(status, t);
      }
      t.n++;
    },
    scans: scanTiming,
    openConnections: (f, read) => void connections.set(f, read),
    redisConnected: (read) => redisConnected(() => (read() ? 1 : 0)),
    lookupsInFlight,
    contentType: registry.contentType,
    text: () => registry.metrics(),
  };
}

/** package.json's version: two folders up from src/runtime/ and from dist/runtime/ alike. */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
