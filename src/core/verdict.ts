/*
 * Quota state + message size -> verdict, and verdict -> the reply a face sends.
 *
 * The one place where "is this mailbox full?" is decided. Faces (policy server, milter, check)
 * only translate a Verdict into their wire form. Our own trouble is the "error" verdict, whose
 * reply is the operator's on_error answer: it must never become a permanent rejection by accident.
 */
import type { QuotaState } from '../quota.js';
import { NOTHING_PENDING, type Pending } from '../cache/reservations.js';
import { parseReply, renderReply, warnReply, type Reply } from './replies.js';

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

/** A DUNNO: what a recipient that is not ours gets (another state, no address, a domain not served). */
export const NOT_OURS: Reply = Object.freeze(parseReply('DUNNO'));

/**
 * The configured replies, parsed once: the reply for a verdict is then a lookup, except for a
 * template with figures ({usage} ...), rendered and parsed per decision. Dry run turns each
 * refusing reply into its WARN form, also once.
 */
export class Replies {
  /** Parsed once; null for a template with figures ({usage} ...), rendered per decision. */
  private readonly fixed: Record<Exclude<VerdictKind, 'not_checked'>, Reply | null>;

  constructor(
    private readonly texts: ReplyTexts,
    private readonly dryRun: boolean,
  ) {
    const prepared = (t: string) => (t.includes('{') ? null : this.softened(parseReply(t)));
    this.fixed = {
      under_quota: prepared(texts.under_quota),
      over_quota: prepared(texts.over_quota),
      too_large: prepared(texts.too_large),
      unknown_mailbox: prepared(texts.unknown),
      error: prepared(texts.on_error),
    };
  }

  /** The reply for a verdict. */
  for(verdict: Verdict, state: QuotaState | null, size: number): Reply {
    if (verdict.kind === 'not_checked') return NOT_OURS;
    const fixed = this.fixed[verdict.kind];
    if (fixed !== null) return fixed;
    const template = verdict.kind === 'unknown_mailbox' ? this.texts.unknown : verdict.kind === 'error' ? this.texts.on_error : this.texts[verdict.kind];
    const figures = state?.kind === 'found' ? { usageBytes: state.usageBytes, limitBytes: state.limitBytes, sizeBytes: size } : { sizeBytes: size };
    return this.softened(parseReply(renderReply(template, figures)));
  }

  private softened(reply: Reply): Reply {
    return this.dryRun && reply.kind === 'refuse' ? warnReply(reply) : reply;
  }
}
