/*
 * The cache in front of every quota source: memory -> Redis -> single-flight -> source.
 *
 * - memory: per process, bounded LRU; with Redis on, entries live at most cache.memory_ttl so
 *   another frontend's newer finding or an invalidation is seen soon.
 * - Redis (optional): shared by every frontend, TTL per state (ttl.ts).
 * - single-flight: concurrent lookups of one mailbox in this process share one promise; across
 *   frontends a short Redis lock lets one ask the source while the others wait for its answer.
 * Entries are keyed by source name and mailbox key, so one local part on two backends never
 * collides. It never caches an error, and never waits on a source longer than the timeout given;
 * Redis failing only costs the shared tier, never an answer.
 */
import type { QuotaSource, QuotaState } from '../sources/types.js';
import { SourceError } from '../sources/types.js';
import { MemoryCache } from './memory.js';
import { SingleFlight } from './single-flight.js';
import { ttlFor, type TtlPolicy } from './ttl.js';
import type { RedisTier } from './redis-tier.js';

/** hit: memory; redis: the shared tier; shared: another lookup's answer (here or on another frontend); miss: asked the source. */
export type CacheOutcome = 'hit' | 'redis' | 'shared' | 'miss';

export interface CachedLookup {
  state: QuotaState;
  cache: CacheOutcome;
}

export interface QuotaCacheOptions {
  maxEntries: number;
  ttl: TtlPolicy;
  /** Longest life of a memory entry while a Redis tier is present. */
  memoryTtlMs: number;
  redis?: RedisTier;
}

/** Cache ids remembered per source (a bound, like the recipient parser's). */
const MAX_REMEMBERED_IDS = 10_000;
/** Extra life of the cluster lock beyond the source timeout, so it never expires mid-lookup. */
const LOCK_MARGIN_MS = 100;
/** Time kept for our own source lookup when another frontend's lookup does not arrive. */
const OWN_LOOKUP_RESERVE_MS = 500;

export class QuotaCache {
  private readonly memory: MemoryCache<QuotaState>;
  private readonly flights = new SingleFlight<CachedLookup>();
  private readonly redis: RedisTier | undefined;
  /**
   * Bumped by every forget(): a lookup that started before an invalidation must not store its
   * (possibly stale) answer afterwards. Global rather than per mailbox: invalidations are rare,
   * and a skipped fill only costs one more lookup.
   */
  private generation = 0;

  constructor(private readonly opts: QuotaCacheOptions) {
    this.memory = new MemoryCache(opts.maxEntries);
    this.redis = opts.redis;
  }

  /** The memory tier alone, synchronously: the hot path of a warm cache. */
  peek(source: QuotaSource, key: string): QuotaState | undefined {
    return this.memory.get(this.idOf(source, key));
  }

  /*
   * cacheId(), remembered per source: the same few thousand mailboxes come again and again, and
   * a string built anew must be flattened and hashed on every Map lookup (measured: a third of a
   * warm decision). Keys come from the recipient parser's memo, so their hashes are kept too.
   */
  private readonly ids = new Map<QuotaSource, Map<string, string>>();

  private idOf(source: QuotaSource, key: string): string {
    let bySource = this.ids.get(source);
    if (bySource === undefined) {
      bySource = new Map();
      this.ids.set(source, bySource);
    }
    let id = bySource.get(key);
    if (id === undefined) {
      id = cacheId(source.name, key);
      if (bySource.size >= MAX_REMEMBERED_IDS) bySource.clear();
      bySource.set(key, id);
    }
    return id;
  }

  async lookup(source: QuotaSource, key: string, timeoutMs: number): Promise<CachedLookup> {
    const id = this.idOf(source, key);
    const cached = this.memory.get(id);
    if (cached) return { state: cached, cache: 'hit' };
    const { promise, shared } = this.flights.run(id, () => this.fill(source, key, id, timeoutMs));
    const result = await promise;
    return shared ? { state: result.state, cache: 'shared' } : result;
  }

  private async fill(source: QuotaSource, key: string, id: string, timeoutMs: number): Promise<CachedLookup> {
    const redis = this.redis;
    const generation = this.generation;
    if (!redis) {
      const state = await lookupWithTimeout(source, key, timeoutMs);
      if (generation === this.generation) this.memory.set(id, state, ttlFor(state, this.opts.ttl));
      return { state, cache: 'miss' };
    }
    const stored = await redis.get(id);
    if (stored) {
      if (generation === this.generation) this.remember(id, stored);
      return { state: stored, cache: 'redis' };
    }
    const deadline = Date.now() + timeoutMs;
    const lock = await redis.tryLock(id, timeoutMs + LOCK_MARGIN_MS);
    if (lock === false) {
      // Stop waiting early enough to ask the source ourselves if the lock holder died.
      const theirs = await redis.waitFor(id, deadline - Math.min(OWN_LOOKUP_RESERVE_MS, timeoutMs / 3));
      if (theirs) {
        if (generation === this.generation) this.remember(id, theirs);
        return { state: theirs, cache: 'shared' };
      }
    }
    try {
      if (lock) {
        // Another frontend may have stored its answer and let go of the lock between our first
        // read and our lock: read once more rather than ask the source twice (seen in the bench).
        const late = await redis.get(id);
        if (late) {
          if (generation === this.generation) this.remember(id, late);
          return { state: late, cache: 'redis' };
        }
      }
      const state = await lookupWithTimeout(source, key, Math.max(1, deadline - Date.now()));
      if (generation === this.generation) {
        this.remember(id, state);
        // Not awaited: a slow Redis must not delay the answer (its command timeout bounds it).
        void redis.set(id, state, ttlFor(state, this.opts.ttl), source.name);
      }
      return { state, cache: 'miss' };
    } finally {
      if (lock) void redis.unlock(id, lock);
    }
  }

  private remember(id: string, state: QuotaState): void {
    this.memory.set(id, state, Math.min(ttlFor(state, this.opts.ttl), this.opts.memoryTtlMs));
  }

  /** Forgets a mailbox here and in Redis, for each of the given sources. */
  async forget(key: string, sourceNames: string[]): Promise<void> {
    this.generation++;
    for (const name of sourceNames) {
      this.memory.delete(cacheId(name, key));
      this.flights.forget(cacheId(name, key));
    }
    await this.redis?.forget(sourceNames.map((name) => cacheId(name, key)));
  }

  /** forget(), then tell every other frontend to forget too. Returns whether the message went out. */
  async invalidate(key: string, sourceNames: string[]): Promise<boolean> {
    await this.forget(key, sourceNames);
    return (await this.redis?.publishInvalidation(key)) ?? false;
  }
}

export function cacheId(sourceName: string, key: string): string {
  return `${sourceName}|${key}`;
}

/** Aborts the source at the timeout and does not wait for a source that ignores its signal. */
export async function lookupWithTimeout(source: QuotaSource, key: string, timeoutMs: number): Promise<QuotaState> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new SourceError('SOURCE_TIMEOUT', `${source.name} did not answer within ${timeoutMs} ms`);
      controller.abort(err);
      reject(err);
    }, timeoutMs);
  });
  try {
    return await Promise.race([source.lookup(key, controller.signal), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
