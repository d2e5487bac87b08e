/*
 * What the daemons count, as a small interface the core, the cache and the faces are handed, so
 * that none of them imports prom-client (runtime/prometheus.ts implements it; the commands make
 * one and hand it down). NO_METRICS counts nothing: the check and config commands, the tests of
 * one module, and a frontend with its admin listener off use it.
 *
 * Every label value is from a fixed list here, or from the configuration (a source's name, made
 * once per configured source): never a recipient, a mailbox or a client address, so the number of
 * series is bounded by the configuration. Counters are bound to their labels once, at start-up:
 * counting on the warm path is an increment of a number, with nothing allocated (issue 13).
 */

/** A counter bound to its labels. */
export interface Count {
  inc(by?: number): void;
}

/** A histogram bound to its labels: durations in seconds (Prometheus' base unit). */
export interface Timing {
  observe(seconds: number): void;
}

export type Face = 'policy' | 'milter';

/** The core's verdicts (core/verdict.ts VerdictKind; the checker's types make sure they agree). */
export const VERDICTS = ['under_quota', 'over_quota', 'too_large', 'unknown_mailbox', 'error', 'not_checked'] as const;
export type VerdictLabel = (typeof VERDICTS)[number];

/** Where an answer about one mailbox came from: shared is another lookup's answer, waited for. */
export const TIERS = ['memory', 'redis', 'shared', 'source'] as const;
export type Tier = (typeof TIERS)[number];

/** How one source lookup ended: a state (ok, unknown) or a SourceError code in lower case, without SOURCE_. */
export const LOOKUP_OUTCOMES = ['ok', 'unknown', 'timeout', 'unreachable', 'http_status', 'bad_answer', 'io', 'bad_key', 'busy', 'internal'] as const;
export type LookupOutcome = (typeof LOOKUP_OUTCOMES)[number];

/** The codes a face's decoder drops a client with (faces/policy/codec.ts, faces/milter/codec.ts), and our own trouble. */
export const PROTOCOL_ERROR_CODES: Record<Face, readonly string[]> = {
  policy: ['LINE_TOO_LONG', 'TOO_MANY_ATTRIBUTES', 'REQUEST_TOO_LARGE', 'MALFORMED_LINE', 'INTERNAL'],
  milter: ['LENGTH_ZERO', 'LENGTH_TOO_LARGE', 'MALFORMED_PACKET', 'UNKNOWN_COMMAND', 'OUT_OF_ORDER', 'MACROS_OVER_LIMIT', 'TRUNCATED', 'INTERNAL'],
};

/** The quota service's endpoints, as counted; any other path is "other". */
export const QUOTA_SERVICE_ENDPOINTS = ['quota', 'quota.cgi', 'quota.json', 'health', 'ready', 'metrics', 'invalidate', 'other'] as const;
export type QuotaServiceEndpoint = (typeof QUOTA_SERVICE_ENDPOINTS)[number];

/** One face's counts. */
export interface FaceCounts {
  decisions: Record<VerdictLabel, Count>;
  /** A client dropped for breaking the protocol; a code not in PROTOCOL_ERROR_CODES counts as INTERNAL. */
  protocolError(code: string): void;
}

/** One configured source's counts. */
export interface SourceCounts {
  lookups: Record<LookupOutcome, Count>;
  duration: Timing;
}

/** Mail on its way (cache/reservations.ts): made, and how they ended. */
export interface ReservationCounts {
  made: Count;
  /** A reading showed the message stored. */
  delivered: Count;
  /** reservations.ttl passed without a reading showing it. */
  expired: Count;
  /** Verdicts that mail on its way tipped to over quota. */
  tipped: Count;
}

export interface Metrics {
  /** Bound once per face at start-up. */
  face(face: Face): FaceCounts;
  /** Bound once per configured source at start-up (its series exist, at 0, from the start). */
  source(name: string): SourceCounts;
  /** Answers about one mailbox, by the tier that gave them. */
  answers: Record<Tier, Count>;
  /** Requests answered on_error because latency_budget ran out. */
  budgetExhausted: Count;
  /** Lookups that waited for another one of the same mailbox: in this process, or on another frontend (Redis lock). */
  singleFlightWaits: { process: Count; cluster: Count };
  /** Redis commands that failed or timed out (the answer then came without Redis). */
  redisErrors: Count;
  reservations: ReservationCounts;
  /** SIGHUP re-reads of the aliases and limits files. */
  reloads: { ok: Count; failed: Count };
  /** The quota service's requests, counted as they are answered. */
  quotaServiceRequest(endpoint: QuotaServiceEndpoint, status: number): void;
  /** Maildir recounts (directory scans) and their duration. */
  scans: Timing;
  /** Read when scraped: connections open now, per face. */
  openConnections(face: Face, read: () => number): void;
  /** Read when scraped: whether Redis is connected (1/0); not exported when Redis is not configured. */
  redisConnected(read: () => boolean): void;
  /** Read when scraped: quota lookups being answered by the quota service now. */
  lookupsInFlight(read: () => number): void;
}

const NOTHING: Count & Timing = { inc() {}, observe() {} };

function everyOne<K extends string>(keys: readonly K[]): Record<K, Count> {
  return Object.fromEntries(keys.map((k): [K, Count] => [k, NOTHING])) as Record<K, Count>;
}

/** Counts nothing: for commands and modules run without an exporter. */
export const NO_METRICS: Metrics = {
  face: () => ({ decisions: everyOne(VERDICTS), protocolError() {} }),
  source: () => ({ lookups: everyOne(LOOKUP_OUTCOMES), duration: NOTHING }),
  answers: everyOne(TIERS),
  budgetExhausted: NOTHING,
  singleFlightWaits: { process: NOTHING, cluster: NOTHING },
  redisErrors: NOTHING,
  reservations: { made: NOTHING, delivered: NOTHING, expired: NOTHING, tipped: NOTHING },
  reloads: { ok: NOTHING, failed: NOTHING },
  quotaServiceRequest() {},
  scans: NOTHING,
  openConnections() {},
  redisConnected() {},
  lookupsInFlight() {},
};

/** What an HTTP face serves at GET /metrics. */
export interface MetricsExport {
  contentType: string;
  text(): Promise<string>;
}
