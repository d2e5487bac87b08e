/*
 * One recipient, start to finish: address -> mailbox key -> source -> cached state -> verdict -> reply.
 *
 * Every face (policy server, milter, check command) calls check() and only translates the result.
 * It never throws and always settles within the latency budget: a source that fails or hangs
 * yields the "error" verdict, whose reply is the operator's on_error answer.
 *
 * A recipient accepted within a transaction (Postfix's `instance`, the milter's message) is
 * reserved against its mailbox (cache/reservations.ts): the next RCPT sees it pending, so a burst
 * cannot fill a mailbox past its limit on one cached reading. check() without a transaction (the
 * check command) only looks.
 */
import { RecipientParser, type Recipient, type RecipientRules } from './recipient.js';
import type { AliasMap } from './aliases.js';
import { decide, Replies, type ReplyTexts, type Verdict } from './verdict.js';
import type { Reply } from './replies.js';
import type { QuotaCache, CacheOutcome, Reserved } from '../cache/quota-cache.js';
import type { Pending } from '../cache/reservations.js';
import type { Router } from '../sources/router.js';
import { SourceError, type MailboxQuota, type QuotaSource, type QuotaState } from '../quota.js';
import { NO_METRICS, type Count, type Tier } from '../runtime/metrics.js';

export interface CheckerOptions {
  rules: RecipientRules;
  replies: ReplyTexts;
  dryRun: boolean;
  /** Longest time from request to answer. */
  latencyBudgetMs: number;
  /** Longest wait for one source lookup (never more than the budget). */
  sourceTimeoutMs: number;
  /** Addresses are resolved to their mailboxes first; with several, defer if any / all are full. */
  aliases?: { map: AliasMap; deferWhen: 'any' | 'all' };
  /** What the checker counts (runtime/metrics.ts); absent: nothing. */
  counts?: CheckerCounts;
}

/** Answers by the tier that gave them, budgets run out, verdicts that mail on its way tipped. */
export interface CheckerCounts {
  answers: Record<Tier, Count>;
  budgetExhausted: Count;
  tipped: Count;
}

/** The cache's word for where an answer came from -> the tier counted. */
const TIER: Record<CacheOutcome, Tier> = { hit: 'memory', redis: 'redis', shared: 'shared', miss: 'source' };

export interface Decision {
  verdict: Verdict;
  /** The reply, as a value: each face renders it (policy: its words; milter: a REPLYCODE or continue). */
  reply: Reply;
  recipient: Recipient | null;
  source: string | null;
  cache: CacheOutcome | null;
  state: QuotaState | null;
  error: { code: string; message: string } | null;
  ms: number;
  /** Mail accepted for the mailbox and still on its way, when any was counted. */
  pending: Pending | null;
  /** The cache id of the mailbox this decision reserved in (a new reservation), or null. */
  reserved: string | null;
}

export class QuotaChecker {
  private readonly recipients: RecipientParser;
  private readonly replies: Replies;
  private readonly counts: CheckerCounts;

  constructor(
    private readonly router: Router,
    private readonly cache: QuotaCache,
    private readonly opts: CheckerOptions,
  ) {
    this.recipients = new RecipientParser(opts.rules);
    this.replies = new Replies(opts.replies, opts.dryRun);
    this.counts = opts.counts ?? { answers: NO_METRICS.answers, budgetExhausted: NO_METRICS.budgetExhausted, tipped: NO_METRICS.reservations.tipped };
  }

  /**
   * @param size message size in bytes, 0 when unknown.
   * @param txn the transaction the recipient belongs to, unique across frontends; null: look only,
   *   reserve nothing.
   * A memory-cache hit is answered synchronously (no promise, no timer): it is the common case.
   * The clock is read only once a lookup must wait: an answer given in the same turn takes a
   * microsecond or two, logged as 0 ms (the log's precision is 0.01 ms).
   */
  check(rawRecipient: string, size: number, txn: string | null = null): Decision | Promise<Decision> {
    const recipient = this.recipients.parse(rawRecipient);
    if (!recipient) return this.finish(null, size, recipient, { kind: 'not_checked', reason: 'no recipient address' });
    const aliases = this.opts.aliases;
    // Looked up with the extension first, as virtual(5) does; the map's keys are in lower case.
    const targets = aliases?.map.expand(recipient.fullAddress.toLowerCase(), this.opts.rules.delimiters);
    if (targets && !(targets.length === 1 && (targets[0] === recipient.address || targets[0] === recipient.fullAddress))) return this.checkAlias(performance.now(), size, recipient, targets, txn);
    return this.checkMailbox(null, size, recipient, txn);
  }

  /** The message of `txn` is known to be `bytes` long now (end of message): its reservations take that size. */
  messageSize(txn: string, bytes: number): void {
    this.cache.messageSize(txn, bytes);
  }

  /** The message of `txn` will not be delivered (aborted, or refused as a whole): its reservations go. */
  giveUp(txn: string): void {
    this.cache.giveUp(txn);
  }

  /** @param started when the request's budget started (an alias's), or null: now, if it comes to waiting. */
  private checkMailbox(started: number | null, size: number, recipient: Recipient, txn: string | null): Decision | Promise<Decision> {
    const source = this.router.route(recipient.domain);
    if (!source) return this.finish(started, size, recipient, { kind: 'not_checked', reason: `domain ${recipient.domain || '(none)'} is not served` });
    const id = this.cache.idOf(source, recipient.key);
    const cached = this.cache.peekId(id);
    if (cached) {
      this.counts.answers.memory.inc();
      return this.judge(started, size, recipient, source, id, cached, 'hit', txn);
    }
    return this.lookUp(started ?? performance.now(), size, recipient, source, id, txn);
  }

  /**
   * A state -> the verdict, counting what is on its way; an accepted recipient is reserved. Without
   * Redis all of it happens in this turn; with Redis the reservation is added there atomically
   * first, and the verdict counts every frontend's (a refused recipient's reservation is taken back).
   * The warm path: no object is made here beyond the Decision itself when nothing is pending.
   */
  private judge(started: number | null, size: number, recipient: Recipient, source: QuotaSource, id: string, state: QuotaState, cache: CacheOutcome, txn: string | null): Decision | Promise<Decision> {
    if (state.kind !== 'found' || this.cache.reservations === null) return this.decided(started, size, recipient, decide(state, size), source.name, cache, state, null, null);
    if (txn === null) {
      // A look without a transaction (overquota check): every frontend's reservations, where Redis has them.
      const shared = this.cache.sharedPending(id);
      if (shared !== null) return shared.then((r) => this.judgeShared(started ?? performance.now(), size, recipient, source.name, cache, state, id, null, { added: false, shared: r }));
    }
    const pending = this.cache.pending(id, txn);
    const verdict = decide(state, size, pending);
    const counted = pending.messages > 0 ? pending : null;
    if (verdict.pending) this.tipped(id);
    if (verdict.kind !== 'under_quota' || txn === null || !worthReserving(state, size)) return this.decided(started, size, recipient, verdict, source.name, cache, state, counted, null);
    const reserved = this.cache.reserve(id, txn, size, state, this.budgetLeft(started));
    if (!(reserved instanceof Promise)) return this.decided(started, size, recipient, verdict, source.name, cache, state, counted, reserved.added ? id : null);
    const began = started ?? performance.now();
    return reserved.then((r) => this.judgeShared(began, size, recipient, source.name, cache, state, id, txn, r));
  }

  /**
   * The verdict again with every frontend's reservations, as Redis counted them with ours added; or,
   * when Redis did not answer, with this process's as they are now (what Redis took recalled, and
   * the other RCPTs that waited on Redis meanwhile counted: reserve() in quota-cache.ts).
   */
  private judgeShared(started: number, size: number, recipient: Recipient, source: string, cache: CacheOutcome, state: MailboxQuota, id: string, txn: string | null, r: Reserved): Decision {
    if (r.shared === null) {
      const pending = this.cache.pending(id, txn);
      const verdict = decide(state, size, pending);
      const counted = pending.messages > 0 ? pending : null;
      if (verdict.kind === 'under_quota') return this.decided(started, size, recipient, verdict, source, cache, state, counted, r.added ? id : null);
      if (r.added && txn !== null) this.cache.release(id, txn);
      if (verdict.pending) this.tipped(id);
      return this.decided(started, size, recipient, verdict, source, cache, state, counted, null);
    }
    // The pending total is relative to the reading Redis keeps with it, which may be newer than ours.
    const base = { ...state, usageBytes: r.shared.base.usageBytes, usageMessages: r.shared.base.usageMessages ?? state.usageMessages };
    const verdict = decide(base, size, r.shared.others);
    const pending = r.shared.others.messages > 0 ? r.shared.others : null;
    if (verdict.kind === 'under_quota') return this.decided(started, size, recipient, verdict, source, cache, base, pending, r.added ? id : null);
    if (r.added && txn !== null) this.cache.release(id, txn);
    if (verdict.pending) this.tipped(id);
    return this.decided(started, size, recipient, verdict, source, cache, base, pending, null);
  }

  /** Mail on its way tipped a verdict for `id`: counted, and the mailbox read again soon. */
  private tipped(id: string): void {
    this.counts.tipped.inc();
    this.cache.readSoon(id);
  }

  /** What is left of the latency budget of a request that started at `started` (null: now). */
  private budgetLeft(started: number | null): number {
    return started === null ? this.opts.latencyBudgetMs : Math.max(1, this.opts.latencyBudgetMs - (performance.now() - started));
  }

  /**
   * An alias: each target checked as a recipient of its own (targets in domains we do not serve are
   * not ours). 'any': one full target defers the alias; 'all': only when every checked target is full.
   */
  private async checkAlias(started: number, size: number, alias: Recipient, targets: string[], txn: string | null): Promise<Decision> {
    // All at once, under the one budget that started with the request.
    const parsed = targets.map((t) => this.recipients.parse(t)).filter((r): r is Recipient => r !== null);
    const decisions = await Promise.all(parsed.map((r) => this.checkMailbox(started, size, r, txn)));
    const checked = decisions.filter((d) => d.verdict.kind !== 'not_checked');
    const full = checked.filter((d) => d.verdict.kind === 'over_quota' || d.verdict.kind === 'too_large');
    const deferWhen = this.opts.aliases!.deferWhen;
    const names = checked.map((d) => d.recipient?.key).join(',');
    let pick: Decision | undefined;
    if (full.length > 0 && (deferWhen === 'any' || full.length === checked.length)) pick = full[0];
    else pick = checked.find((d) => d.verdict.kind === 'error') ?? checked.find((d) => d.verdict.kind === 'under_quota') ?? checked[0];
    if (!pick) return this.finish(started, size, alias, { kind: 'not_checked', reason: `alias of ${targets.join(', ')}: none served here` });
    // One mailbox that can never take the message must not refuse the copies for the others for
    // good: a too-large target defers the alias (452) unless every target is too large.
    const allTooLarge = checked.length > 0 && checked.every((d) => d.verdict.kind === 'too_large');
    const kind = pick.verdict.kind === 'too_large' && !allTooLarge ? 'over_quota' : pick.verdict.kind;
    const verdict = { kind, reason: `alias of ${names} (${full.length} of ${checked.length} full, defer if ${deferWhen}): ${pick.verdict.reason}`, pending: pick.verdict.pending };
    const recipient = { ...alias, key: names };
    // A refused alias is not delivered to any of its mailboxes: the reservations just made go.
    if (kind !== 'under_quota' && txn !== null) for (const d of decisions) if (d.reserved !== null) this.cache.release(d.reserved, txn);
    return this.finish(started, size, recipient, verdict, { source: pick.source, cache: pick.cache, state: pick.state, error: pick.error, pending: pick.pending });
  }

  private async lookUp(started: number, size: number, recipient: Recipient, source: QuotaSource, id: string, txn: string | null): Promise<Decision> {
    // What is left of the request's budget (an alias's mailboxes share it).
    const budget = this.budgetLeft(started);
    const timeout = Math.min(this.opts.sourceTimeoutMs, budget);
    let timer: NodeJS.Timeout | undefined;
    let exhausted: SourceError | undefined;
    try {
      const spent = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject((exhausted = new SourceError('SOURCE_TIMEOUT', `latency budget of ${this.opts.latencyBudgetMs} ms spent`))), budget);
      });
      const { state, cache } = await Promise.race([this.cache.lookup(source, recipient.key, timeout), spent]);
      this.counts.answers[TIER[cache]].inc();
      return await this.judge(started, size, recipient, source, id, state, cache, txn);
    } catch (err) {
      // The budget's timer is set before the source's, which is never longer: it fires first.
      if (err === exhausted) this.counts.budgetExhausted.inc();
      const code = err instanceof SourceError ? err.code : 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      return this.finish(started, size, recipient, { kind: 'error', reason: message }, { source: source.name, error: { code, message } });
    } finally {
      clearTimeout(timer);
    }
  }

  /** @param started null: answered in the turn it was asked (0 ms). */
  private finish(started: number | null, size: number, recipient: Recipient | null, verdict: Verdict, extra: Partial<Decision> = {}): Decision {
    const d = this.decided(started, size, recipient, verdict, extra.source ?? null, extra.cache ?? null, extra.state ?? null, extra.pending ?? null, extra.reserved ?? null);
    if (extra.error) d.error = extra.error;
    return d;
  }

  /** The Decision, from positional parts: the warm path builds no other object on the way. */
  private decided(
    started: number | null,
    size: number,
    recipient: Recipient | null,
    verdict: Verdict,
    source: string | null,
    cache: CacheOutcome | null,
    state: QuotaState | null,
    pending: Pending | null,
    reserved: string | null,
  ): Decision {
    return {
      verdict,
      reply: this.replies.for(verdict, state, size),
      recipient,
      source,
      cache,
      state,
      error: null,
      ms: started === null ? 0 : Math.round((performance.now() - started) * 100) / 100,
      pending,
      reserved,
    };
  }
}

/**
 * Our own bug while deciding, caught by a face: the error verdict with `reply` (on_error), so that
 * it is counted and logged like any other decision (the face logs the stack too).
 */
export function failedDecision(err: unknown, reply: Reply): Decision {
  const message = err instanceof Error ? err.message : String(err);
  return { verdict: { kind: 'error', reason: `internal error: ${message}` }, reply, recipient: null, source: null, cache: null, state: null, error: { code: 'INTERNAL', message }, ms: 0, pending: null, reserved: null };
}

/**
 * A reservation can change a later verdict only where there is a limit it counts against: bytes
 * (with a size known) or messages. Elsewhere it would only cost memory (and Redis commands).
 */
function worthReserving(state: MailboxQuota, size: number): boolean {
  return (state.limitBytes !== null && size > 0) || state.limitMessages !== null;
}
