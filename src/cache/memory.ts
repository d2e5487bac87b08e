/*
 * The memory tier: process-local, bounded, a TTL per entry, the oldest insertion evicted first
 * (FIFO with TTLs, not LRU).
 *
 * The insertion order is kept beside the Map (fifo.ts: reaching the oldest end of a Map that
 * has deleted many there costs O(deleted) in V8), so eviction is O(1). A hit does not
 * move its entry (that would cost a delete and an insert on the hottest path, and entries live for
 * seconds anyway). It must never grow past maxEntries, nor keep what has expired: each set() drops
 * expired entries from the oldest end (a mailbox asked once is never looked up again to drop it).
 */

import { Fifo } from './fifo.js';

/**
 * Expired entries dropped from the oldest end per set(), at most. More than one, so the cache
 * shrinks back when fewer mailboxes are asked. An expired entry stays at most until every entry set
 * before it has expired too (the longest TTL). Measured (bench/soak.ts, Redis on, Zipf over 100k
 * mailboxes): without it the 2 s memory tier held 52k entries after 3 minutes, bound only by
 * max_entries (100k); with it, about what was set in the last 2 s.
 */
const SWEEP_PER_SET = 2;

/*
 * The clock read once a millisecond at most, as lru-cache reads its own (ttlResolution): reading
 * Date.now() on every get was half of a get. Measured (3,000,000 warm gets over 10,000 keys in
 * one loop, Node 20, the same loop for both): 130-140 ns a get with Date.now() per get, 58-67 ns
 * with this clock, lru-cache 11 (ttl) 55-74 ns. TTLs are seconds: a millisecond late is nothing. Hand-written rather than lru-cache for the
 * sweep of expired entries on set() (lru-cache drops them only when asked or evicted, or with a
 * timer per entry) and shorten(), the two things the tiers need that it does not do in one call.
 */
let cachedNow: number | undefined;
/** Date.now() read once a millisecond at most (also the reservations' clock). */
export function coarseNow(): number {
  if (cachedNow === undefined) {
    cachedNow = Date.now();
    setTimeout(() => (cachedNow = undefined), 1).unref();
  }
  return cachedNow;
}

export interface CacheEntry<T> {
  value: T;
  expiresAt: number;
}

export class MemoryCache<T> {
  private readonly entries = new Map<string, CacheEntry<T>>();
  /** Oldest first: eviction and the sweep look here, not at the Map's own order (fifo.ts says why). */
  private readonly order = new Fifo<CacheEntry<T>>((key, entry) => this.entries.get(key) === entry);

  constructor(
    private readonly maxEntries: number,
    private readonly now: () => number = coarseNow,
  ) {}

  get(key: string): T | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key: string, value: T, ttlMs: number): void {
    if (ttlMs <= 0 || this.maxEntries === 0) return;
    const now = this.now();
    const entry = { value, expiresAt: now + ttlMs };
    this.entries.set(key, entry);
    this.order.push(key, entry, this.entries.size);
    if (this.entries.size > this.maxEntries) {
      const oldest = this.order.oldest();
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    for (let n = SWEEP_PER_SET; n > 0; n--) {
      const k = this.order.oldest();
      if (k === undefined || this.order.oldestValue()!.expiresAt > now) break;
      this.entries.delete(k);
    }
  }

  /** The entry expires within ms at the latest (never later than it would have). */
  shorten(key: string, ms: number): void {
    const entry = this.entries.get(key);
    if (entry) entry.expiresAt = Math.min(entry.expiresAt, this.now() + ms);
  }

  delete(key: string): boolean {
    return this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
    this.order.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
