/*
 * Opening listeners for the socket faces (policy, milter): inet and unix, with a stale unix socket
 * from a previous run replaced, and never a regular file or a live server's socket.
 */
import net from 'node:net';
import fs from 'node:fs/promises';
import type { ListenAddress } from './listen.js';

/** Listens and returns the bound address in Postfix spelling (the real port when 0 was asked). */
export async function listen(server: net.Server, where: ListenAddress, mode: number): Promise<string> {
  if (where.kind === 'unix') await removeStaleSocket(where.path);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (where.kind === 'unix') server.listen(where.path, done);
    else server.listen(where.port, where.host, done);
  });
  if (where.kind === 'unix') {
    await fs.chmod(where.path, mode);
    return `unix:${where.path}`;
  }
  const bound = server.address() as net.AddressInfo;
  return bound.family === 'IPv6' ? `inet:[${bound.address}]:${bound.port}` : `inet:${bound.address}:${bound.port}`;
}

/**
 * A socket file left by a previous run blocks listen() with EADDRINUSE. Remove it only when it is
 * a socket nobody answers on: never a regular file, never a live server's socket.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await fs.lstat(path).catch(() => null);
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket: refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`${path} is in use by a running server`);
  await fs.unlink(path);
}

/**
 * Opens every listener of one face; on any failure closes those already open and throws.
 * Returns the servers and their bound addresses.
 */
export async function openListeners(
  listeners: ListenAddress[],
  mode: number,
  onConnection: (socket: net.Socket, listener: string) => void,
  onError: (err: Error, listener: string) => void,
): Promise<{ servers: net.Server[]; addresses: string[] }> {
  const servers: net.Server[] = [];
  const addresses: string[] = [];
  try {
    for (const where of listeners) {
      const server = net.createServer({ noDelay: true }, (s) => onConnection(s, where.text));
      server.on('error', (err) => onError(err, where.text));
      addresses.push(await listen(server, where, mode));
      servers.push(server);
    }
  } catch (err) {
    for (const s of servers) s.close();
    throw err;
  }
  return { servers, addresses };
}

/** Stops accepting; resolves when every server has closed (after its connections are gone). */
export function closeListeners(servers: net.Server[]): Promise<void> {
  return Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => undefined);
}
