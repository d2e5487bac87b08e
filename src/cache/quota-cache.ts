/*
 * The cache in front of every quota source: memory tier, then single-flight to the source.
 *
 * This is the seam for the shared Redis tier (memory -> Redis -> single-flight -> source). Entries
 * are keyed by source name and mailbox key, so one local part on two backends never collides.
 * It must never cache an error, and never wait on a source longer than the timeout it is given.
 */
import type { QuotaSource, QuotaState } from '../sources/types.js';
import { SourceError } from '../sources/types.js';
import { MemoryCache } from './memory.js';
import { SingleFlight } from './single-flight.js';
import { ttlFor, type TtlPolicy } from './ttl.js';

export type CacheOutcome = 'hit' | 'miss' | 'shared';

export interface CachedLookup {
  state: QuotaState;
  cache: CacheOutcome;
}

export class QuotaCache {
  private readonly memory: MemoryCache<QuotaState>;
  private readonly flights = new SingleFlight<QuotaState>();

  constructor(
    maxEntries: number,
    private readonly ttl: TtlPolicy,
  ) {
    this.memory = new MemoryCache(maxEntries);
  }

  async lookup(source: QuotaSource, key: string, timeoutMs: number): Promise<CachedLookup> {
    const cacheKey = `${source.name}\0${key}`;
    const cached = this.memory.get(cacheKey);
    if (cached) return { state: cached, cache: 'hit' };
    const { promise, shared } = this.flights.run(cacheKey, async () => {
      const state = await lookupWithTimeout(source, key, timeoutMs);
      this.memory.set(cacheKey, state, ttlFor(state, this.ttl));
      return state;
    });
    return { state: await promise, cache: shared ? 'shared' : 'miss' };
  }

  /** Forgets a mailbox on every source (the key alone is known to an operator). */
  invalidate(key: string): void {
    this.memory.deleteWhere((cacheKey) => cacheKey.endsWith(`\0${key}`));
  }
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
