/*
 * What every quota source answers about one mailbox, and how it fails.
 *
 * A source turns a mailbox key into a QuotaState or throws a SourceError. It never decides what
 * Postfix is told: that is the core's job (core/verdict.ts). Sizes are bytes, counts are messages;
 * null means "no limit".
 *
 * A byte limit below MIN_PLAUSIBLE_LIMIT_BYTES is not believed, from any source: the lookup fails
 * with SOURCE_BAD_ANSWER (the core answers on_error) rather than returning it. Such a limit cannot
 * hold one delivered message (the trace and origin headers alone, Return-Path, Delivered-To,
 * Received, From, Date, Message-ID, take a few hundred bytes), so it is a broken figure, not a
 * quota; believed, `OK user 0 1` made every message with a SIZE get the permanent 552 5.2.3.
 * 0 keeps its meaning of "no limit" (the seed's text, Maildir++, Dovecot) and is not affected.
 */

/** The mailbox exists and these are its figures. */
export interface MailboxQuota {
  kind: 'found';
  usageBytes: number;
  /** null: unlimited storage. */
  limitBytes: number | null;
  usageMessages: number | null;
  /** null: no limit on the number of messages. */
  limitMessages: number | null;
  /** The source's own judgement, e.g. the seed CGI's OVERQUOTA, kept even when the figures disagree. */
  overQuota: boolean;
}

/** The source does not know this mailbox (an alias, a typo, a user on another backend). */
export interface UnknownMailbox {
  kind: 'unknown';
}

export type QuotaState = MailboxQuota | UnknownMailbox;

export interface QuotaSource {
  /** The name logged with each decision, e.g. "http:backend1" or "local:/var/mail". */
  readonly name: string;
  /** Must honour the signal: the caller aborts it when the latency budget is spent. */
  lookup(key: string, signal: AbortSignal): Promise<QuotaState>;
  /** Why the source cannot answer now (a local store's root unreadable), or null; absent: not checked. */
  health?(): Promise<string | null>;
  close(): Promise<void>;
}

/** Codes a person can act on; they appear in logs as `error.code`. */
export type SourceErrorCode =
  | 'SOURCE_TIMEOUT'
  | 'SOURCE_UNREACHABLE'
  | 'SOURCE_HTTP_STATUS'
  | 'SOURCE_BAD_ANSWER'
  | 'SOURCE_IO'
  | 'SOURCE_BAD_KEY'
  | 'SOURCE_BUSY';

export class SourceError extends Error {
  constructor(
    readonly code: SourceErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SourceError';
  }
}

export function found(
  usageBytes: number,
  limitBytes: number | null,
  extra: Partial<Omit<MailboxQuota, 'kind' | 'usageBytes' | 'limitBytes'>> = {},
): MailboxQuota {
  return {
    kind: 'found',
    usageBytes,
    limitBytes,
    usageMessages: extra.usageMessages ?? null,
    limitMessages: extra.limitMessages ?? null,
    overQuota: extra.overQuota ?? false,
  };
}

/** Smallest byte limit believed (see the header); 0 means none and is read before this applies. */
export const MIN_PLAUSIBLE_LIMIT_BYTES = 512;

/** Throws SOURCE_BAD_ANSWER for a byte limit too small to be a quota; `whose` names where it came from. */
export function checkPlausibleLimit(limitBytes: number | null, whose: string): void {
  if (limitBytes !== null && limitBytes < MIN_PLAUSIBLE_LIMIT_BYTES) {
    throw new SourceError(
      'SOURCE_BAD_ANSWER',
      `${whose} names a limit of ${limitBytes} bytes: below ${MIN_PLAUSIBLE_LIMIT_BYTES}, no mailbox could hold one message, not believed`,
    );
  }
}

/**
 * Whether figures say full now, whatever the next message's size: usage at or past a byte limit,
 * or a message count at or past a message limit (null: no such limit, or not counted). The one
 * rule; stores use it for their own judgement, the quota service for its answer, the cache for TTLs.
 */
export function atLimit(usageBytes: number, limitBytes: number | null, usageMessages: number | null, limitMessages: number | null): boolean {
  return (limitBytes !== null && usageBytes >= limitBytes) || (limitMessages !== null && usageMessages !== null && usageMessages >= limitMessages);
}

/** Full now: by its figures, or because the source says so (the seed's OVERQUOTA). */
export function isFull(state: MailboxQuota): boolean {
  return state.overQuota || atLimit(state.usageBytes, state.limitBytes, state.usageMessages, state.limitMessages);
}

/** Longest wait for a source's own health check: a hung mount must not hang /ready (or start-up) too. */
export const HEALTH_TIMEOUT_MS = 2_000;

/** Why `source` cannot answer now (its health()), or null; a check that hangs or throws says so. */
export async function healthOf(source: QuotaSource, timeoutMs = HEALTH_TIMEOUT_MS): Promise<string | null> {
  if (!source.health) return null;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`the store did not answer within ${timeoutMs} ms`), timeoutMs);
  });
  try {
    return await Promise.race([source.health(), late]);
  } catch (err) {
    return `health check failed: ${(err as Error).message}`;
  } finally {
    clearTimeout(timer);
  }
}
