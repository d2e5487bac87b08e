/*
 * A bounded memo of a pure function: each result kept by its argument, so the warm path computes
 * a thing once (a recipient's parse, a cache id, an encoded reply, an escaped string) instead of on
 * every request. The same few thousand recipients and a handful of replies come again and again;
 * a client sending endless new ones must not grow memory, so past `max` entries it starts over.
 * Measured where each is used (BENCHMARKS.md, hot path): a cache id built and hashed anew per
 * request was a third of a warm decision. A string key is kept detached() (below): the recipients
 * it memoises are cut from whole policy requests.
 */

/**
 * A copy of `s` that holds no other string in memory. V8 keeps a cut (String#slice of 13 or more
 * characters) as a pointer into the string it was cut from: a Postfix `instance` kept as a
 * reservation's name kept its whole request text (~700 bytes) alive with it. Measured with the
 * policy decoder and 100,000 distinct requests (node --expose-gc, 2026-11-30): their instances kept
 * in a Map held 76 MB of heap, detached 12 MB. Joined to another string, then cut, `s` is first
 * copied whole into a new flat string, which is all the result refers to. For what outlives its
 * request only: each call is a copy.
 */
export function detached(s: string): string {
  return ` ${s}`.slice(1);
}
export class Memo<K, V> {
  private readonly kept = new Map<K, V>();

  constructor(
    private readonly compute: (key: K) => V,
    private readonly max: number,
  ) {}

  get(key: K): V {
    let value = this.kept.get(key);
    if (value === undefined) {
      // What compute() cuts from a detached key (a recipient's parts) holds only that key.
      const own = (typeof key === 'string' ? detached(key) : key) as K;
      value = this.compute(own);
      if (this.kept.size >= this.max) this.kept.clear();
      this.kept.set(own, value);
    }
    return value;
  }
}
