/*
 * Quota state + message size -> verdict, and verdict -> the reply a face sends.
 *
 * The one place where "is this mailbox full?" is decided. Faces (policy server, milter, check)
 * only translate a Verdict into their wire form. Our own trouble is the "error" verdict, whose
 * reply is the operator's on_error answer: it must never become a permanent rejection by accident.
 */
import type { QuotaState } from '../sources/types.js';
import { NOTHING_PENDING, type Pending } from '../cache/reservations.js';
import { renderReply, warnReply } from './replies.js';

export type VerdictKind =
  | 'under_quota'
  | 'over_quota'
  | 'too_large'
  | 'unknown_mailbox'
  | 'error'
  /** Not our business: another protocol state, no recipient, or a domain we do not serve. */
  | 'not_checked';

export interface Verdict {
  kind: VerdictKind;
  /** Why, in a few words, for logs and the check command. */
  reason: string;
  /** Set when mail accepted and still on its way (reservations) is what made the mailbox full. */
  pending?: Pending;
}

/**
 * @param size the message size in bytes, 0 when unknown (Postfix sends size=0 without SIZE=).
 * @param pending what was accepted for the mailbox and is not yet in `state` (cache/reservations.ts).
 */
export function decide(state: QuotaState, size: number, pending: Pending = NOTHING_PENDING): Verdict {
  if (state.kind === 'unknown') return { kind: 'unknown_mailbox', reason: 'the source does not know this mailbox' };
  const { usageBytes: usage, limitBytes: limit } = state;
  if (limit !== null && size > limit) {
    return { kind: 'too_large', reason: `message of ${size} bytes is larger than the whole quota of ${limit}` };
  }
  if (limit !== null && usage >= limit) return { kind: 'over_quota', reason: `${usage} of ${limit} bytes used` };
  if (limit !== null && usage + size > limit) {
    return { kind: 'over_quota', reason: `${usage} of ${limit} bytes used, message of ${size} does not fit` };
  }
  if (state.limitMessages !== null && state.usageMessages !== null && state.usageMessages >= state.limitMessages) {
    return { kind: 'over_quota', reason: `${state.usageMessages} of ${state.limitMessages} messages` };
  }
  if (state.overQuota) return { kind: 'over_quota', reason: 'the source says over quota' };
  if (pending.messages > 0) {
    const onTheWay = `${pending.bytes} bytes in ${pending.messages} messages on their way`;
    // With no size given, a mailbox that the mail on its way fills exactly has no room left either.
    if (limit !== null && (usage + pending.bytes + size > limit || (size === 0 && usage + pending.bytes >= limit))) {
      return { kind: 'over_quota', reason: `${usage} of ${limit} bytes used and ${onTheWay}, message of ${size} does not fit`, pending };
    }
    const { usageMessages: messages, limitMessages: limitMessages } = state;
    if (limitMessages !== null && messages !== null && messages + pending.messages >= limitMessages) {
      return { kind: 'over_quota', reason: `${messages} of ${limitMessages} messages and ${onTheWay}`, pending };
    }
  }
  if (limit === null) return { kind: 'under_quota', reason: 'no limit' };
  return { kind: 'under_quota', reason: pending.messages > 0 ? `${usage} of ${limit} bytes used, ${pending.bytes} on their way` : `${usage} of ${limit} bytes used` };
}

export interface ReplyTexts {
  under_quota: string;
  over_quota: string;
  too_large: string;
  unknown: string;
  on_error: string;
}

/** The action for a verdict; dry-run turns deferring and rejecting answers into WARN. */
export function replyFor(verdict: Verdict, texts: ReplyTexts, dryRun: boolean, state: QuotaState | undefined, size: number): string {
  let template: string;
  switch (verdict.kind) {
    case 'over_quota':
      template = texts.over_quota;
      break;
    case 'too_large':
      template = texts.too_large;
      break;
    case 'under_quota':
      template = texts.under_quota;
      break;
    case 'unknown_mailbox':
      template = texts.unknown;
      break;
    case 'error':
      template = texts.on_error;
      break;
    case 'not_checked':
      return 'DUNNO';
  }
  // Figures only for a template that uses them (most replies are fixed texts).
  const reply = template.includes('{')
    ? renderReply(template, state?.kind === 'found' ? { usageBytes: state.usageBytes, limitBytes: state.limitBytes, sizeBytes: size } : { sizeBytes: size })
    : template;
  if (dryRun && refuses(reply)) return warnReply(reply);
  return reply;
}

/** Whether an access(5) reply refuses the mail (for now or for good) rather than letting it pass. */
export function refuses(reply: string): boolean {
  return /^(\d{3}\s|DEFER|REJECT)/i.test(reply);
}
