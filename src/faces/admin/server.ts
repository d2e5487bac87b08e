/*
 * The frontend's admin HTTP endpoint (admin.listen, 127.0.0.1:10036 by default; keep it on loopback):
 *   POST /invalidate?address=ADDRESS  drop the mailbox from every cache tier of every frontend
 *   POST /invalidate?key=MAILBOX      the same by mailbox key (overquota notify, Dovecot's %u)
 *   GET  /health                      liveness: 200 {"status":"ok","redis":"up"|"down"|"off"}
 *   GET  /ready                       readiness: 200 {"status":"ready",...}, or 503
 *                                     {"status":"degraded","redis":"down","sources":{"NAME":"timeout 1.5s ago"}}
 *   GET  /metrics                     Prometheus text format (runtime/prometheus.ts)
 * POST needs `Authorization: Bearer <admin.token>` when a token is set; off loopback a token is
 * required (start-up refuses without one). GETs name no mailbox and need none. Keys and addresses
 * are checked like the quota service's users and never echoed back unless valid. Bad input gets
 * 400 with a reason; it never throws into the frontend.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { DecisionCore } from '../../core/assemble.js';
import { bearerCheck } from '../../runtime/bearer.js';
import { MAX_ADDRESS_LENGTH } from '../../core/recipient.js';
import { checkMailboxUser } from '../../stores/paths.js';
import type { MetricsExport } from '../../runtime/metrics.js';

export interface AdminServerOptions {
  host: string;
  port: number;
  core: DecisionCore;
  /** Empty: POST without a token (allowed on loopback only; the caller checks). */
  token: string;
  logger: Logger;
  /** The policy and milter listeners, open before this endpoint starts (ready means they are up). */
  listeners: string[];
  /** Served at GET /metrics; absent: 404. */
  metrics?: MetricsExport;
}

export async function startAdminServer(opts: AdminServerOptions): Promise<{ address: string; close(): Promise<void> }> {
  const authorized = bearerCheck(opts.token);
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body) + '\n');
    };
    req.resume();
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      return reply(400, { error: 'bad request target' });
    }
    if (url.pathname === '/health' && req.method === 'GET') return reply(200, { status: 'ok', redis: opts.core.redisState() });
    if (url.pathname === '/ready' && req.method === 'GET') {
      return void opts.core.readiness().then(
        (r) => reply(r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'degraded', listeners: opts.listeners, redis: r.redis, sources: r.sources }),
        (err: unknown) => reply(503, { status: 'degraded', error: (err as Error).message }),
      );
    }
    if (url.pathname === '/metrics' && req.method === 'GET' && opts.metrics) {
      const metrics = opts.metrics;
      return void metrics.text().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.contentType });
          res.end(text);
        },
        (err: unknown) => {
          opts.logger.error({ err }, 'metrics could not be gathered');
          reply(500, { error: 'metrics could not be gathered' });
        },
      );
    }
    if (url.pathname !== '/invalidate') return reply(404, { error: 'no such endpoint' });
    if (req.method !== 'POST') return reply(405, { error: 'use POST' }, { allow: 'POST' });
    if (authorized && !authorized(req.headers.authorization)) return reply(401, { error: 'missing or wrong bearer token' }, { 'www-authenticate': 'Bearer' });
    const address = url.searchParams.get('address');
    const key = url.searchParams.get('key');
    if (!address && !key) return reply(400, { error: 'address= or key= is required' });
    if (address && address.length > MAX_ADDRESS_LENGTH) return reply(400, { error: `address longer than ${MAX_ADDRESS_LENGTH} characters` });
    const mailbox = address ? opts.core.keyOf(address) : key!;
    if (mailbox === null) return reply(400, { error: 'not an address' });
    const bad = checkMailboxUser(mailbox);
    if (bad) return reply(400, { error: `mailbox key: ${bad}` });
    opts.core.invalidateKey(mailbox).then(
      (done) => {
        opts.logger.info({ mailbox: done.key, published: done.published }, 'invalidated by the admin endpoint');
        reply(200, { mailbox: done.key, published: done.published });
      },
      (err: unknown) => {
        opts.logger.error({ err }, 'invalidation failed');
        reply(500, { error: 'invalidation failed' });
      },
    );
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: `${a.address}:${a.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
