/*
 * The one log line per checked recipient, the same for every face (policy, milter).
 */
import type { Logger } from 'pino';
import type { Decision } from './checker.js';

export interface DecisionContext {
  queue_id?: string;
  client_address?: string;
  sender?: string;
  recipient?: string;
  /** Where in the SMTP session: RCPT, END-OF-MESSAGE. */
  state?: string;
  size: number;
  /** policy or milter. */
  face: string;
}

export function logDecision(logger: Logger, ctx: DecisionContext, d: Decision): void {
  const line = {
    ...ctx,
    queue_id: ctx.queue_id || undefined,
    mailbox: d.recipient?.key,
    verdict: d.verdict.kind,
    reason: d.verdict.reason,
    source: d.source ?? undefined,
    cache: d.cache ?? undefined,
    usage: d.state?.kind === 'found' ? d.state.usageBytes : undefined,
    limit: d.state?.kind === 'found' ? d.state.limitBytes : undefined,
    error: d.error?.code,
    ms: d.ms,
    action: d.action,
  };
  if (d.verdict.kind === 'error') logger.warn(line, 'decision');
  else if (d.verdict.kind === 'not_checked') logger.debug(line, 'decision');
  else logger.info(line, 'decision');
}
