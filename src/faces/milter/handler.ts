/*
 * The milter face's use of the decision core: one recipient -> one reply, logged like the
 * policy face's. Never throws: a bug becomes the on_error reply, counted and logged as an error.
 */
import type { Logger } from 'pino';
import { failedDecision, type Decision, type QuotaChecker } from '../../core/checker.js';
import { decisionLogged, writeDecision, type DecisionContext, type DecisionsLogged } from '../decision-line.js';
import { parseReply, type Reply } from '../../core/replies.js';
import type { RcptContext, RcptDecider } from './session.js';
import { NO_METRICS, type FaceCounts } from '../../runtime/metrics.js';

/** <a@b> -> a@b, for the log (a regex here cost 1-2% of the milter's CPU, bench/milter-wire.ts). */
const bare = (a: string | undefined) => (a !== undefined && a.startsWith('<') && a.endsWith('>') ? a.slice(1, -1) : a);

/**
 * @param counts the milter face's counts (runtime/metrics.ts), bound at start-up.
 * A bug is answered with on_error, counted as an error verdict and logged like one (with its stack).
 */
export function makeMilterDecider(checker: QuotaChecker, onError: string, logger: Logger, decisions: DecisionsLogged = 'all', counts: FaceCounts = NO_METRICS.face('milter')): RcptDecider {
  const failed = parseReply(onError);
  const counted = counts.decisions;
  /** Counted, and logged where log.decisions asks (checked first: the context is gathered only then). */
  const answer = (recipient: string, ctx: RcptContext, decision: Decision): Reply => {
    counted[decision.verdict.kind].inc();
    if (decisionLogged(logger, decision, decisions)) writeDecision(logger, contextOf(recipient, ctx), decision);
    return decision.reply;
  };
  const fail = (recipient: string, ctx: RcptContext, err: unknown): Reply => {
    logger.error({ err }, 'internal error while deciding a milter recipient; sent the on_error reply');
    try {
      return answer(recipient, ctx, failedDecision(err, failed));
    } catch {
      // The bug may be in what the line reads: the reply still goes out (counted before the line).
      return failed;
    }
  };
  return (recipient, ctx) => {
    try {
      // A memory-cache hit is decided in this turn: answered without a promise (as the policy face).
      const decision = checker.check(recipient, ctx.size, ctx.txn);
      if (!(decision instanceof Promise)) return answer(recipient, ctx, decision);
      return decision.then((d) => answer(recipient, ctx, d)).catch((err: unknown) => fail(recipient, ctx, err));
    } catch (err) {
      return fail(recipient, ctx, err);
    }
  };
}

/** What the decision line says about the recipient. */
function contextOf(recipient: string, ctx: RcptContext): DecisionContext {
  return { face: 'milter', queue_id: ctx.queueId, client_address: ctx.client?.address, sender: bare(ctx.sender), recipient: bare(recipient), state: 'RCPT', size: ctx.size };
}
