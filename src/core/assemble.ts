/*
 * Settings -> a ready decision core (router, cache tiers, checker). Shared by the frontend and the
 * check and invalidate commands, so they answer exactly as the running service would.
 *
 * It also keeps what /ready reports (readiness()): whether Redis is connected, and how each
 * source's last lookup went. A source whose last lookup failed within SOURCE_FAILURE_SHOWN_MS is
 * not ready; an older failure with no lookup since is still named ("timeout 75.0s ago, none
 * since") but no longer makes the frontend unready: a load balancer that takes an unready frontend
 * out of rotation would otherwise keep it out for good (no traffic, no lookup to clear it). A
 * source no lookup has asked yet says so and is ready (a fresh frontend must not wait for mail). A local store is asked, at each report
 * and all at once, whether its root can be read. A store that cannot be read at
 * start-up is a warning, not a refusal to start: the embedded defaults must start on a host
 * without /var/mail, and lookups then get on_error until it appears.
 */
import type { Logger } from 'pino';
import type { Settings } from '../config/schema.js';
import { QuotaCache } from '../cache/quota-cache.js';
import type { RedisConnection } from '../cache/redis-client.js';
import { RedisTier } from '../cache/redis-tier.js';
import { QuotaChecker } from './checker.js';
import { parseRecipient, type RecipientRules } from './recipient.js';
import { buildRouter } from '../sources/factory.js';
import { reloadLimits, type LimitsFile } from '../stores/limits.js';
import { AliasMap } from './aliases.js';
import type { Router } from '../sources/router.js';
import { healthOf, type QuotaSource } from '../quota.js';
import { NO_METRICS, type LookupOutcome, type Metrics, type SourceCounts } from '../runtime/metrics.js';

/** How long a failed lookup keeps its source "not ready" when no later lookup answered. */
export const SOURCE_FAILURE_SHOWN_MS = 60_000;

/** What /ready says of a source that no lookup has asked since start-up (ready: nothing is known against it). */
export const NOT_ASKED_YET = 'not asked yet';

/** What /ready says about the core. */
export interface CoreReadiness {
  ready: boolean;
  redis: 'up' | 'down' | 'off';
  /** By source name: "ok", "not asked yet", or what is wrong ("timeout 1.5s ago", "store root /var/mail cannot be read: ENOENT"). */
  sources: Record<string, string>;
}

export interface DecisionCore {
  checker: QuotaChecker;
  cache: QuotaCache;
  router: Router;
  rules: RecipientRules;
  /** The mailbox key of an address, or null when it is no address. */
  keyOf(address: string): string | null;
  /** Whether the shared tier is in use: "off" without redis.url, else whether it is connected now. */
  redisState(): 'up' | 'down' | 'off';
  /** Drops ADDRESS's mailbox from every tier of every frontend; null when it is no address we serve. */
  invalidate(address: string): Promise<{ key: string; published: boolean } | null>;
  /** The same for a mailbox key (as Dovecot's %u names it). */
  invalidateKey(key: string): Promise<{ key: string; published: boolean }>;
  /** Re-reads files that operators edit in place (limits, alias map); keeps the old contents on error. */
  reload(): Promise<void>;
  /** Redis and each source, for /ready. */
  readiness(): Promise<CoreReadiness>;
  /** Resolves once Redis is connected (true), or after timeoutMs or without Redis (false). */
  redisReady(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

/** @param opts.metrics what the core counts (the frontend's exporter); absent: nothing. */
export async function buildDecisionCore(settings: Settings, logger: Logger, opts: { subscribe: boolean; metrics?: Metrics }): Promise<DecisionCore> {
  const metrics = opts.metrics ?? NO_METRICS;
  const limitsFiles: LimitsFile[] = [];
  const router = await buildRouter(settings, limitsFiles);
  const watched = watchSources(router.sources(), metrics);
  // Not awaited: a hung mount must not hold start-up (in spawn mode, every SMTP session's).
  for (const source of router.sources()) {
    void healthOf(source).then((unreadable) => {
      if (unreadable) logger.warn({ source: source.name, reason: unreadable }, 'the mail store cannot be read: its lookups get the on_error reply until it can (GET /ready says so)');
    });
  }
  const connections: RedisConnection[] = [];
  let redis: RedisTier | undefined;
  // ioredis (and undici, in sources/factory.ts) are loaded only when configured: together they
  // are ~26 MB of a frontend's resident memory (BENCHMARKS.md, RSS).
  const redisClient = settings.redis.url ? await import('../cache/redis-client.js') : null;
  const connectRedis = redisClient?.connectRedis ?? null;
  if (connectRedis) {
    const conn = connectRedis(settings.redis, logger, 'overquota');
    connections.push(conn);
    redis = new RedisTier(conn, settings.redis.prefix, logger, metrics.redisErrors);
  }
  const cache = new QuotaCache({
    maxEntries: settings.cache.max_entries,
    ttl: settings.cache.ttl,
    memoryTtlMs: redis ? settings.cache.memory_ttl : Number.MAX_SAFE_INTEGER,
    redis,
    reservations: settings.reservations.enabled ? { ttlMs: settings.reservations.ttl, counts: metrics.reservations } : undefined,
    watch: watched.watch,
    waits: metrics.singleFlightWaits,
  });
  const sourceNames = router.sources().map((s) => s.name);
  if (redis && connectRedis && opts.subscribe) {
    const subscriber = connectRedis(settings.redis, logger.child({ role: 'invalidation' }), 'overquota-sub');
    connections.push(subscriber);
    redis.subscribe(subscriber, (key) => {
      logger.info({ mailbox: key }, 'invalidation received');
      void cache.forget(key, sourceNames);
    });
  }
  const rules: RecipientRules = {
    delimiters: settings.recipient.delimiter,
    lowercaseLocalPart: settings.recipient.lowercase_local_part,
    keyTemplate: settings.recipient.mailbox_key,
  };
  const aliases = settings.aliases.file ? new AliasMap(settings.aliases.file) : null;
  await aliases?.load();
  const checker = new QuotaChecker(router, cache, {
    aliases: aliases ? { map: aliases, deferWhen: settings.aliases.defer_when } : undefined,
    rules,
    replies: settings.replies,
    dryRun: settings.dry_run,
    latencyBudgetMs: settings.latency_budget,
    sourceTimeoutMs: settings.source.timeout,
    counts: { answers: metrics.answers, budgetExhausted: metrics.budgetExhausted, tipped: metrics.reservations.tipped },
  });
  const redisState = (): 'up' | 'down' | 'off' => {
    const conn = connections[0];
    return conn ? (conn.status === 'ready' ? 'up' : 'down') : 'off';
  };
  if (connections[0]) metrics.redisConnected(() => redisState() === 'up');
  return {
    checker,
    cache,
    router,
    rules,
    keyOf(address) {
      return parseRecipient(address, rules)?.key ?? null;
    },
    redisState,
    async readiness() {
      const redis = redisState();
      const { sources, failing } = await watched.report();
      return { ready: redis !== 'down' && !failing, redis, sources };
    },
    async invalidate(address) {
      const recipient = parseRecipient(address, rules);
      if (!recipient) return null;
      return { key: recipient.key, published: await cache.invalidate(recipient.key, sourceNames) };
    },
    async invalidateKey(key) {
      return { key, published: await cache.invalidate(key, sourceNames) };
    },
    async reload() {
      // Cached figures keep the limit they were found with until their TTL runs out.
      for (const limits of limitsFiles) (await reloadLimits(limits, logger) ? metrics.reloads.ok : metrics.reloads.failed).inc();
      if (!aliases) return;
      try {
        await aliases.load();
        metrics.reloads.ok.inc();
        logger.info({ file: aliases.path, entries: aliases.size }, 'alias map reloaded');
      } catch (err) {
        metrics.reloads.failed.inc();
        logger.error({ file: aliases.path, error: (err as Error).message }, 'alias map not reloaded: the previous one stays in use');
      }
    },
    async redisReady(timeoutMs) {
      const conn = connections[0];
      if (!conn) return false;
      if (conn.status === 'ready') return true;
      return new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs);
        conn.once('ready', () => {
          clearTimeout(timer);
          resolve(true);
        });
      });
    },
    async close() {
      await Promise.all(router.sources().map((s) => s.close()));
      for (const c of connections) redisClient?.closeRedis(c);
    },
  };
}

/** How each source's lookups go: counted for the metrics, and the last one kept for /ready. */
function watchSources(sources: QuotaSource[], metrics: Metrics) {
  // The last lookup's outcome (null: none yet) and when: fields set in place, nothing made per lookup.
  const bySource = new Map<QuotaSource, { counts: SourceCounts; last: LookupOutcome | null; at: number }>();
  // Bound once per source: their series exist, at 0, from the start (rate() and alerts need them).
  for (const source of sources) bySource.set(source, { counts: metrics.source(source.name), last: null, at: 0 });
  return {
    watch(source: QuotaSource, outcome: LookupOutcome, seconds: number): void {
      const s = bySource.get(source);
      if (!s) return;
      s.counts.lookups[outcome].inc();
      s.counts.duration.observe(seconds);
      // A key the source cannot take (a client's ../x) says nothing of the source's health.
      if (outcome === 'bad_key') return;
      s.last = outcome;
      s.at = Date.now();
    },
    /** By source name: "ok", "not asked yet", or what is wrong now; failing when any is wrong. Stores are asked all at once. */
    async report(): Promise<{ sources: Record<string, string>; failing: boolean }> {
      const said = await Promise.all(
        [...bySource].map(async ([source, s]): Promise<[string, string, boolean]> => {
          const unreadable = await healthOf(source);
          if (unreadable) return [source.name, unreadable, true];
          if (s.last === null) return [source.name, NOT_ASKED_YET, false];
          if (s.last === 'ok' || s.last === 'unknown') return [source.name, 'ok', false];
          const ago = Date.now() - s.at;
          if (ago >= SOURCE_FAILURE_SHOWN_MS) return [source.name, `${s.last} ${(ago / 1000).toFixed(1)}s ago, none since`, false];
          return [source.name, `${s.last} ${(ago / 1000).toFixed(1)}s ago`, true];
        }),
      );
      return { sources: Object.fromEntries(said.map(([name, says]) => [name, says])), failing: said.some(([, , wrong]) => wrong) };
    },
  };
}
