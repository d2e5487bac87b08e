/*
 * Process-local single-flight: concurrent lookups of one key share one promise.
 *
 * A burst of RCPTs for one mailbox (a mailing list fan-out) must cost the backend one request.
 * The entry is removed when the promise settles, success or failure, so a failure is never reused.
 */

export class SingleFlight<T> {
  private readonly inFlight = new Map<string, Promise<T>>();

  /** Runs fn for key unless a run is already under way; `shared` says whether we joined one. */
  run(key: string, fn: () => Promise<T>): { promise: Promise<T>; shared: boolean } {
    const existing = this.inFlight.get(key);
    if (existing) return { promise: existing, shared: true };
    const promise: Promise<T> = fn().finally(() => {
      // Only our own entry: forget() may have replaced it with a newer run meanwhile.
      if (this.inFlight.get(key) === promise) this.inFlight.delete(key);
    });
    this.inFlight.set(key, promise);
    return { promise, shared: false };
  }

  /** New callers start a fresh run; those already waiting keep theirs. */
  forget(key: string): void {
    this.inFlight.delete(key);
  }

  get size(): number {
    return this.inFlight.size;
  }
}
