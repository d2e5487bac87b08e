/*
 * Test helper: HTTP servers that fail in the ways real backends fail, at the byte level, for the
 * fault matrix (test/fault-*.test.ts): silent after accepting, answering after 5 s, garbage, a
 * 500, closing in the middle of a body, a body that never ends. Each request is answered by a
 * Behaviour chosen from its path and body, so one server can play a good backend for some
 * mailboxes and a broken one for others (the doveadm stand-in does).
 *
 * Raw sockets rather than node:http: node:http cannot send a body shorter than its Content-Length
 * and then close, nor stay silent on one request of a keep-alive connection while it sends nothing.
 * It must never outlive close(): every socket is destroyed, every pending timer cleared.
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** How long the "answering after 5 s" backend waits before its (right) answer. */
export const SLOW_ANSWER_MS = 5000;
/** Chunk an endless body is written in (written again each time the socket drains). */
const ENDLESS_CHUNK = Buffer.alloc(16 * 1024, 'OK room 1000 65536\n');
/** Requests we read: a quota lookup is one line of headers and a body of a few hundred bytes. */
const MAX_REQUEST_BYTES = 64 * 1024;

export type Behaviour =
  /** A complete answer (after `delayMs`, if given). */
  | { kind: 'answer'; status: number; type: string; body: string; delayMs?: number }
  /** Read the request, never answer, never close. */
  | { kind: 'silent' }
  /** Status line, headers promising `body` and 64 bytes more, half of `body`, then close. */
  | { kind: 'mid-body'; body: string }
  /**
   * 200 with no length (ended by close) and a body that never ends: written as fast as the client
   * reads, or with `everyMs`, a few bytes at that interval (a trickle that never fills a buffer).
   */
  | { kind: 'endless'; everyMs?: number };

export interface FaultRequest {
  method: string;
  path: string;
  /** The `u` query parameter (our quota service's and quota.cgi's mailbox), or ''. */
  user: string;
  body: string;
}

export interface FaultServer {
  port: number;
  /** http://127.0.0.1:PORT + path. */
  url(path: string): string;
  /** Requests read so far. */
  requests: number;
  close(): Promise<void>;
}

export async function startFaultServer(choose: (req: FaultRequest) => Behaviour): Promise<FaultServer> {
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const state = { requests: 0 };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let pending = Buffer.alloc(0);
    let busy = false;
    const next = (): void => {
      if (busy || socket.destroyed) return;
      const request = takeRequest(pending);
      if (!request) {
        if (pending.length > MAX_REQUEST_BYTES) socket.destroy();
        return;
      }
      pending = pending.subarray(request.length);
      state.requests++;
      busy = true;
      play(socket, choose(request.req), timers, () => {
        busy = false;
        next();
      });
    };
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      next();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    url: (path) => `http://127.0.0.1:${port}${path}`,
    get requests() {
      return state.requests;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t);
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One whole request at the start of `buf` (headers and a Content-Length body), or null. */
function takeRequest(buf: Buffer): { req: FaultRequest; length: number } | null {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const head = buf.subarray(0, end).toString('latin1');
  const bodyLength = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
  if (buf.length < end + 4 + bodyLength) return null;
  const [method = '', target = ''] = head.split('\r\n')[0]!.split(' ');
  const url = new URL(target, 'http://x');
  return {
    req: { method, path: url.pathname, user: url.searchParams.get('u') ?? '', body: buf.subarray(end + 4, end + 4 + bodyLength).toString('utf8') },
    length: end + 4 + bodyLength,
  };
}

function head(status: number, type: string, length: number | null): string {
  return (
    `HTTP/1.1 ${status} ${status === 200 ? 'OK' : 'Trouble'}\r\ncontent-type: ${type}\r\n` +
    (length === null ? 'connection: close\r\n' : `content-length: ${length}\r\n`) +
    '\r\n'
  );
}

/** Acts out one behaviour on the socket; `done` when the connection may take its next request. */
function play(socket: net.Socket, b: Behaviour, timers: Set<NodeJS.Timeout>, done: () => void): void {
  switch (b.kind) {
    case 'answer': {
      const send = (): void => {
        const body = Buffer.from(b.body);
        socket.write(head(b.status, b.type, body.length));
        socket.write(body);
        done();
      };
      if (!b.delayMs) return send();
      const timer = setTimeout(() => {
        timers.delete(timer);
        send();
      }, b.delayMs);
      timers.add(timer);
      return;
    }
    case 'silent':
      return;
    case 'mid-body': {
      const body = Buffer.from(b.body);
      socket.write(head(200, 'text/plain', body.length + 64));
      socket.end(body.subarray(0, Math.ceil(body.length / 2)), () => socket.destroy());
      return;
    }
    case 'endless': {
      socket.write(head(200, 'text/plain', null));
      if (b.everyMs) {
        const timer = setInterval(() => socket.write('OK room '), b.everyMs);
        timers.add(timer);
        socket.once('close', () => {
          clearInterval(timer);
          timers.delete(timer);
        });
        return;
      }
      const more = (): void => {
        while (!socket.destroyed && socket.write(ENDLESS_CHUNK));
      };
      socket.on('drain', more);
      more();
      return;
    }
  }
}
