// Test helper: pick a free TCP port on 127.0.0.1 for a private server (Postfix, policy server, Redis, ...).
// The port is only reserved while we probe it, so there is a small race; callers that bind it
// themselves should retry on EADDRINUSE.
import { createServer } from 'node:net';

/** Listen on 127.0.0.1:0, read the port the kernel chose, close, and return it. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error(`freePort: unexpected server address ${String(address)}`));
        return;
      }
      const { port } = address;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}
