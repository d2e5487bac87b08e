/*
 * What the HTTP sources (http.ts: quota service, quota.cgi; doveadm.ts: Dovecot) share: one undici
 * Pool per backend origin, a bounded read of an answer, every transport failure as a SourceError,
 * and asking a busy backend again within the caller's budget.
 *
 * Busy is not broken: turning "busy, try again" into an error at once let a burst of lookups of
 * full mailboxes through as accepted mail (issue 11). A try that says BUSY is repeated after a
 * short pause, growing and jittered, for as long as the caller's signal allows; only then does it
 * become SOURCE_BUSY (the core's on_error). A Retry-After value (whole seconds) is not waited out:
 * a frontend's budget is a second or two. A lookup that finds every pooled connection in use waits
 * in the pool's queue, under the same signal.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, errors as undiciErrors } from 'undici';
import { MAX_ANSWER_BYTES } from './quota-answer.js';
import { SourceError } from '../quota.js';

/** First pause before asking a busy backend again; it doubles up to BUSY_RETRY_MAX_PAUSE_MS. */
export const BUSY_RETRY_FIRST_PAUSE_MS = 10;
/** Longest pause between two tries: several tries still fit in a frontend's 1.5 s source timeout. */
export const BUSY_RETRY_MAX_PAUSE_MS = 200;

/** What a try answers when the backend said "busy, try again" (untilNotBusy asks again). */
export const BUSY = Symbol('busy');

/**
 * A backend's connection pool: keep-alive (30 s idle), one request per connection at a time, at
 * most `maxConnections`; no undici timeouts of its own, the caller's signal bounds every wait.
 */
export function openPool(origin: string, maxConnections: number): Pool {
  return new Pool(origin, { connections: maxConnections, pipelining: 1, keepAliveTimeout: 30_000, headersTimeout: 0, bodyTimeout: 0 });
}

/**
 * Calls `ask` until it gives something other than BUSY, pausing between tries (growing, jittered:
 * many frontends must not come back in step), while `signal` allows; then SOURCE_BUSY.
 */
export async function untilNotBusy<T>(signal: AbortSignal, name: string, ask: () => Promise<T | typeof BUSY>): Promise<T> {
  let pause = BUSY_RETRY_FIRST_PAUSE_MS;
  for (let tries = 1; ; tries++) {
    const answer = await ask();
    if (answer !== BUSY) return answer;
    try {
      await sleep(pause * (0.5 + Math.random() / 2), undefined, { signal });
    } catch {
      throw new SourceError('SOURCE_BUSY', `${name} was still busy after ${tries} tries when the time for this lookup ran out`);
    }
    pause = Math.min(pause * 2, BUSY_RETRY_MAX_PAUSE_MS);
  }
}

export async function readBounded(body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown }, signal: AbortSignal, maxBytes = MAX_ANSWER_BYTES): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      throw new SourceError('SOURCE_BAD_ANSWER', `answer longer than ${maxBytes} bytes`);
    }
    chunks.push(chunk);
    if (signal.aborted) break;
  }
  return Buffer.concat(chunks).toString('utf8');
}

export function asSourceError(err: unknown, signal: AbortSignal, name: string): SourceError {
  if (err instanceof SourceError) return err;
  if (signal.aborted) {
    return signal.reason instanceof SourceError ? signal.reason : new SourceError('SOURCE_TIMEOUT', `${name} did not answer in time`);
  }
  const e = err as { code?: string; message?: string };
  if (err instanceof undiciErrors.UndiciError || (e.code && /^(ECONN|EPIPE|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|EAI_)/.test(e.code))) {
    return new SourceError('SOURCE_UNREACHABLE', `${name}: ${e.code ?? ''} ${e.message ?? ''}`.trim(), { cause: err });
  }
  return new SourceError('SOURCE_UNREACHABLE', `${name}: ${String(e.message ?? err)}`, { cause: err });
}
