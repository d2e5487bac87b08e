/*
 * The milter face's use of the decision core: one recipient -> one action, logged like the
 * policy face's. Never throws: a bug becomes the on_error reply.
 */
import type { Logger } from 'pino';
import type { QuotaChecker } from '../core/checker.js';
import { logDecision } from '../core/decision-log.js';
import type { RcptDecider } from './session.js';

export function makeMilterDecider(checker: QuotaChecker, onError: string, logger: Logger): RcptDecider {
  return async (recipient, ctx) => {
    const bare = (a: string | undefined) => a?.replace(/^<(.*)>$/, '$1');
    try {
      const decision = await checker.check(recipient, ctx.size);
      logDecision(
        logger,
        () => ({ face: 'milter', queue_id: ctx.queueId, client_address: ctx.client?.address, sender: bare(ctx.sender), recipient: bare(recipient), state: 'RCPT', size: ctx.size }),
        decision,
      );
      return decision.action;
    } catch (err) {
      logger.error({ err }, 'internal error while deciding a milter recipient; sent the on_error reply');
      return onError;
    }
  };
}
