/*
 * How long a quota state may be reused. Errors are never cached: they are not states.
 *
 * Headroom-aware: an under-quota mailbox with plenty of room keeps the full TTL; in the last
 * near_limit_ratio of its quota the TTL shrinks in proportion to the room left, down to near_limit.
 * A filling mailbox is thus re-checked often just when it matters, so the window in which mail is
 * still accepted for a mailbox that has just become full stays small.
 */
import { isFull, type QuotaState } from '../quota.js';

export interface TtlPolicy {
  under_quota: number;
  over_quota: number;
  unknown: number;
  near_limit: number;
  near_limit_ratio: number;
}

export function ttlFor(state: QuotaState, policy: TtlPolicy): number {
  if (state.kind === 'unknown') return policy.unknown;
  if (isFull(state)) return policy.over_quota;
  const headroom = roomLeft(state.usageBytes, state.limitBytes, state.usageMessages, state.limitMessages);
  if (headroom >= policy.near_limit_ratio || policy.near_limit_ratio === 0) return policy.under_quota;
  const scaled = Math.round((policy.under_quota * headroom) / policy.near_limit_ratio);
  return Math.min(policy.under_quota, Math.max(policy.near_limit, scaled));
}

/** Fraction of the quota still free (bytes or messages, whichever is tighter); 1 with no limit. */
function roomLeft(usage: number, limit: number | null, usageMessages: number | null, limitMessages: number | null): number {
  let room = 1;
  if (limit !== null && limit > 0) room = Math.min(room, Math.max(0, (limit - usage) / limit));
  if (limitMessages !== null && limitMessages > 0 && usageMessages !== null) {
    room = Math.min(room, Math.max(0, (limitMessages - usageMessages) / limitMessages));
  }
  return room;
}
