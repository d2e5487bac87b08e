/*
 * Quota state + message size -> verdict, and verdict -> the reply a face sends.
 *
 * The one place where "is this mailbox full?" is decided. Faces (policy server, milter, check)
 * only translate a Verdict into their wire form. Our own trouble is the "error" verdict, whose
 * reply is the operator's on_error answer: it must never become a permanent rejection by accident.
 */
import { atLimit, isFull, type MailboxQuota, type QuotaState } from '../quota.js';
import { NOTHING_PENDING, type Pending } from '../cache/reservations.js';
import { parseReply, refuses, renderReply, warnReply, type Reply } from './replies.js';

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
  if (isFull(state)) return { kind: 'over_quota', reason: whyFull(state) };
  if (!fits(usage, size, limit)) return { kind: 'over_quota', reason: `${usage} of ${limit} bytes used, message of ${size} does not fit` };
  if (pending.messages > 0) {
    const onTheWay = `${pending.bytes} bytes in ${pending.messages} messages on their way`;
    const usageThen = usage + pending.bytes;
    // With no size given, a mailbox that the mail on its way fills exactly has no room left either.
    if (atLimit(usageThen, limit, null, null) || !fits(usageThen, size, limit)) {
      return { kind: 'over_quota', reason: `${usage} of ${limit} bytes used and ${onTheWay}, message of ${size} does not fit`, pending };
    }
    const { usageMessages: messages, limitMessages: limitMessages } = state;
    if (messages !== null && atLimit(0, null, messages + pending.messages, limitMessages)) {
      return { kind: 'over_quota', reason: `${messages} of ${limitMessages} messages and ${onTheWay}`, pending };
    }
  }
  if (limit === null) return { kind: 'under_quota', reason: 'no limit' };
  return { kind: 'under_quota', reason: pending.messages > 0 ? `${usage} of ${limit} bytes used, ${pending.bytes} on their way` : `${usage} of ${limit} bytes used` };
}

/** Whether a message of `size` bytes fits in the room left (no byte limit: always). */
function fits(usage: number, size: number, limit: number | null): boolean {
  return limit === null || usage + size <= limit;
}

/** Which of quota.ts's reasons for full (isFull) holds, in words: bytes, messages, or the source's own word. */
function whyFull(state: MailboxQuota): string {
  if (atLimit(state.usageBytes, state.limitBytes, null, null)) return `${state.usageBytes} of ${state.limitBytes} bytes used`;
  if (atLimit(0, null, state.usageMessages, state.limitMessages)) return `${state.usageMessages} of ${state.limitMessages} messages`;
  return 'the source says over quota';
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
    return this.dryRun && refuses(reply) ? warnReply(reply) : reply;
  }
}
