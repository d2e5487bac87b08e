/*
 * Quota source over HTTP: our quota service (JSON or text) or an existing quota.cgi, unchanged.
 *
 * Every way a backend can fail (refused, reset, slow, 500, an HTML error page, a huge body)
 * becomes a SourceError; nothing here may throw anything else or hang past the caller's signal.
 * A `503` with `Retry-After` (our quota service's "busy, try again") or a `429` is busy, not
 * broken: asked again within the signal (http-client.ts, untilNotBusy).
 */
import type { Pool } from 'undici';
import { parseJsonAnswer, parseTextAnswer } from './quota-answer.js';
import { asSourceError, BUSY, openPool, readBounded, untilNotBusy } from './http-client.js';
import { SourceError, type QuotaSource, type QuotaState } from '../quota.js';

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
    this.pool = openPool(this.origin, opts.maxConnections);
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
