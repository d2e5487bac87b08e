/*
 * The cache in front of every quota source: memory -> Redis -> single-flight -> source.
 *
 * - memory: per process, bounded (the oldest insertion goes first when full) with a TTL per entry
 *   (memory.ts); with Redis on, entries live at most cache.memory_ttl so another frontend's newer
 *   finding or an invalidation is seen soon.
 * - reservations: what was accepted and is on its way (reservations.ts): in Redis, or here when
 *   Redis does not take them (then what Redis took from this process is recalled here first).
 * - Redis (optional): shared by every frontend, TTL per state (ttl.ts).
 * - single-flight: concurrent lookups of one mailbox in this process share one promise; across
 *   frontends a short Redis lock lets one ask the source while the others wait for its answer.
 * Entries are keyed by source name and mailbox key, so one local part on two backends never
 * collides. It never caches an error, and never waits on a source longer than the timeout given;
 * Redis failing only costs the shared tier, never an answer.
 * Past 300 lines, kept whole: one reading's way (memory, Redis, the cluster lock, the source) and
 * what may change it (invalidation marking a fill stale, reservations reconciled with the reading)
 * share the fills in flight and the memory tier; split, each half would reach into the other's.
 */
import type { MailboxQuota, QuotaSource, QuotaState, SourceErrorCode } from '../quota.js';
import { SourceError } from '../quota.js';
import { MemoryCache } from './memory.js';
import { SingleFlight } from './single-flight.js';
import { ttlFor, type TtlPolicy } from './ttl.js';
import type { RedisTier } from './redis-tier.js';
import type { SharedReservation } from './redis-reservations.js';
import { LocalReservations, MAX_RESERVATIONS_PER_MAILBOX, NOTHING_PENDING, type Pending } from './reservations.js';
import { Memo } from '../runtime/memo.js';
import type { Count, LookupOutcome, ReservationCounts } from '../runtime/metrics.js';

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
  /** Count what was accepted and not yet seen stored (reservations.ts); absent: off. */
  reservations?: { ttlMs: number; counts?: ReservationCounts };
  /** Told of every source lookup: how it ended and how long it took (metrics, /ready). */
  watch?: LookupWatcher;
  /** Lookups that waited for another one of the same mailbox, here or on another frontend. */
  waits?: { process: Count; cluster: Count };
}

export type LookupWatcher = (source: QuotaSource, outcome: LookupOutcome, seconds: number) => void;

/** A source's failure, as counted (runtime/metrics.ts LOOKUP_OUTCOMES). */
const OUTCOME: Record<SourceErrorCode, LookupOutcome> = {
  SOURCE_TIMEOUT: 'timeout',
  SOURCE_UNREACHABLE: 'unreachable',
  SOURCE_HTTP_STATUS: 'http_status',
  SOURCE_BAD_ANSWER: 'bad_answer',
  SOURCE_IO: 'io',
  SOURCE_BAD_KEY: 'bad_key',
  SOURCE_BUSY: 'busy',
};

/** A reservation made: `shared` is what Redis said (null without Redis, or when it did not answer). */
export interface Reserved {
  added: boolean;
  shared: SharedReservation | null;
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
   * The fills in flight, by cache id: forget() marks a mailbox's fill stale, so an answer read
   * before an invalidation is not stored after it. Per mailbox: an invalidation of one mailbox
   * (or of a key nobody has) must not throw away the lookups of all the others (issue 11: 300
   * invalidations a second of a nonexistent key used to switch caching off for every mailbox).
   */
  private readonly filling = new Map<string, { stale: boolean }>();
  readonly reservations: LocalReservations | null;

  constructor(private readonly opts: QuotaCacheOptions) {
    this.memory = new MemoryCache(opts.maxEntries);
    this.redis = opts.redis;
    const local = opts.reservations ? new LocalReservations(opts.reservations.ttlMs, Math.max(1, opts.maxEntries), undefined, opts.reservations.counts) : null;
    this.reservations = local;
    // Recalled when Redis goes, not at the next RCPT: a Redis that restarts empty in between
    // would otherwise have lost them for good.
    if (local !== null) opts.redis?.whenLost(() => this.counting(local));
  }

  /** The memory tier alone, synchronously: the hot path of a warm cache. */
  peek(source: QuotaSource, key: string): QuotaState | undefined {
    return this.memory.get(this.idOf(source, key));
  }

  /** peek() by cache id (idOf()), for a caller that needs the id again. */
  peekId(id: string): QuotaState | undefined {
    return this.memory.get(id);
  }

  /*
   * cacheId(), remembered per source: the same few thousand mailboxes come again and again, and
   * a string built anew must be flattened and hashed on every Map lookup (measured: a third of a
   * warm decision). Keys come from the recipient parser's memo, so their hashes are kept too.
   */
  private readonly ids = new Map<QuotaSource, Memo<string, string>>();

  idOf(source: QuotaSource, key: string): string {
    let bySource = this.ids.get(source);
    if (bySource === undefined) {
      bySource = new Memo((k) => cacheId(source.name, k), MAX_REMEMBERED_IDS);
      this.ids.set(source, bySource);
    }
    return bySource.get(key);
  }

  async lookup(source: QuotaSource, key: string, timeoutMs: number): Promise<CachedLookup> {
    const id = this.idOf(source, key);
    const cached = this.memory.get(id);
    if (cached) return { state: cached, cache: 'hit' };
    const { promise, shared } = this.flights.run(id, () => this.fill(source, key, id, timeoutMs));
    if (shared) this.opts.waits?.process.inc();
    const result = await promise;
    return shared ? { state: result.state, cache: 'shared' } : result;
  }

  private async fill(source: QuotaSource, key: string, id: string, timeoutMs: number): Promise<CachedLookup> {
    const fill = { stale: false };
    this.filling.set(id, fill);
    try {
      return await this.fillOnce(source, key, id, timeoutMs, fill);
    } finally {
      if (this.filling.get(id) === fill) this.filling.delete(id);
    }
  }

  private async fillOnce(source: QuotaSource, key: string, id: string, timeoutMs: number, fill: { stale: boolean }): Promise<CachedLookup> {
    const redis = this.redis;
    if (!redis) {
      const state = await this.ask(source, key, timeoutMs);
      if (!fill.stale) {
        this.memory.set(id, state, ttlFor(state, this.opts.ttl));
        if (state.kind === 'found') this.reservations?.reconcile(id, state);
      }
      return { state, cache: 'miss' };
    }
    const stored = await redis.get(id);
    if (stored) {
      if (!fill.stale) this.remember(id, stored);
      return { state: stored, cache: 'redis' };
    }
    const deadline = Date.now() + timeoutMs;
    const lock = await redis.tryLock(id, timeoutMs + LOCK_MARGIN_MS);
    if (lock === false) {
      this.opts.waits?.cluster.inc();
      // Stop waiting early enough to ask the source ourselves if the lock holder died.
      const theirs = await redis.waitFor(id, deadline - Math.min(OWN_LOOKUP_RESERVE_MS, timeoutMs / 3));
      if (theirs) {
        if (!fill.stale) this.remember(id, theirs);
        return { state: theirs, cache: 'shared' };
      }
    }
    try {
      if (lock) {
        // Another frontend may have stored its answer and let go of the lock between our first
        // read and our lock: read once more rather than ask the source twice (seen in the bench).
        const late = await redis.get(id);
        if (late) {
          if (!fill.stale) this.remember(id, late);
          return { state: late, cache: 'redis' };
        }
      }
      const readAt = Date.now();
      const state = await this.ask(source, key, Math.max(1, deadline - Date.now()));
      if (!fill.stale) {
        this.remember(id, state);
        if (state.kind === 'found' && this.reservations) void redis.reservations.reconcile(id, state, readAt).then((n) => this.opts.reservations!.counts?.delivered.inc(n));
        // Not awaited: a slow Redis must not delay the answer (its command timeout bounds it).
        void redis.set(id, state, ttlFor(state, this.opts.ttl), source.name);
      }
      return { state, cache: 'miss' };
    } finally {
      if (lock) void redis.unlock(id, lock);
    }
  }

  /** The source itself, timed and its outcome told to the watcher. */
  private async ask(source: QuotaSource, key: string, timeoutMs: number): Promise<QuotaState> {
    const watch = this.opts.watch;
    if (!watch) return lookupWithTimeout(source, key, timeoutMs);
    const began = performance.now();
    try {
      const state = await lookupWithTimeout(source, key, timeoutMs);
      watch(source, state.kind === 'found' ? 'ok' : 'unknown', (performance.now() - began) / 1000);
      return state;
    } catch (err) {
      watch(source, err instanceof SourceError ? OUTCOME[err.code] : 'internal', (performance.now() - began) / 1000);
      throw err;
    }
  }

  /** A reading taken in (from Redis or the source): kept, and this process's reservations reconciled with it. */
  private remember(id: string, state: QuotaState): void {
    this.memory.set(id, state, Math.min(ttlFor(state, this.opts.ttl), this.opts.memoryTtlMs));
    if (state.kind === 'found') this.reservations?.reconcile(id, state);
  }

  /** What is on its way to mailbox `id`, as this process knows it, except transaction `txn`'s own. */
  pending(id: string, txn: string | null): Pending {
    const local = this.reservations;
    if (local === null) return NOTHING_PENDING;
    return (this.redisTook && !this.redis?.up ? this.counting(local) : local).pending(id, txn);
  }

  /**
   * Transaction `txn` was accepted for mailbox `id` (judged on `state`). Answered at once without
   * Redis; with Redis, once Redis has added it atomically and said what every frontend has pending,
   * or after `waitMs` (what is left of the request's budget) as if Redis had not answered: a
   * frozen Redis held the answer for its whole command timeout, past the budget (fault matrix).
   */
  reserve(id: string, txn: string, bytes: number, state: MailboxQuota, waitMs: number): Reserved | Promise<Reserved> {
    const local = this.reservations;
    if (local === null) return NOT_ADDED_HERE;
    const redis = this.redis;
    if (!redis?.up) return this.reserveHere(local, id, txn, bytes, state) ? ADDED_HERE : NOT_ADDED_HERE;
    const shared = redis.reservations.reserve(id, txn, bytes, state, this.opts.reservations!.ttlMs, MAX_RESERVATIONS_PER_MAILBOX);
    return orAfter(shared, waitMs, LATE).then((r) => {
      // Redis failed: it takes none now, so what it took is recalled and this is counted here.
      if (r === null) return { added: this.reserveHere(local, id, txn, bytes, state), shared: null };
      // Not within the budget: Redis may still take it, so nothing is recalled (a slow answer is no
      // outage), but it is counted here too, so that other RCPTs waiting on a slow Redis count it.
      if (r === LATE) return { added: local.reserve(id, txn, bytes, state), shared: null };
      // Redis holds it and decides; here only the transaction (reservations.ts header).
      local.note(id, txn, bytes);
      this.redisTook = true;
      if (r.added) this.opts.reservations!.counts?.made.inc();
      return { added: r.added, shared: r };
    });
  }

  /**
   * Since the last recall, Redis took reservations that this process does not count: when it stops
   * taking them, they are recalled (reservations.ts recall()) before anything is counted here.
   */
  private redisTook = false;

  /** The process-local store, with what Redis took recalled first if Redis has stopped taking them. */
  private counting(local: LocalReservations): LocalReservations {
    if (this.redisTook) {
      this.redisTook = false;
      local.recall();
    }
    return local;
  }

  private reserveHere(local: LocalReservations, id: string, txn: string, bytes: number, state: MailboxQuota): boolean {
    return this.counting(local).reserve(id, txn, bytes, state);
  }

  /** Every frontend's reservations for `id`, from Redis; null without Redis (or while it is away). */
  sharedPending(id: string): Promise<SharedReservation | null> | null {
    return this.redis?.up && this.reservations ? this.redis.reservations.peek(id) : null;
  }

  /** The reservation of `txn` for `id` goes (it was made and the recipient then refused). */
  release(id: string, txn: string): void {
    this.reservations?.release(id, txn);
    void this.redis?.reservations.release(id, txn);
  }

  /** The message of transaction `txn` was given up before its end: its reservations go. */
  giveUp(txn: string): void {
    for (const id of this.reservations?.releaseTransaction(txn) ?? []) void this.redis?.reservations.release(id, txn);
  }

  /** The real size of transaction `txn`'s message, known at its end. */
  messageSize(txn: string, bytes: number): void {
    for (const id of this.reservations?.resize(txn, bytes) ?? []) void this.redis?.reservations.resize(id, txn, bytes);
  }

  /**
   * Reservations tipped a verdict for `id`: read the mailbox again soon (within near_limit), since
   * only a fresh reading shows which of them were delivered. Bounds false defers to that window.
   */
  readSoon(id: string): void {
    this.memory.shorten(id, this.opts.ttl.near_limit);
    void this.redis?.expireSoon(id, this.opts.ttl.near_limit);
  }

  /** Forgets a mailbox (its state and its reservations) here and in Redis, for each of the given sources. */
  async forget(key: string, sourceNames: string[]): Promise<void> {
    for (const name of sourceNames) {
      const filling = this.filling.get(cacheId(name, key));
      if (filling) filling.stale = true;
      this.memory.delete(cacheId(name, key));
      this.flights.forget(cacheId(name, key));
      this.reservations?.forget(cacheId(name, key));
    }
    await this.redis?.forget(sourceNames.map((name) => cacheId(name, key)));
  }

  /** forget(), then tell every other frontend to forget too. Returns whether the message went out. */
  async invalidate(key: string, sourceNames: string[]): Promise<boolean> {
    await this.forget(key, sourceNames);
    return (await this.redis?.publishInvalidation(key)) ?? false;
  }
}

/** What orAfter() answers when Redis did not within the budget. */
const LATE = Symbol('late');

/** The two answers of reserve() without Redis, made once: the warm path allocates nothing for them. */
const ADDED_HERE: Reserved = Object.freeze({ added: true, shared: null });
const NOT_ADDED_HERE: Reserved = Object.freeze({ added: false, shared: null });

export function cacheId(sourceName: string, key: string): string {
  return `${sourceName}|${key}`;
}

/** What `p` gives, or `fallback` once `ms` have passed (the timer does not outlive the race). */
function orAfter<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<F>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
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
