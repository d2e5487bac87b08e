/*
 * The policy listeners: inet and unix sockets, and spawn(8) stdin/stdout.
 *
 * Never closes an idle connection before Postfix does (Postfix keeps one per smtpd process for up
 * to smtpd_policy_service_max_idle, 300s; closing first costs it a 1 s retry per request). A bad
 * client is logged and dropped alone. On close(): stop accepting, answer what is in flight, end.
 * In spawn mode stderr is the SMTP client's channel too: nothing here writes to it.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import type { Readable, Writable } from 'node:stream';
import { PolicyProtocolError, type PolicyLimits } from './codec.js';
import { PolicyConnection, type PolicyHandler } from './connection.js';
import type { ListenAddress } from '../../config/listen.js';
import { closeListeners, openListeners } from '../../runtime/listeners.js';
import { drainThenCut } from '../../runtime/shutdown.js';
import { IdleSweep } from '../../runtime/idle.js';
import { NO_METRICS, type FaceCounts } from '../../runtime/metrics.js';

export interface PolicyServerOptions {
  listeners: ListenAddress[];
  /** e.g. 0o666 for unix sockets. */
  socketMode: number;
  idleTimeoutMs: number;
  limits: PolicyLimits;
  handle: PolicyHandler;
  logger: Logger;
  /** Longest wait for in-flight answers at shutdown before connections are cut. */
  shutdownGraceMs: number;
  /** The policy face's counts (protocol errors); absent: none. */
  counts?: FaceCounts;
}

export interface RunningPolicyServer {
  /** Bound addresses, e.g. inet:127.0.0.1:10033 (the real port when 0 was asked). */
  addresses: string[];
  connections(): number;
  close(): Promise<void>;
}

export async function startPolicyServer(opts: PolicyServerOptions): Promise<RunningPolicyServer> {
  const counts = opts.counts ?? NO_METRICS.face('policy');
  const live = new Map<net.Socket, { conn: PolicyConnection; lastTick: number }>();
  let nextId = 1;
  const sweep = new IdleSweep(opts.idleTimeoutMs, live, (socket) => live.get(socket)!.conn.idle, (socket) => {
    opts.logger.debug({ idle_ms: opts.idleTimeoutMs }, 'closing idle policy connection');
    socket.destroy();
  });

  const onConnection = (socket: net.Socket, listener: string) => {
    const id = nextId++;
    const log = opts.logger.child({ conn: id, listener });
    socket.setNoDelay(true);
    const flow = flowControl(socket, socket);
    const conn = new PolicyConnection(opts.limits, opts.handle, {
      ...flow,
      drop: (err) => {
        logDrop(log, err, { peer: socket.remoteAddress });
        counts.protocolError(err instanceof PolicyProtocolError ? err.code : 'INTERNAL');
        socket.destroy();
      },
      // Everything owed is written: close fully, without waiting for the client to close its side.
      end: () => socket.end(() => socket.destroy()),
    });
    const entry = { conn, lastTick: sweep.now };
    live.set(socket, entry);
    socket.on('data', (chunk: Buffer) => {
      entry.lastTick = sweep.now;
      conn.receive(chunk);
    });
    // The client half-closed (nc -N, socat, a monitoring probe): answer what it sent, then close.
    // Needs allowHalfOpen on the server (runtime/listeners.ts), else Node ends our side with the client's.
    socket.on('end', () => conn.finish());
    socket.on('error', (err: NodeJS.ErrnoException) => log.debug({ code: err.code }, `policy connection error: ${err.message}`));
    socket.on('close', () => live.delete(socket));
  };

  const { servers, addresses } = await openListeners(opts.listeners, opts.socketMode, onConnection, (err, listener) =>
    opts.logger.error({ err, listener }, 'policy listener error'),
  ).catch((err: unknown) => {
    sweep.stop();
    throw err;
  });
  opts.logger.info({ listeners: addresses }, 'policy service ready');

  return {
    addresses,
    connections: () => live.size,
    close: () =>
      // server.close() would wait for every connection, and Postfix keeps idle ones for minutes:
      // stop accepting, then end each connection once it owes nothing.
      drainThenCut(
        {
          stopAccepting: () => {
            sweep.stop();
            return closeListeners(servers);
          },
          finishIdle: () => {
            for (const { conn } of live.values()) conn.finish();
          },
          busy: () => live.size > 0,
          cut: () => {
            for (const socket of live.keys()) socket.destroy();
          },
        },
        opts.shutdownGraceMs,
      ),
  };
}

/**
 * spawn(8) mode: one client on stdin/stdout, for the life of one smtpd connection.
 * Resolves when the client has gone (EOF) and everything owed was answered, or on a protocol error.
 */
export function servePolicyStdio(opts: { input: Readable; output: Writable; limits: PolicyLimits; handle: PolicyHandler; logger: Logger }): {
  done: Promise<void>;
  finish(): void;
} {
  let settle!: () => void;
  const done = new Promise<void>((resolve) => (settle = resolve));
  const conn = new PolicyConnection(opts.limits, opts.handle, {
    ...flowControl(opts.input, opts.output),
    drop: (err) => {
      logDrop(opts.logger, err, {});
      opts.input.destroy();
      settle();
    },
    end: () => opts.output.end(() => settle()),
  });
  opts.input.on('data', (chunk: Buffer) => conn.receive(chunk));
  opts.input.on('end', () => conn.finish());
  opts.input.on('error', () => conn.finish());
  opts.output.on('error', () => settle());
  return { done, finish: () => conn.finish() };
}

/** A dropped client: its protocol error is a warning; our own trouble answering is an error. */
function logDrop(log: Logger, err: Error, fields: Record<string, unknown>): void {
  if (err instanceof PolicyProtocolError) log.warn({ ...fields, code: err.code }, `policy client dropped without a reply: ${err.message}`);
  else log.error({ ...fields, err }, 'internal error while answering a policy request: connection dropped without a reply (Postfix retries)');
}

/**
 * Reading stops while our replies back up (a client that writes and never reads would otherwise
 * grow our memory without bound) or while too many requests wait; it resumes when neither holds.
 */
function flowControl(input: Readable, output: Writable): { write(bytes: Buffer): void; pause(): void; resume(): void } {
  let writeBlocked = false;
  let queueFull = false;
  const update = () => {
    if (writeBlocked || queueFull) input.pause();
    else input.resume();
  };
  return {
    write(bytes) {
      if (output.write(bytes) || writeBlocked) return;
      writeBlocked = true;
      update();
      output.once('drain', () => {
        writeBlocked = false;
        update();
      });
    },
    pause() {
      queueFull = true;
      update();
    },
    resume() {
      queueFull = false;
      update();
    },
  };
}
