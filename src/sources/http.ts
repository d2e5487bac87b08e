/*
 * Quota source over HTTP: our quota service (JSON or text) or an existing quota.cgi, unchanged.
 *
 * One undici Pool per backend origin, keep-alive, a bound on concurrent connections. Every way a
 * backend can fail (refused, reset, slow, 500, an HTML error page, a huge body) becomes a
 * SourceError; nothing here may throw anything else or hang past the caller's signal.
 */
import { Pool, errors as undiciErrors } from 'undici';
import { parseJsonAnswer, parseTextAnswer, MAX_ANSWER_BYTES } from './quota-answer.js';
import { SourceError, type QuotaSource, type QuotaState } from './types.js';

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

  async lookup(key: string, signal: AbortSignal): Promise<QuotaState> {
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
      if (/^\s*(UNKNOWN\b|\{)/.test(body)) return type.includes('json') ? parseJsonAnswer(body) : parseTextAnswer(body);
      throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} answered 404 for ${url.pathname}: check the URL template`);
    }
    if (res.statusCode !== 200) {
      throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} answered HTTP ${res.statusCode}: ${body.trim().slice(0, 120)}`);
    }
    return type.includes('json') ? parseJsonAnswer(body) : parseTextAnswer(body);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
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
