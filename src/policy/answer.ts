/*
 * A policy request -> the action to send, with one log line per checked recipient.
 *
 * Only RCPT is checked (and END-OF-MESSAGE with a recipient, when enabled: Postfix names the
 * recipient there only when the message has exactly one, and the real size is known). Every other
 * state gets DUNNO. Never throws: a bug here becomes the on_error reply, not a dropped session.
 */
import type { Logger } from 'pino';
import type { PolicyRequest } from './codec.js';
import type { QuotaChecker, Decision } from '../core/checker.js';
import { decisionLogged, writeDecision } from '../core/decision-log.js';

export interface PolicyAnswerOptions {
  checkEndOfMessage: boolean;
  onError: string;
}

/** Postfix sends size=0 (or nothing) when the client gave no SIZE=. */
export function requestSize(request: PolicyRequest): number {
  const size = request.get('size');
  if (size === undefined || size === '' || size === '0') return 0;
  return /^\d{1,15}$/.test(size) ? Number(size) : 0;
}

export function wantsCheck(request: PolicyRequest, opts: PolicyAnswerOptions): string | null {
  const recipient = request.get('recipient');
  if (!recipient) return null;
  const given = request.get('protocol_state') ?? '';
  // Postfix writes it in capitals: only a hand-typed request needs the case folded.
  const state = given === 'RCPT' || given === 'END-OF-MESSAGE' ? given : given.toUpperCase();
  if (state === 'RCPT') return recipient;
  if (state === 'END-OF-MESSAGE' && opts.checkEndOfMessage) return recipient;
  return null;
}

export function makePolicyHandler(checker: QuotaChecker, opts: PolicyAnswerOptions, logger: Logger) {
  const answer = (request: PolicyRequest, decision: Decision): string => {
    // Checked first: at warn (no decision lines) not even the context is gathered.
    if (decisionLogged(logger, decision)) {
      writeDecision(
        logger,
        {
          face: 'policy',
          queue_id: request.get('queue_id'),
          client_address: request.get('client_address'),
          sender: request.get('sender'),
          recipient: request.get('recipient'),
          state: request.get('protocol_state'),
          size: requestSize(request),
        },
        decision,
      );
    }
    return decision.action;
  };
  const failed = (err: unknown): string => {
    logger.error({ err }, 'internal error while answering a policy request; sent the on_error reply');
    return opts.onError;
  };
  /** A string at once for a cache hit, a promise otherwise. */
  return (request: PolicyRequest): string | Promise<string> => {
    try {
      const recipient = wantsCheck(request, opts);
      if (recipient === null) return 'DUNNO';
      const decision = checker.check(recipient, requestSize(request));
      if (decision instanceof Promise) return decision.then((d) => answer(request, d), failed);
      return answer(request, decision);
    } catch (err) {
      return failed(err);
    }
  };
}
