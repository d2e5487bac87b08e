/*
 * Quota source over HTTP: our quota service (JSON or text) or an existing quota.cgi, unchanged.
 *
 * One undici Pool per backend origin, keep-alive, a bound on concurrent connections. Every way a
 * backend can fail (refused, reset, slow, 500, an HTML error page, a huge body) becomes a
 * SourceError; nothing here may throw anything else or hang past the caller's signal.
 *
 * Busy is not broken: a `503` with `Retry-After` (our quota service's "busy, try again") or a
 * `429` is asked again after a short pause, for as long as the caller's signal allows; only then
 * does it become an error (SOURCE_BUSY, and the core's on_error). Turning "busy" into an error at
 * once let a burst of lookups of full mailboxes through as accepted mail. The Retry-After value
 * itself (whole seconds) is not waited out: a frontend's budget is a second or two. A lookup that
 * finds every pooled connection in use waits in the pool's queue, under the same signal.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, errors as undiciErrors } from 'undici';
import { parseJsonAnswer, parseTextAnswer, MAX_ANSWER_BYTES } from './quota-answer.js';
import { SourceError, type QuotaSource, type QuotaState } from '../quota.js';

/** First pause before asking a busy backend again; it doubles up to BUSY_RETRY_MAX_PAUSE_MS. */
export const BUSY_RETRY_FIRST_PAUSE_MS = 10;
/** Longest pause between two tries: several tries still fit in a frontend's 1.5 s source timeout. */
export const BUSY_RETRY_MAX_PAUSE_MS = 200;

/** What a try answers when the backend said "busy, try again" (untilNotBusy asks again). */
export const BUSY = Symbol('busy');

export interface HttpSourceOptions {
  /** e.g. http://mx1:10035/quota?u={key}; {key} is URL-encoded. */
  urlTemplate: string;
  token?: string;
  maxConnections: number;
  /** Shown in logs; defaults to http:<host:port>. */
  name?: string;
}

export class HttpSource implements QuotaSource {
  readonly name: string;
  private readonly pool: Pool;
  private readonly origin: string;
  private readonly headers: Record<string, string>;

  constructor(private readonly opts: HttpSourceOptions) {
    const url = new URL(opts.urlTemplate.replaceAll('{key}', 'k'));
    this.origin = url.origin;
    // Host and path: two CGIs on one host are two backends, with separate cache entries.
    this.name = opts.name ?? `http:${url.host}${url.pathname}`;
    this.pool = new Pool(this.origin, {
      connections: opts.maxConnections,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: 0,
      bodyTimeout: 0,
    });
    this.headers = { accept: 'application/json, text/plain;q=0.9' };
    if (opts.token) this.headers.authorization = `Bearer ${opts.token}`;
  }

  lookup(key: string, signal: AbortSignal): Promise<QuotaState> {
    return untilNotBusy(signal, this.name, () => this.ask(key, signal));
  }

  private async ask(key: string, signal: AbortSignal): Promise<QuotaState | typeof BUSY> {
    const url = new URL(this.opts.urlTemplate.replaceAll('{key}', encodeURIComponent(key)));
    let res;
    try {
      res = await this.pool.request({ method: 'GET', path: url.pathname + url.search, headers: this.headers, signal });
    } catch (err) {
      throw asSourceError(err, signal, this.name);
    }
    let body: string;
    try {
      body = await readBounded(res.body, signal);
    } catch (err) {
      throw asSourceError(err, signal, this.name);
    }
    const type = String(res.headers['content-type'] ?? '');
    if (res.statusCode === 404) {
      // Our service says unknown with 404; a plain 404 page means a wrong URL, not a missing mailbox.
      if (/^\s*(UNKNOWN\b|\{)/.test(body)) return type.includes('json') ? parseJsonAnswer(body, key) : parseTextAnswer(body, key);
      throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} answered 404 for ${url.pathname}: check the URL template`);
    }
    if ((res.statusCode === 503 && res.headers['retry-after'] !== undefined) || res.statusCode === 429) return BUSY;
    if (res.statusCode !== 200) {
      throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} answered HTTP ${res.statusCode}: ${body.trim().slice(0, 120)}`);
    }
    return type.includes('json') ? parseJsonAnswer(body, key) : parseTextAnswer(body, key);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
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
