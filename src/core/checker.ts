/*
 * One recipient, start to finish: address -> mailbox key -> source -> cached state -> verdict -> reply.
 *
 * Every face (policy server, milter, check command) calls check() and only translates the result.
 * It never throws and always settles within the latency budget: a source that fails or hangs
 * yields the "error" verdict, whose reply is the operator's on_error answer.
 */
import { RecipientParser, type Recipient, type RecipientRules } from './address.js';
import type { AliasMap } from './aliases.js';
import { decide, replyFor, type ReplyTexts, type Verdict } from './verdict.js';
import type { QuotaCache, CacheOutcome } from '../cache/quota-cache.js';
import type { Router } from '../sources/router.js';
import { SourceError, type QuotaSource, type QuotaState } from '../sources/types.js';

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
}

export interface Decision {
  verdict: Verdict;
  /** The reply in Postfix access(5) words; the milter translates it. */
  action: string;
  recipient: Recipient | null;
  source: string | null;
  cache: CacheOutcome | null;
  state: QuotaState | null;
  error: { code: string; message: string } | null;
  ms: number;
}

export class QuotaChecker {
  private readonly recipients: RecipientParser;

  constructor(
    private readonly router: Router,
    private readonly cache: QuotaCache,
    private readonly opts: CheckerOptions,
  ) {
    this.recipients = new RecipientParser(opts.rules);
  }

  /**
   * @param size message size in bytes, 0 when unknown.
   * A memory-cache hit is answered synchronously (no promise, no timer): it is the common case.
   * The clock is read only once a lookup must wait: an answer given in the same turn takes a
   * microsecond or two, logged as 0 ms (the log's precision is 0.01 ms).
   */
  check(rawRecipient: string, size: number): Decision | Promise<Decision> {
    const recipient = this.recipients.parse(rawRecipient);
    if (!recipient) return this.finish(null, size, recipient, { kind: 'not_checked', reason: 'no recipient address' });
    const targets = this.opts.aliases?.map.expand(recipient.address);
    if (targets && !(targets.length === 1 && targets[0] === recipient.address)) return this.checkAlias(performance.now(), size, recipient, targets);
    return this.checkMailbox(null, size, recipient);
  }

  /** @param started when the request's budget started (an alias's), or null: now, if it comes to waiting. */
  private checkMailbox(started: number | null, size: number, recipient: Recipient): Decision | Promise<Decision> {
    const source = this.router.route(recipient.domain);
    if (!source) return this.finish(started, size, recipient, { kind: 'not_checked', reason: `domain ${recipient.domain || '(none)'} is not served` });
    const cached = this.cache.peek(source, recipient.key);
    if (cached) return this.finish(started, size, recipient, decide(cached, size), { source: source.name, cache: 'hit', state: cached });
    return this.lookUp(started ?? performance.now(), size, recipient, source);
  }

  /**
   * An alias: each target checked as a recipient of its own (targets in domains we do not serve are
   * not ours). 'any': one full target defers the alias; 'all': only when every checked target is full.
   */
  private async checkAlias(started: number, size: number, alias: Recipient, targets: string[]): Promise<Decision> {
    // All at once, under the one budget that started with the request.
    const parsed = targets.map((t) => this.recipients.parse(t)).filter((r): r is Recipient => r !== null);
    const decisions = await Promise.all(parsed.map((r) => this.checkMailbox(started, size, r)));
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
    const verdict = { kind, reason: `alias of ${names} (${full.length} of ${checked.length} full, defer if ${deferWhen}): ${pick.verdict.reason}` };
    const recipient = { ...alias, key: names };
    return this.finish(started, size, recipient, verdict, { source: pick.source, cache: pick.cache, state: pick.state, error: pick.error });
  }

  private async lookUp(started: number, size: number, recipient: Recipient, source: QuotaSource): Promise<Decision> {
    // What is left of the request's budget (an alias's mailboxes share it).
    const budget = Math.max(1, this.opts.latencyBudgetMs - (performance.now() - started));
    const timeout = Math.min(this.opts.sourceTimeoutMs, budget);
    let timer: NodeJS.Timeout | undefined;
    try {
      const spent = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new SourceError('SOURCE_TIMEOUT', `latency budget of ${this.opts.latencyBudgetMs} ms spent`)), budget);
      });
      const { state, cache } = await Promise.race([this.cache.lookup(source, recipient.key, timeout), spent]);
      return this.finish(started, size, recipient, decide(state, size), { source: source.name, cache, state });
    } catch (err) {
      const code = err instanceof SourceError ? err.code : 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      return this.finish(started, size, recipient, { kind: 'error', reason: message }, { source: source.name, error: { code, message } });
    } finally {
      clearTimeout(timer);
    }
  }

  /** @param started null: answered in the turn it was asked (0 ms). */
  private finish(started: number | null, size: number, recipient: Recipient | null, verdict: Verdict, extra: Partial<Decision> = {}): Decision {
    const state = extra.state ?? null;
    return {
      verdict,
      action: replyFor(verdict, this.opts.replies, this.opts.dryRun, state ?? undefined, size),
      recipient,
      source: extra.source ?? null,
      cache: extra.cache ?? null,
      state,
      error: extra.error ?? null,
      ms: started === null ? 0 : Math.round((performance.now() - started) * 100) / 100,
    };
  }
}
