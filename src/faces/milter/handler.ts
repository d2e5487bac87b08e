/*
 * The milter face's use of the decision core: one recipient -> one reply, logged like the
 * policy face's. Never throws: a bug becomes the on_error reply.
 */
import type { Logger } from 'pino';
import type { QuotaChecker } from '../../core/checker.js';
import { logDecision, type DecisionsLogged } from '../decision-line.js';
import { parseReply } from '../../core/replies.js';
import type { RcptDecider } from './session.js';

/** <a@b> -> a@b, for the log (a regex here cost 1-2% of the milter's CPU, bench/milter-wire.ts). */
const bare = (a: string | undefined) => (a !== undefined && a.startsWith('<') && a.endsWith('>') ? a.slice(1, -1) : a);

export function makeMilterDecider(checker: QuotaChecker, onError: string, logger: Logger, decisions: DecisionsLogged = 'all'): RcptDecider {
  const failed = parseReply(onError);
  return async (recipient, ctx) => {
    try {
      const decision = await checker.check(recipient, ctx.size, ctx.txn);
      logDecision(
        logger,
        () => ({ face: 'milter', queue_id: ctx.queueId, client_address: ctx.client?.address, sender: bare(ctx.sender), recipient: bare(recipient), state: 'RCPT', size: ctx.size }),
        decision,
        decisions,
      );
      return decision.reply;
    } catch (err) {
      logger.error({ err }, 'internal error while deciding a milter recipient; sent the on_error reply');
      return failed;
    }
  };
}
