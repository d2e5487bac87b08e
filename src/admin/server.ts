/*
 * The frontend's admin HTTP endpoint (admin.listen, off by default; keep it on loopback):
 *   POST /invalidate?address=ADDRESS  drop the mailbox from every cache tier of every frontend
 *   POST /invalidate?key=MAILBOX      the same by mailbox key (overquota notify, Dovecot's %u)
 *   GET  /health                      {"status":"ok","redis":true|false}
 * Bad input gets 400 with a reason; it never throws into the frontend.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { DecisionCore } from '../app.js';

export async function startAdminServer(opts: { host: string; port: number; core: DecisionCore; redisOn: boolean; logger: Logger }): Promise<{ address: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body) + '\n');
    };
    req.resume();
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      return reply(400, { error: 'bad request target' });
    }
    if (url.pathname === '/health' && req.method === 'GET') return reply(200, { status: 'ok', redis: opts.redisOn });
    if (url.pathname !== '/invalidate') return reply(404, { error: 'no such endpoint' });
    if (req.method !== 'POST') return reply(405, { error: 'use POST' });
    const address = url.searchParams.get('address');
    const key = url.searchParams.get('key');
    if (!address && !key) return reply(400, { error: 'address= or key= is required' });
    (address ? opts.core.invalidate(address) : opts.core.invalidateKey(key!)).then(
      (done) => {
        if (!done) return reply(400, { error: 'not an address' });
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
