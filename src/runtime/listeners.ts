/*
 * Opening listeners for the socket faces (policy, milter): inet and unix, with a stale unix socket
 * from a previous run replaced, and never a regular file or a live server's socket.
 *
 * A unix socket gets its mode as bind(2) creates it and its group by lchown: nothing here follows
 * a symlink. A chmod after listen() would: whoever can write the socket's directory could swap a
 * link to any file in between and have that file's mode changed (Linux has no lchmod).
 */
import net from 'node:net';
import fs from 'node:fs/promises';
import { groupId, type ListenAddress } from '../config/listen.js';

/** Listens and returns the bound address in Postfix spelling (the real port when 0 was asked). */
export async function listen(server: net.Server, where: ListenAddress, mode: number): Promise<string> {
  let gid: number | null = null;
  if (where.kind === 'unix') {
    // Looked up first: a wrong group name leaves no socket behind.
    gid = where.group ? groupId(where.group) : null;
    await removeStaleSocket(where.path);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (where.kind === 'unix') listenWithMode(server, where.path, mode, done);
    else server.listen(where.port, where.host, done);
  });
  if (where.kind === 'unix') {
    if (gid !== null) await fs.lchown(where.path, -1, gid);
    return `unix:${where.path}`;
  }
  const bound = server.address() as net.AddressInfo;
  return bound.family === 'IPv6' ? `inet:[${bound.address}]:${bound.port}` : `inet:${bound.address}:${bound.port}`;
}

/**
 * bind(2) creates the socket file with mode 0777 & ~umask, so the umask is set to give exactly
 * `mode`, for the one listen() call: Node binds a unix socket synchronously inside it. The umask
 * is process-wide; listeners open at start-up, before any mail traffic, and a file a thread-pool
 * call creates in that instant would only get a narrower mode.
 */
function listenWithMode(server: net.Server, path: string, mode: number, done: () => void): void {
  const previous = process.umask(~mode & 0o777);
  try {
    server.listen(path, done);
  } finally {
    process.umask(previous);
  }
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
      // allowHalfOpen: a client that half-closes after its request (nc -N, socat, a probe) still
      // gets the answer; each face ends its side itself once it owes nothing.
      const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (s) => onConnection(s, where.text));
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
