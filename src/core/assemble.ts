/*
 * Settings -> a ready decision core (router, cache tiers, checker). Shared by the frontend and the
 * check and invalidate commands, so they answer exactly as the running service would.
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
  /** Resolves once Redis is connected (true), or after timeoutMs or without Redis (false). */
  redisReady(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

export async function buildDecisionCore(settings: Settings, logger: Logger, opts: { subscribe: boolean }): Promise<DecisionCore> {
  const limitsFiles: LimitsFile[] = [];
  const router = await buildRouter(settings, limitsFiles);
  const connections: RedisConnection[] = [];
  let redis: RedisTier | undefined;
  // ioredis (and undici, in sources/factory.ts) are loaded only when configured: together they
  // are ~26 MB of a frontend's resident memory (BENCHMARKS.md, RSS).
  const redisClient = settings.redis.url ? await import('../cache/redis-client.js') : null;
  const connectRedis = redisClient?.connectRedis ?? null;
  if (connectRedis) {
    const conn = connectRedis(settings.redis, logger, 'overquota');
    connections.push(conn);
    redis = new RedisTier(conn, settings.redis.prefix, logger);
  }
  const cache = new QuotaCache({
    maxEntries: settings.cache.max_entries,
    ttl: settings.cache.ttl,
    memoryTtlMs: redis ? settings.cache.memory_ttl : Number.MAX_SAFE_INTEGER,
    redis,
    reservations: settings.reservations.enabled ? { ttlMs: settings.reservations.ttl } : undefined,
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
  });
  return {
    checker,
    cache,
    router,
    rules,
    keyOf(address) {
      return parseRecipient(address, rules)?.key ?? null;
    },
    redisState() {
      const conn = connections[0];
      return conn ? (conn.status === 'ready' ? 'up' : 'down') : 'off';
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
      for (const limits of limitsFiles) await reloadLimits(limits, logger);
      if (!aliases) return;
      try {
        await aliases.load();
        logger.info({ file: aliases.path, entries: aliases.size }, 'alias map reloaded');
      } catch (err) {
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
