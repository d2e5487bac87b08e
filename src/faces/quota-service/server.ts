/*
 * The quota service: a small HTTP face over one local QuotaSource, run on each mail store.
 * It replaces the seed's quota.cgi with the same one-line text answer, plus JSON:
 *
 *   GET /quota?u=USER  (and /cgi-bin/quota.cgi?u=USER)  200 "OK|OVERQUOTA <user> <size> <quota>\n"
 *                                                        404 "UNKNOWN <user>\n"
 *   GET /quota.json?u=USER   the same as {"user","state","usage","limit","source"}
 *   GET /health              liveness: 200 {"status":"ok","source"} while the service answers
 *   GET /ready               readiness: 200 {"status":"ready","source"} when the store root can be
 *                            read, else 503 {"status":"failing","source","reason"}
 *   GET /metrics             Prometheus text format (runtime/prometheus.ts)
 *                            (these three need no token: they name no mailbox)
 *   POST /invalidate?u=USER  tell every frontend to forget USER's cached state (needs redis.url;
 *                            needs the token when the listener is not on loopback)
 *
 * It must never crash on any input, never answer OK for a lookup that failed (503 instead: the
 * frontend then applies its on_error policy), never echo an invalid user back, and never refuse a
 * lookup for being busy while it can still queue it: a frontend that gives up on us gives its
 * on_error answer (accepted mail, bounced later). Lookups are answered as they come, at most
 * maxLookups at a time (beyond that, 503 with Retry-After: frontends ask again within their
 * budget); each waits only within its own deadline (our lookupTimeoutMs, and the client hanging
 * up). What is expensive, a Maildir recount, is bounded by the store itself (its scan slots,
 * quota_service.max_concurrent_scans): there a lookup waits for a slot, it is not refused.
 * It does not close the store: the caller created it.
 */

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { checkMailboxUser } from '../../stores/paths.js';
import { healthOf, SourceError, type QuotaSource, type QuotaState } from '../../quota.js';
import { NO_METRICS, type Metrics, type MetricsExport, type QuotaServiceEndpoint } from '../../runtime/metrics.js';
import { drainThenCut } from '../../runtime/shutdown.js';
import { bearerCheck, isLoopback } from '../../runtime/bearer.js';
import { fail, plain, json, render, ROUTES, safePath, send, userParameter, type Answer } from './answers.js';

/** Longest request target; a mailbox key is at most 255 bytes, 3x that percent-encoded, plus the path. */
export const MAX_URL_LENGTH = 2048;
/**
 * Lookups being answered at once, waiting ones included (quota_service.max_lookups): 64 frontends
 * of 16 connections each. A waiting lookup costs a request object and a promise, a few KB.
 */
export const DEFAULT_MAX_LOOKUPS = 1024;
/**
 * Per-lookup budget, for callers that never hang up. A frontend's is shorter (source.timeout,
 * 1.5 s): when it gives up it drops the connection, and the lookup stops then (CLIENT_GONE).
 */
export const DEFAULT_LOOKUP_TIMEOUT_MS = 10_000;
/* Slow or idle clients must not hold sockets: the frontend keeps connections alive between lookups. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;
const RETRY_AFTER_SECONDS = '1';
/*
 * Longer than any frontend waits (source.timeout 1.5 s within a 2 s latency budget: a lookup it still
 * waits for gets its answer), and far under systemd's stop timeout (TimeoutStopSec=30s in the unit).
 * Callers that never hang up (lookupTimeoutMs, 10 s) may be cut.
 */
const DEFAULT_SHUTDOWN_GRACE_MS = 5_000;
const LOOKUP_TIMED_OUT = new SourceError('SOURCE_TIMEOUT', 'quota lookup took too long');
const CLIENT_GONE = new SourceError('SOURCE_TIMEOUT', 'the client closed the connection');

export interface QuotaServiceOptions {
  host: string;
  /** 0: an ephemeral port, reported back. */
  port: number;
  store: QuotaSource;
  /** When set, quota endpoints require `Authorization: Bearer <token>`. */
  token?: string;
  logger: Logger;
  /** Lookups being answered at once, waiting ones included; more are answered 503 busy. */
  maxLookups?: number;
  lookupTimeoutMs?: number;
  /** Publishes "forget USER" to the frontends' shared cache; absent without Redis. */
  publishInvalidation?: (user: string) => Promise<boolean>;
  /** Longest wait at close() for requests being answered before their connections are cut. */
  shutdownGraceMs?: number;
  /** What is counted, and served at GET /metrics; absent: nothing (and /metrics is 404). */
  metrics?: Metrics & MetricsExport;
}

/** A request path -> the endpoint counted (bounded: never the path itself). */
const ENDPOINTS: Record<string, QuotaServiceEndpoint> = {
  '/quota': 'quota',
  '/cgi-bin/quota.cgi': 'quota.cgi',
  '/quota.json': 'quota.json',
  '/health': 'health',
  '/ready': 'ready',
  '/metrics': 'metrics',
  '/invalidate': 'invalidate',
};

export interface QuotaService {
  port: number;
  close(): Promise<void>;
}

export async function startQuotaService(opts: QuotaServiceOptions): Promise<QuotaService> {
  const maxLookups = opts.maxLookups ?? DEFAULT_MAX_LOOKUPS;
  if (!Number.isInteger(maxLookups) || maxLookups < 1) throw new Error(`quota_service.max_lookups ${maxLookups}: expected a whole number >= 1`);
  const timeoutMs = opts.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS;
  const authorized = bearerCheck(opts.token ?? '');
  // Anyone who reaches the port could make every frontend forget its cache (and ask Redis for it).
  if (opts.publishInvalidation && authorized === null && !isLoopback(opts.host)) {
    throw new Error(`the quota service on ${opts.host} (not loopback) offers POST /invalidate: it needs a token`);
  }
  const metrics = opts.metrics ?? NO_METRICS;
  let active = 0;
  metrics.lookupsInFlight(() => active);
  /** Requests received and not yet answered (lookups, and the rest). */
  let inFlight = 0;
  let closing = false;

  async function answer(req: IncomingMessage, res: ServerResponse): Promise<Answer> {
    const target = req.url ?? '';
    if (target.length > MAX_URL_LENGTH) return plain(414, 'ERROR request URL too long');
    const q = target.indexOf('?');
    const pathname = q === -1 ? target : target.slice(0, q);
    const query = q === -1 ? '' : target.slice(q + 1);
    const format = ROUTES[pathname];
    const probe = pathname === '/health' || pathname === '/ready' || pathname === '/metrics';
    if (probe || format !== undefined) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        return { ...plain(405, 'ERROR method not allowed'), headers: { allow: 'GET, HEAD' } };
      }
    }
    if (pathname === '/health') return json(200, { status: 'ok', source: opts.store.name });
    if (pathname === '/ready') return ready();
    if (pathname === '/metrics') return opts.metrics ? { status: 200, body: await opts.metrics.text(), format: 'text', headers: { 'content-type': opts.metrics.contentType } } : plain(404, 'ERROR no such endpoint');
    if (pathname === '/invalidate') return invalidate(req, query);
    if (format === undefined) return plain(404, 'ERROR no such endpoint');

    if (authorized !== null && !authorized(req.headers.authorization)) {
      return { ...fail(401, 'missing or wrong bearer token', format), headers: { 'www-authenticate': 'Bearer' } };
    }
    const user = userParameter(query);
    if (typeof user !== 'string') return fail(400, user.error, format);
    const bad = checkMailboxUser(user);
    if (bad) return fail(400, bad, format);

    if (active >= maxLookups) {
      return { ...fail(503, 'busy, try again', format), headers: { 'retry-after': RETRY_AFTER_SECONDS }, user };
    }
    active++;
    // Stopped by our time limit, or when the client hangs up (it no longer needs the figure: stop
    // a long scan). Set up per lookup, and aborted with a ready-made reason: AbortSignal.any,
    // AbortSignal.timeout and a DOMException on every close were a sixth of this service's CPU.
    const budget = new AbortController();
    const timer = setTimeout(() => budget.abort(LOOKUP_TIMED_OUT), timeoutMs);
    const gone = () => budget.abort(CLIENT_GONE);
    res.once('close', gone);
    let state: QuotaState;
    try {
      state = await opts.store.lookup(user, budget.signal);
    } catch (err) {
      const code = err instanceof SourceError ? err.code : 'INTERNAL';
      const status = code === 'SOURCE_BAD_KEY' ? 400 : 503;
      const reason = err instanceof SourceError ? `${code}: ${err.message}` : 'internal error';
      if (!(err instanceof SourceError)) opts.logger.error({ err, user }, 'quota lookup threw');
      return { ...fail(status, reason, format), user };
    } finally {
      active--;
      clearTimeout(timer);
      res.off('close', gone);
    }
    return { ...render(user, state, format, opts.store.name), user };
  }

  /** Ready: the store root can be read (within quota.ts HEALTH_TIMEOUT_MS: a hung mount must not hang this too). */
  async function ready(): Promise<Answer> {
    const source = opts.store.name;
    const reason = await healthOf(opts.store);
    if (reason === null) return json(200, { status: 'ready', source });
    return { ...json(503, { status: 'failing', source, reason }), error: reason };
  }

  async function invalidate(req: IncomingMessage, query: string): Promise<Answer> {
    if (req.method !== 'POST') return { ...plain(405, 'ERROR use POST'), headers: { allow: 'POST' } };
    if (!opts.publishInvalidation) return plain(404, 'ERROR no shared cache to invalidate (set redis.url)');
    if (authorized !== null && !authorized(req.headers.authorization)) {
      return { ...fail(401, 'missing or wrong bearer token', 'text'), headers: { 'www-authenticate': 'Bearer' } };
    }
    const user = userParameter(query);
    if (typeof user !== 'string') return fail(400, user.error, 'text');
    const bad = checkMailboxUser(user);
    if (bad) return fail(400, bad, 'text');
    const published = await opts.publishInvalidation(user);
    return published ? { ...plain(200, `INVALIDATED ${user}`), user } : { ...fail(503, 'redis unavailable', 'text'), user };
  }

  const server = createServer((req, res) => {
    const started = performance.now();
    inFlight++;
    res.once('close', () => inFlight--);
    // GET bodies are meaningless here; drain so keep-alive works.
    req.resume();
    answer(req, res)
      .catch((err: unknown): Answer => {
        opts.logger.error({ err }, 'quota service handler failed');
        return plain(500, 'ERROR internal error');
      })
      .then((a) => {
        // Shutting down: this answer is the connection's last (the frontend opens a new one elsewhere).
        if (closing) res.shouldKeepAlive = false;
        send(res, a);
        metrics.quotaServiceRequest(ENDPOINTS[safePath(req.url)] ?? 'other', a.status);
        const ms = Math.round((performance.now() - started) * 10) / 10;
        const line = { user: a.user, status: a.status, ms, path: safePath(req.url), error: a.error };
        if (a.status >= 500) opts.logger.warn(line, 'quota request');
        else opts.logger.info(line, 'quota request');
      })
      .catch(() => undefined);
  });
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  // Malformed HTTP never reaches the handler; answer 400 if the socket still can, then drop it.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    opts.logger.info({ code: err.code }, 'bad HTTP request');
    if (socket.writable && !socket.writableEnded) {
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    }
    socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => opts.logger.error({ err }, 'quota service socket error'));
  const port = (server.address() as AddressInfo).port;
  opts.logger.info({ host: opts.host, port, source: opts.store.name }, 'quota service listening');

  return {
    port,
    close: () =>
      // Idle keep-alive connections (frontends hold them open) close at once; the requests already
      // being looked up are answered first.
      drainThenCut(
        {
          stopAccepting: () => {
            closing = true;
            return new Promise<void>((resolve) => server.close(() => resolve()));
          },
          finishIdle: () => server.closeIdleConnections(),
          busy: () => inFlight > 0,
          cut: () => server.closeAllConnections(),
        },
        opts.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS,
      ),
  };
}
