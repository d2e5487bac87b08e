/*
 * Reservations: what this frontend accepted for a mailbox and the backend has not yet shown stored.
 *
 * Why: a cached reading says "room for 3 messages"; without reservations every RCPT of a burst is
 * judged against that same reading and all 20 are accepted (17 then bounce: issue 10). An accepted
 * recipient with a known size adds its bytes (and one message) to the mailbox's pending total, and
 * the verdict counts usage + pending + size (core/verdict.ts).
 *
 * A reservation leaves:
 * - when a later reading of the mailbox has grown by it: readings are compared with the reading
 *   the pending total is relative to (the "base"), and the oldest reservations the growth covers
 *   are dropped (by message count when the source counts messages, else by bytes). A message held
 *   in a queue does not show as growth, so it keeps counting: the held-queue case of issue 10;
 * - after the TTL (reservations.ttl): a transaction that failed after RCPT (a phantom) never shows;
 * - when the message's transaction is given up (milter ABORT before end of message), or deferred;
 * - when the mailbox is invalidated (overquota invalidate / notify, the admin endpoint).
 * One reservation per transaction and mailbox: Postfix's `instance` names the transaction, so two
 * RCPTs of one message that reach one mailbox (aliases, user+a and user+b) reserve once.
 *
 * This is the process-local store: all there is without Redis, and what counts while Redis is away.
 * While Redis takes them the shared copy (redis-reservations.ts) holds the reservations and decides,
 * and this store keeps only the last MAX_TRANSACTIONS transactions (note(): their mailboxes, size
 * and expiry), which end of message and ABORT need: ~370 bytes a reservation instead of ~900 when
 * a copy of each was kept here too (test/reservations.test.ts; bench/soak.ts at 2,000 requests/s:
 * those copies were the memory that grew, +13.5 MB per 10 minutes). When Redis stops taking them
 * (the connection lost, or a command failed), recall() makes those transactions count here again,
 * so mail accepted before is still counted in the outage. Which of it was delivered before the
 * recall is not known here (the first reading after it becomes the base): that counts until
 * reservations.ttl after its RCPT, or until later growth drops it in place of newer mail.
 * It must never grow without bound: mailboxes, reservations per mailbox and transactions are
 * capped, and what has expired goes even for a mailbox that is never asked again (sweep()).
 */
import type { MailboxQuota } from '../quota.js';
import { NO_METRICS, type ReservationCounts } from '../runtime/metrics.js';
import { Fifo } from './fifo.js';
import { coarseNow } from './memory.js';
import { detached } from '../runtime/memo.js';

export interface Pending {
  bytes: number;
  messages: number;
}

export const NOTHING_PENDING: Pending = Object.freeze({ bytes: 0, messages: 0 });

/** The reading a mailbox's pending total is relative to. */
export interface Base {
  usageBytes: number;
  usageMessages: number | null;
}

/** No reading known (recall()): a reading grows from it by nothing, and becomes the base. */
const NO_BASE: Base = Object.freeze({ usageBytes: Number.MAX_SAFE_INTEGER, usageMessages: null });

/** A transaction as remembered: its name as kept, the mailboxes it reached, its message's size, when it expires. */
interface Transaction {
  name: string;
  ids: string[];
  bytes: number;
  expiresAt: number;
}

/** A mailbox with more messages than this on their way is full by any real limit; the oldest go first. */
export const MAX_RESERVATIONS_PER_MAILBOX = 1000;
/**
 * Transactions remembered for end of message (the real size), ABORT and recall(); past it the oldest
 * go first. END-OF-MESSAGE comes at the end of DATA, seconds after the RCPT: 10,000 is 10 s at the
 * soak's 1,000 transactions/s, and minutes at one frontend's share of a large site (50 RCPT/s,
 * README "Sizing"). One older than that keeps its SIZE= figure, and an outage recalls only these.
 * At most ~3.5 MB (~350 bytes each: the name, a Map entry, its record and list;
 * test/reservations.test.ts); 20,000 left bench/soak.ts 1.3 MB under its 100 MB.
 */
export const MAX_TRANSACTIONS = 10_000;
/**
 * Mailboxes looked at from the oldest end per reserve(), at most: what has expired goes even when
 * its mailbox is never asked again. Measured (bench/soak.ts, Zipf over 100k mailboxes): without
 * it, mailboxes asked once kept their entry until maxMailboxes pushed it out.
 */
const SWEEP_PER_RESERVE = 2;

interface Reservation {
  bytes: number;
  expiresAt: number;
}

interface MailboxPending {
  base: Base;
  /**
   * By transaction, oldest first (a Map keeps insertion order); all share one TTL, so this is expiry
   * order too, but for recalled ones (recall(): they keep their own, older, expiry). live() stops
   * at the first unexpired one, so such a one may count up to one TTL too long: too much, never too little.
   */
  byTxn: Map<string, Reservation>;
  /** Sums over byTxn, kept up to date: a decision reads them without a walk. */
  bytes: number;
  /**
   * No reservation expires before this: the oldest's expiry when last looked at (a release of the
   * oldest only makes it early, never late). Spares the warm path an iterator per decision.
   */
  nextExpiry: number;
  /** Taken from the oldest end of byTxn since it was last made anew (compact()). */
  taken: number;
}

export class LocalReservations {
  private readonly mailboxes = new Map<string, MailboxPending>();
  /**
   * Transaction -> the mailboxes it reached, for end-of-message corrections, releases and recall().
   * One with reservations here goes with its last one (bench/soak.ts: kept until the cap instead,
   * delivered ones included, they were 100k entries, ~14 MB); one noted for Redis stays until
   * ABORT, a refusal or MAX_TRANSACTIONS.
   */
  private readonly transactions = new Map<string, Transaction>();
  /** Oldest first, for the caps and the sweep: not the Maps' own order (fifo.ts says why). */
  private readonly mailboxOrder = new Fifo<MailboxPending>((id, m) => this.mailboxes.get(id) === m);
  private readonly transactionOrder = new Fifo<Transaction>((txn, t) => this.transactions.get(txn) === t);

  constructor(
    private readonly ttlMs: number,
    private readonly maxMailboxes: number,
    /** The memory tier's clock, read once a millisecond at most: a Date.now() per call was ~4% of a warm request (--cpu-prof). */
    private readonly now: () => number = coarseNow,
    /** Made, delivered (a reading showed it), expired: counted for the metrics. */
    private readonly counts: ReservationCounts = NO_METRICS.reservations,
  ) {}

  /** What is on its way to the mailbox, not counting transaction `except`'s own reservation. */
  pending(id: string, except: string | null): Pending {
    const m = this.live(id);
    if (m === undefined) return NOTHING_PENDING;
    const own = except === null ? undefined : m.byTxn.get(except);
    const messages = m.byTxn.size - (own === undefined ? 0 : 1);
    return messages === 0 ? NOTHING_PENDING : { bytes: m.bytes - (own?.bytes ?? 0), messages };
  }

  /** The reading the pending total of `id` is relative to, if it has any reservation. */
  base(id: string): Base | undefined {
    return this.live(id)?.base;
  }

  /**
   * Records that transaction `txn` was accepted for the mailbox; `state` is the reading the decision
   * used (it becomes the base when the mailbox had nothing pending). False if it was already there.
   */
  reserve(id: string, txn: string, bytes: number, state: MailboxQuota): boolean {
    const m = this.live(id) ?? this.open(id, state);
    if (m.byTxn.has(txn)) return false;
    const t = this.index(id, txn, bytes);
    this.add(id, m, t.name, bytes, this.now() + this.ttlMs);
    this.counts.made.inc();
    return true;
  }

  /**
   * Remembers that transaction `txn` reached mailbox `id` with a message of `bytes`: with Redis
   * taking the reservation, all that is kept here (the header says why).
   */
  note(id: string, txn: string, bytes: number): void {
    this.index(id, txn, bytes);
  }

  /**
   * Redis stopped taking reservations: every transaction remembered that has not expired counts
   * here again, in each of its mailboxes, from no known reading (the next one becomes the base).
   * Returns how many reservations that made here.
   */
  recall(): number {
    let n = 0;
    const now = this.now();
    for (const [txn, t] of this.transactions) {
      if (t.expiresAt <= now) continue;
      // A copy: making room for a mailbox (open()) may take one out of this list.
      for (const id of [...t.ids]) {
        const m = this.live(id) ?? this.open(id, NO_BASE);
        // What this process read last (before the outage) may be older than what the recalled
        // reservation was judged on: growth since then is not their delivery.
        m.base = NO_BASE;
        if (m.byTxn.has(txn)) continue;
        this.add(id, m, txn, t.bytes, t.expiresAt);
        n++;
      }
    }
    return n;
  }

  /** A new entry for mailbox `id`, its pending total relative to `base`. */
  private open(id: string, base: Base): MailboxPending {
    const m: MailboxPending = { base: { usageBytes: base.usageBytes, usageMessages: base.usageMessages }, byTxn: new Map(), bytes: 0, nextExpiry: Infinity, taken: 0 };
    if (this.mailboxes.size >= this.maxMailboxes) {
      const oldest = this.mailboxOrder.oldest();
      if (oldest !== undefined) this.forget(oldest);
    }
    this.mailboxes.set(id, m);
    this.mailboxOrder.push(id, m, this.mailboxes.size);
    return m;
  }

  private add(id: string, m: MailboxPending, txn: string, bytes: number, expiresAt: number): void {
    if (m.byTxn.size >= MAX_RESERVATIONS_PER_MAILBOX) this.dropOldest(id, m, 1);
    m.byTxn.set(txn, { bytes, expiresAt });
    m.bytes += bytes;
    if (expiresAt < m.nextExpiry) m.nextExpiry = expiresAt;
    this.sweep();
  }

  /** Transaction `txn`'s record, made if new, with mailbox `id` in its list. */
  private index(id: string, txn: string, bytes: number): Transaction {
    let t = this.transactions.get(txn);
    if (t !== undefined) {
      if (!t.ids.includes(id)) t.ids.push(id);
      return t;
    }
    if (this.transactions.size >= MAX_TRANSACTIONS) this.transactions.delete(this.transactionOrder.oldest()!);
    // Kept for minutes: not as a cut of the request it came in (memo.ts). The list is made with its
    // one mailbox: an empty array grown by push() takes room for 17 (~150 bytes more per
    // transaction; heap snapshots of bench/soak.ts, 2026-11-30).
    const name = detached(txn);
    t = { name, ids: [id], bytes, expiresAt: this.now() + this.ttlMs };
    this.transactions.set(name, t);
    this.transactionOrder.push(name, t, this.transactions.size);
    return t;
  }

  /** Drops expired mailboxes from the oldest end; the first one still live moves to the newest end. */
  private sweep(): void {
    for (let n = SWEEP_PER_RESERVE; n > 0; n--) {
      const id = this.mailboxOrder.oldest();
      if (id === undefined) return;
      const m = this.mailboxOrder.oldestValue()!;
      this.mailboxOrder.shift();
      if (this.live(id) === undefined) continue;
      this.mailboxOrder.push(id, m, this.mailboxes.size);
      return;
    }
  }

  /** Takes transaction `txn`'s reservation out of mailbox `id`, and `id` out of the transaction's list. */
  private take(id: string, m: MailboxPending, txn: string, r: Reservation): void {
    m.byTxn.delete(txn);
    m.bytes -= r.bytes;
    this.unnote(id, txn);
  }

  /** `id` out of transaction `txn`'s list; the transaction goes with its last mailbox. */
  private unnote(id: string, txn: string): void {
    const t = this.transactions.get(txn);
    if (t === undefined) return;
    const i = t.ids.indexOf(id);
    if (i !== -1) t.ids.splice(i, 1);
    if (t.ids.length === 0) this.transactions.delete(txn);
  }

  private dropOldest(id: string, m: MailboxPending, n: number): void {
    for (const [txn, r] of m.byTxn) {
      if (n-- <= 0) break;
      this.take(id, m, txn, r);
      m.taken++;
    }
    compact(m);
  }

  /** The mailbox ids transaction `txn` reached, as remembered here. */
  mailboxesOf(txn: string): readonly string[] {
    return this.transactions.get(txn)?.ids ?? [];
  }

  release(id: string, txn: string): void {
    const m = this.mailboxes.get(id);
    const r = m?.byTxn.get(txn);
    if (m === undefined || r === undefined) return this.unnote(id, txn);
    this.take(id, m, txn, r);
    if (m.byTxn.size === 0) this.mailboxes.delete(id);
  }

  /** Every reservation of the transaction goes (the message was given up). */
  releaseTransaction(txn: string): string[] {
    const ids = [...(this.transactions.get(txn)?.ids ?? [])];
    for (const id of ids) this.release(id, txn);
    this.transactions.delete(txn);
    return ids;
  }

  /** The real size is known (end of message): the transaction's reservations take it. */
  resize(txn: string, bytes: number): string[] {
    const t = this.transactions.get(txn);
    if (t === undefined) return [];
    t.bytes = bytes;
    const ids = t.ids;
    for (const id of ids) {
      const m = this.mailboxes.get(id);
      const r = m?.byTxn.get(txn);
      if (m === undefined || r === undefined) continue;
      m.bytes += bytes - r.bytes;
      r.bytes = bytes;
    }
    return ids;
  }

  /**
   * A newer reading of the mailbox: drop the reservations its growth covers and make it the base.
   * Called for every reading this process takes in (from the source or from Redis).
   *
   * Growth takes the oldest reservations (mail is delivered about in order), each keeping its own
   * expiry. One whose message never comes (a phantom: the transaction failed after RCPT, e.g. a
   * content filter refused it) is then taken in place of a later one that was delivered, which
   * stays as its proxy: in a mailbox that keeps getting mail the phantom's place passes from proxy
   * to proxy and ends reservations.ttl after the mailbox's last mail (bench/soak.ts, 2% phantoms
   * in its busiest mailboxes: tens of thousands after 20 minutes, within the per-mailbox cap). Which message did
   * not come cannot be told from a count. Handing the dropped ones' expiries on to the survivors
   * ends a phantom's place in time, but in a steady stream it also ends real ones early, one more
   * each TTL, never to come back: mail accepted that then bounces (tried, and measured by the tests
   * here). Counting too much only defers near the limit, so this errs that way.
   */
  reconcile(id: string, state: MailboxQuota): void {
    const m = this.live(id);
    if (m === undefined) return;
    const delivered = Math.min(m.byTxn.size, deliveredCount(m.base, state, m.byTxn.values()));
    if (delivered > 0) {
      this.dropOldest(id, m, delivered);
      this.counts.delivered.inc(delivered);
    }
    m.base = { usageBytes: state.usageBytes, usageMessages: state.usageMessages };
    if (m.byTxn.size === 0) this.mailboxes.delete(id);
  }

  forget(id: string): void {
    const m = this.mailboxes.get(id);
    if (m === undefined) return;
    this.dropOldest(id, m, Infinity);
    this.mailboxes.delete(id);
  }

  get size(): number {
    return this.mailboxes.size;
  }

  /** The mailbox's entry with expired reservations dropped; undefined when nothing is left. */
  private live(id: string): MailboxPending | undefined {
    const m = this.mailboxes.get(id);
    if (m === undefined) return undefined;
    const now = this.now();
    if (now < m.nextExpiry) return m;
    m.nextExpiry = Infinity;
    for (const [txn, r] of m.byTxn) {
      if (r.expiresAt > now) {
        m.nextExpiry = r.expiresAt;
        break;
      }
      this.take(id, m, txn, r);
      m.taken++;
      this.counts.expired.inc();
    }
    compact(m);
    if (m.byTxn.size > 0) return m;
    this.mailboxes.delete(id);
    return undefined;
  }
}

/**
 * byTxn made anew once more were taken from its oldest end than it holds: V8 keeps deleted entries
 * in a Map until it rehashes, and every walk from the oldest end (dropOldest, live) steps over them
 * (fifo.ts). A mailbox at MAX_RESERVATIONS_PER_MAILBOX, one in and one out per reservation, walked
 * up to ~1,000 of them each time. Amortised O(1): a copy of n entries after at least n taken.
 */
function compact(m: MailboxPending): void {
  if (m.taken <= m.byTxn.size + 16) return;
  m.byTxn = new Map(m.byTxn);
  m.taken = 0;
}

/**
 * A stored message may be smaller than its SIZE=: SIZE counts CRLF line ends, mbox and Maildir
 * store LF, one byte less per line (a line of n characters: 1 byte of n + 2, 1.3% at 76, 4.5% at
 * 20), while the headers added at delivery (Return-Path, Delivered-To, Received: 300-500 bytes)
 * make a small message larger. So a reading's growth covers the oldest reservations whose sum it
 * reaches within this fraction; a reservation not counted as delivered would count twice (usage
 * and pending) for reservations.ttl. The other way, at most this fraction of what is pending is
 * taken for delivered too early.
 */
export const STORED_SLACK = 0.05;

/**
 * How many of the oldest reservations a reading's growth since `base` covers. By messages when
 * both readings count them (a delivery adds one, whatever headers the backend adds to its size);
 * else by bytes, within STORED_SLACK. A mailbox that shrank (mail deleted) shows no growth: its
 * reservations wait for a later reading or the TTL.
 */
export function deliveredCount(base: Base, now: Base, oldestFirst: Iterable<{ bytes: number }>): number {
  if (base.usageMessages !== null && now.usageMessages !== null) return Math.max(0, now.usageMessages - base.usageMessages);
  const growth = now.usageBytes - base.usageBytes;
  if (growth <= 0) return 0;
  let [sum, n] = [0, 0];
  for (const r of oldestFirst) {
    sum += r.bytes;
    if (growth < sum * (1 - STORED_SLACK)) break;
    n++;
  }
  return n;
}
