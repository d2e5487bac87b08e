/*
 * A small HTTP backend for tests: answers each request with whatever the test says, counts requests.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Backend {
  port: number;
  url(path?: string): string;
  requests: { url: string; authorization: string | undefined }[];
  close(): Promise<void>;
}

export type Answer = (url: URL, req: http.IncomingMessage, res: http.ServerResponse) => void;

export async function startBackend(answer: Answer): Promise<Backend> {
  const requests: Backend['requests'] = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url ?? '', authorization: req.headers.authorization });
    answer(new URL(req.url ?? '/', 'http://x'), req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    url: (path = '/cgi-bin/quota.cgi?u={key}') => `http://127.0.0.1:${port}${path}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The seed quota.cgi's exact answer: "OK|OVERQUOTA user size quota", text/plain. */
export function cgiAnswer(usage: Record<string, number>, quota: number): Answer {
  return (url, _req, res) => {
    const user = url.searchParams.get('u') ?? '';
    const size = usage[user] ?? 0;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${size > quota ? 'OVERQUOTA' : 'OK'} ${user} ${size} ${quota}\n`);
  };
}
