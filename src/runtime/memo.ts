/*
 * A bounded memo of a pure function: each result kept by its argument, so the warm path computes
 * a thing once (a recipient's parse, a cache id, an encoded reply, an escaped string) instead of on
 * every request. The same few thousand recipients and a handful of replies come again and again;
 * a client sending endless new ones must not grow memory, so past `max` entries it starts over.
 * Measured where each is used (BENCHMARKS.md, hot path): a cache id built and hashed anew per
 * request was a third of a warm decision.
 */
export class Memo<K, V> {
  private readonly kept = new Map<K, V>();

  constructor(
    private readonly compute: (key: K) => V,
    private readonly max: number,
  ) {}

  get(key: K): V {
    let value = this.kept.get(key);
    if (value === undefined) {
      value = this.compute(key);
      if (this.kept.size >= this.max) this.kept.clear();
      this.kept.set(key, value);
    }
    return value;
  }
}
