/*
 * The insertion order of a Map that gives up its oldest entries first (the memory tier, the
 * reservations' mailboxes and transactions), kept beside it.
 *
 * Why not the Map's own order: V8 leaves a deleted entry in its table until the next rehash, and
 * an iteration from the start walks over every one of them, so keys().next() after many deletions
 * at the oldest end costs O(deleted). Measured (node 20, a 100,000-entry Map, add one and delete
 * the oldest): 17-90 µs a call; here ~0.1 µs. The milter bench lost three quarters of its rate
 * to it once the reservations' transactions reached their cap (bench/milter-wire.ts).
 *
 * Entries are never taken out when their Map entry goes: the owner says which are still current
 * (`isCurrent`, e.g. map.get(key) === value), and the rest are skipped when they come to the front,
 * or dropped when they pile up (past twice the owner's size). It never holds more than that plus
 * COMPACT_AT, whatever the churn.
 */

/** Stale entries tolerated before a compaction, whatever the owner's size. */
const COMPACT_AT = 1024;

export class Fifo<V> {
  private keys: string[] = [];
  private values: V[] = [];
  private head = 0;

  constructor(private readonly isCurrent: (key: string, value: V) => boolean) {}

  /** `key` was (re)set to `value`, the newest now; `live`: how many the owner holds. */
  push(key: string, value: V, live: number): void {
    this.keys.push(key);
    this.values.push(value);
    if (this.keys.length - this.head > 2 * live + COMPACT_AT) this.compact();
  }

  /** The oldest current entry's key (stale ones at the front are dropped on the way), or undefined. */
  oldest(): string | undefined {
    while (this.head < this.keys.length) {
      const key = this.keys[this.head]!;
      if (this.isCurrent(key, this.values[this.head]!)) return key;
      this.advance();
    }
    return undefined;
  }

  /** The oldest current entry's value, with oldest(). */
  oldestValue(): V | undefined {
    return this.oldest() === undefined ? undefined : this.values[this.head];
  }

  /** Forgets the entry at the front (after oldest()). */
  shift(): void {
    if (this.head < this.keys.length) this.advance();
  }

  /** Entries held, stale ones included (what the header bounds). */
  get held(): number {
    return this.keys.length - this.head;
  }

  clear(): void {
    [this.keys, this.values, this.head] = [[], [], 0];
  }

  private advance(): void {
    (this.values as (V | undefined)[])[this.head] = undefined;
    this.head++;
    // Past the half: the front is given back (amortised O(1) a call).
    if (this.head >= COMPACT_AT && this.head * 2 >= this.keys.length) {
      this.keys = this.keys.slice(this.head);
      this.values = this.values.slice(this.head);
      this.head = 0;
    }
  }

  private compact(): void {
    const [keys, values]: [string[], V[]] = [[], []];
    for (let i = this.head; i < this.keys.length; i++) {
      if (!this.isCurrent(this.keys[i]!, this.values[i]!)) continue;
      keys.push(this.keys[i]!);
      values.push(this.values[i]!);
    }
    [this.keys, this.values, this.head] = [keys, values, 0];
  }
}
