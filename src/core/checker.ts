/*
 * One recipient, start to finish: address -> mailbox key -> source -> cached state -> verdict -> reply.
 *
 * Every face (policy server, milter, check command) calls check() and only translates the result.
 * It never throws and always settles within the latency budget: a source that fails or hangs
 * yields the "error" verdict, whose reply is the operator's on_error answer.
 */
import { parseRecipient, type Recipient, type RecipientRules } from './address.js';
import { decide, replyFor, type ReplyTexts, type Verdict } from './verdict.js';
import type { QuotaCache, CacheOutcome } from '../cache/quota-cache.js';
import type { Router } from '../sources/router.js';
import { SourceError, type QuotaState } from '../sources/types.js';

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
  constructor(
    private readonly router: Router,
    private readonly cache: QuotaCache,
    private readonly opts: CheckerOptions,
  ) {}

  /** @param size message size in bytes, 0 when unknown. */
  async check(rawRecipient: string, size: number): Promise<Decision> {
    const started = performance.now();
    const recipient = parseRecipient(rawRecipient, this.opts.rules);
    const finish = (verdict: Verdict, extra: Partial<Decision> = {}): Decision => {
      const state = extra.state ?? null;
      return {
        verdict,
        action: replyFor(verdict, this.opts.replies, this.opts.dryRun, state ?? undefined, size),
        recipient,
        source: null,
        cache: null,
        state,
        error: null,
        ...extra,
        ms: Math.round((performance.now() - started) * 100) / 100,
      };
    };
    if (!recipient) return finish({ kind: 'not_checked', reason: 'no recipient address' });
    const source = this.router.route(recipient.domain);
    if (!source) return finish({ kind: 'not_checked', reason: `domain ${recipient.domain || '(none)'} is not served` });

    const budget = this.opts.latencyBudgetMs;
    const timeout = Math.min(this.opts.sourceTimeoutMs, budget);
    let timer: NodeJS.Timeout | undefined;
    try {
      const spent = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new SourceError('SOURCE_TIMEOUT', `latency budget of ${budget} ms spent`)), budget);
      });
      const { state, cache } = await Promise.race([this.cache.lookup(source, recipient.key, timeout), spent]);
      return finish(decide(state, size), { source: source.name, cache, state });
    } catch (err) {
      const code = err instanceof SourceError ? err.code : 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      return finish({ kind: 'error', reason: message }, { source: source.name, error: { code, message } });
    } finally {
      clearTimeout(timer);
    }
  }
}
