/*
 * Process-local cache tier: bounded, a TTL per entry, the oldest insertion evicted first.
 *
 * Map keeps insertion order, so the oldest entry is always first: eviction is O(1). A hit does not
 * move its entry (that would cost a delete and an insert on the hottest path, and entries live for
 * seconds anyway). It must never grow past maxEntries.
 */

export interface CacheEntry<T> {
  value: T;
  expiresAt: number;
}

export class MemoryCache<T> {
  private readonly entries = new Map<string, CacheEntry<T>>();

  constructor(
    private readonly maxEntries: number,
    private readonly now: () => number = Date.now,
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
    this.entries.delete(key);
    this.entries.set(key, { value, expiresAt: this.now() + ttlMs });
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
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
  }

  get size(): number {
    return this.entries.size;
  }
}
