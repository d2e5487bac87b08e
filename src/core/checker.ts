/*
 * One recipient, start to finish: address -> mailbox key -> source -> cached state -> verdict -> reply.
 *
 * Every face (policy server, milter, check command) calls check() and only translates the result.
 * It never throws and always settles within the latency budget: a source that fails or hangs
 * yields the "error" verdict, whose reply is the operator's on_error answer.
 */
import { RecipientParser, type Recipient, type RecipientRules } from './address.js';
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
   */
  check(rawRecipient: string, size: number): Decision | Promise<Decision> {
    const started = performance.now();
    const recipient = this.recipients.parse(rawRecipient);
    if (!recipient) return this.finish(started, size, recipient, { kind: 'not_checked', reason: 'no recipient address' });
    const source = this.router.route(recipient.domain);
    if (!source) return this.finish(started, size, recipient, { kind: 'not_checked', reason: `domain ${recipient.domain || '(none)'} is not served` });
    const cached = this.cache.peek(source, recipient.key);
    if (cached) return this.finish(started, size, recipient, decide(cached, size), { source: source.name, cache: 'hit', state: cached });
    return this.lookUp(started, size, recipient, source);
  }

  private async lookUp(started: number, size: number, recipient: Recipient, source: QuotaSource): Promise<Decision> {
    const budget = this.opts.latencyBudgetMs;
    const timeout = Math.min(this.opts.sourceTimeoutMs, budget);
    let timer: NodeJS.Timeout | undefined;
    try {
      const spent = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new SourceError('SOURCE_TIMEOUT', `latency budget of ${budget} ms spent`)), budget);
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

  private finish(started: number, size: number, recipient: Recipient | null, verdict: Verdict, extra: Partial<Decision> = {}): Decision {
    const state = extra.state ?? null;
    return {
      verdict,
      action: replyFor(verdict, this.opts.replies, this.opts.dryRun, state ?? undefined, size),
      recipient,
      source: extra.source ?? null,
      cache: extra.cache ?? null,
      state,
      error: extra.error ?? null,
      ms: Math.round((performance.now() - started) * 100) / 100,
    };
  }
}
