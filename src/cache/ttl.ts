/*
 * How long a quota state may be reused. Errors are never cached: they are not states.
 */
import { isFull, type QuotaState } from '../sources/types.js';

export interface TtlPolicy {
  under_quota: number;
  over_quota: number;
  unknown: number;
}

export function ttlFor(state: QuotaState, policy: TtlPolicy): number {
  if (state.kind === 'unknown') return policy.unknown;
  return isFull(state) ? policy.over_quota : policy.under_quota;
}
