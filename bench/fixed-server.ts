/*
 * The ceiling for bench/policy.ts: the smallest reasonable Node policy server.
 *
 * node:net, persistent connections, reads name=value lines until an empty line and answers a
 * fixed `action=DUNNO` to each request. It parses nothing and decides nothing: whatever overquota
 * does on top of this (decoding attributes, the cache lookup, the decision, one log line) is the
 * cost bench/policy.ts measures against it.
 *
 *   node --import tsx bench/fixed-server.ts [--listen inet:127.0.0.1:0] [--action DUNNO] [--work-us N]
 *
 * --work-us N (calibration only, default 0) burns N microseconds of CPU before each reply: it
 * shows what each extra microsecond of per-request work costs in requests/s on this machine,
 * i.e. the budget a real server has to stay within a given ratio of this one.
 *
 * Prints one JSON line {"msg":"fixed policy server ready","listen":"inet:HOST:PORT"} when it
 * listens, and {"msg":"requests","requests":N} (requests answered so far) on each SIGUSR2.
 * Exits on SIGTERM/SIGINT, and when its stdin closes (if stdin is a pipe), so it does not
 * outlive a bench run that was killed.
 */
import net from 'node:net';
import { fstatSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const LF = 0x0a;
const CR = 0x0d;

export interface FixedServer {
  /** inet:HOST:PORT, with the real port. */
  listen: string;
  /** Requests answered so far. */
  requests(): number;
  close(): Promise<void>;
}

export async function startFixedServer(host = '127.0.0.1', port = 0, action = 'DUNNO', workUs = 0): Promise<FixedServer> {
  const reply = Buffer.from(`action=${action}\n\n`, 'latin1');
  const sockets = new Set<net.Socket>();
  let answered = 0;

  const server = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    // What the line in progress holds so far (a request may end across reads):
    // 0 nothing (at a line start), 1 a lone CR, 2 something else.
    let carry = 0;
    socket.on('data', (chunk: Buffer) => {
      let replies = 0;
      let start = 0;
      let state = carry;
      for (let nl = chunk.indexOf(LF); nl !== -1; nl = chunk.indexOf(LF, nl + 1)) {
        const len = nl - start;
        // An empty line (LF or CR LF) ends a request.
        if (state === 0 ? len === 0 || (len === 1 && chunk[start] === CR) : state === 1 && len === 0) replies++;
        state = 0;
        start = nl + 1;
      }
      const rest = chunk.length - start;
      carry = rest === 0 ? state : state === 0 && rest === 1 && chunk[start] === CR ? 1 : 2;
      answered += replies;
      if (workUs > 0 && replies > 0) burn(workUs * replies);
      if (replies === 1) socket.write(reply);
      else if (replies > 1) socket.write(Buffer.concat(Array<Buffer>(replies).fill(reply)));
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as net.AddressInfo;
  return {
    listen: `inet:${bound.address}:${bound.port}`,
    requests: () => answered,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

/** Busy-waits: simulated per-request work for --work-us. */
function burn(us: number): void {
  const until = performance.now() + us / 1000;
  while (performance.now() < until);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string', default: 'inet:127.0.0.1:0' },
      action: { type: 'string', default: 'DUNNO' },
      'work-us': { type: 'string', default: '0' },
    },
  });
  const m = /^(?:inet:)?(.+):(\d+)$/.exec(values.listen);
  if (!m) throw new Error(`--listen ${values.listen}: expected inet:HOST:PORT`);
  const workUs = Number(values['work-us']);
  if (!Number.isFinite(workUs) || workUs < 0 || workUs > 100_000) throw new Error(`--work-us ${values['work-us']}: expected 0 to 100000`);
  const server = await startFixedServer(m[1]!, Number(m[2]), values.action, workUs);
  process.stdout.write(`${JSON.stringify({ msg: 'fixed policy server ready', listen: server.listen, pid: process.pid })}\n`);
  const stop = () => {
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGUSR2', () => process.stdout.write(`${JSON.stringify({ msg: 'requests', requests: server.requests() })}\n`));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  if (stdinIsPipe()) {
    process.stdin.on('end', stop).on('error', stop).resume();
  }
}

function stdinIsPipe(): boolean {
  try {
    return fstatSync(0).isFIFO();
  } catch {
    return false;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`fixed-server: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
