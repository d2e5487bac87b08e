/*
 * A policy request -> the action to send, with one log line per checked recipient.
 *
 * Only RCPT is checked (and END-OF-MESSAGE with a recipient, when enabled: Postfix names the
 * recipient there only when the message has exactly one, and the real size is known). Every other
 * state gets DUNNO. An END-OF-MESSAGE request (sent when the operator lists the policy service in
 * smtpd_end_of_data_restrictions) also gives the message's reservations their real size. Never
 * throws: a bug here becomes the on_error reply, not a dropped session, and is counted and logged as
 * an error verdict.
 */
import type { Logger } from 'pino';
import type { PolicyRequest } from './codec.js';
import { failedDecision, type QuotaChecker, type Decision } from '../../core/checker.js';
import { parseReply, refuses } from '../../core/replies.js';
import { decisionLogged, writeDecision, type DecisionContext, type DecisionsLogged } from '../decision-line.js';
import { NO_METRICS, type FaceCounts } from '../../runtime/metrics.js';

export interface PolicyAnswerOptions {
  checkEndOfMessage: boolean;
  onError: string;
  /** log.decisions; all when absent. */
  decisions?: DecisionsLogged;
  /** The policy face's counts (runtime/metrics.ts), bound at start-up; absent: none. */
  counts?: FaceCounts;
}

/** Postfix sends size=0 (or nothing) when the client gave no SIZE=. */
export function requestSize(request: PolicyRequest): number {
  const size = request.get('size');
  if (size === undefined || size === '' || size === '0') return 0;
  return /^\d{1,15}$/.test(size) ? Number(size) : 0;
}

function protocolState(request: PolicyRequest): string {
  const given = request.get('protocol_state') ?? '';
  // Postfix writes it in capitals: only a hand-typed request needs the case folded.
  return given === 'RCPT' || given === 'END-OF-MESSAGE' ? given : given.toUpperCase();
}

/*
 * The transaction, for reservations: Postfix's `instance` names one message on one smtpd
 * connection (several RCPTs of it share it): "%x.%lx.%lx.%x" of smtpd's pid, the arrival time in
 * seconds and microseconds, and a sequence number.
 */
function transactionOf(request: PolicyRequest): string | null {
  const instance = request.get('instance');
  return instance ? instance : null;
}

/** What the decision line says about the request. */
function contextOf(request: PolicyRequest): DecisionContext {
  return {
    face: 'policy',
    queue_id: request.get('queue_id'),
    client_address: request.get('client_address'),
    sender: request.get('sender'),
    recipient: request.get('recipient'),
    state: request.get('protocol_state'),
    size: requestSize(request),
  };
}

export function makePolicyHandler(checker: QuotaChecker, opts: PolicyAnswerOptions, logger: Logger) {
  const counted = (opts.counts ?? NO_METRICS.face('policy')).decisions;
  const onError = parseReply(opts.onError);
  const answer = (request: PolicyRequest, decision: Decision): string => {
    counted[decision.verdict.kind].inc();
    // Checked first: at warn (no decision lines) not even the context is gathered.
    if (decisionLogged(logger, decision, opts.decisions)) writeDecision(logger, contextOf(request), decision);
    // Postfix's own words: the reply as the operator configured it (validated as access(5)).
    return decision.reply.words;
  };
  /** A bug: on_error, counted and logged as an error verdict (an operator sees it), with its stack. */
  const failed = (request: PolicyRequest, err: unknown): string => {
    logger.error({ err }, 'internal error while answering a policy request; sent the on_error reply');
    try {
      return answer(request, failedDecision(err, onError));
    } catch {
      // The bug may be in reading the request itself: the reply goes out uncounted and unlogged.
      return onError.words;
    }
  };
  /** The whole message is refused at its end: what it reserved will not arrive. */
  const endOfMessage = (request: PolicyRequest, txn: string | null, d: Decision): string => {
    if (txn !== null && refuses(d.reply)) checker.giveUp(txn);
    return answer(request, d);
  };
  /** A string at once for a cache hit, a promise otherwise. */
  return (request: PolicyRequest): string | Promise<string> => {
    try {
      const recipient = request.get('recipient');
      const state = protocolState(request);
      if (state === 'RCPT') {
        if (!recipient) return 'DUNNO';
        const decision = checker.check(recipient, requestSize(request), transactionOf(request));
        if (decision instanceof Promise) return decision.then((d) => answer(request, d), (err: unknown) => failed(request, err));
        return answer(request, decision);
      }
      if (state !== 'END-OF-MESSAGE') return 'DUNNO';
      const txn = transactionOf(request);
      const size = requestSize(request);
      if (txn !== null && size > 0) checker.messageSize(txn, size);
      if (!recipient || !opts.checkEndOfMessage) return 'DUNNO';
      const decision = checker.check(recipient, size, txn);
      if (decision instanceof Promise) return decision.then((d) => endOfMessage(request, txn, d), (err: unknown) => failed(request, err));
      return endOfMessage(request, txn, decision);
    } catch (err) {
      return failed(request, err);
    }
  };
}
