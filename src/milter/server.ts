/*
 * The milter listeners: Postfix (smtpd_milters) and Sendmail (INPUT_MAIL_FILTER) connect here.
 *
 * One MilterSession per connection, packets handled in order, each reply written with one write.
 * A connection that breaks the protocol (junk, a bad length, a truncated packet, an unknown
 * command) is logged and dropped alone; the MTA then applies its own default for that session
 * (Postfix milter_default_action, Sendmail F=). Close: stop accepting, finish what is in flight.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import type { ListenAddress } from '../listen.js';
import { closeListeners, openListeners } from '../sockets.js';
import { MilterDecoder, MilterProtocolError, type Packet } from './codec.js';
import { MilterSession, type RcptDecider } from './session.js';

export interface MilterServerOptions {
  listeners: ListenAddress[];
  socketMode: number;
  /** MTAs keep the connection for a whole SMTP session; this only bounds a forgotten one. */
  idleTimeoutMs: number;
  decide: RcptDecider;
  logger: Logger;
  shutdownGraceMs: number;
}

export interface RunningMilterServer {
  addresses: string[];
  connections(): number;
  close(): Promise<void>;
}

/** Packets queued on one connection before we stop reading from it. */
const MAX_QUEUED_PACKETS = 256;

export async function startMilterServer(opts: MilterServerOptions): Promise<RunningMilterServer> {
  const live = new Map<net.Socket, { busy: () => boolean }>();
  let nextId = 1;
  let closing = false;

  const onConnection = (socket: net.Socket, listener: string) => {
    const log = opts.logger.child({ conn: nextId++, listener, face: 'milter' });
    const decoder = new MilterDecoder();
    const session = new MilterSession(opts.decide);
    const queue: Packet[] = [];
    let busy = false;
    let dead = false;
    const drop = (reason: string, code?: string) => {
      if (dead) return;
      dead = true;
      log.warn({ code, peer: socket.remoteAddress }, `milter connection dropped: ${reason}`);
      socket.destroy();
    };
    const drain = async () => {
      busy = true;
      while (queue.length > 0 && !dead) {
        const packet = queue.shift()!;
        try {
          const out = await session.handle(packet);
          if (dead) break;
          if (out.note) log.info({ note: out.note }, 'recipient passed with a note (dry run)');
          if (out.reply) socket.write(out.reply);
          if (out.close) {
            dead = true;
            socket.end(() => socket.destroy());
          }
        } catch (err) {
          if (err instanceof MilterProtocolError) drop(err.message, err.code);
          else drop(`internal error: ${(err as Error).message}`, 'INTERNAL');
        }
        if (queue.length === MAX_QUEUED_PACKETS / 2) socket.resume();
      }
      busy = false;
      if (closing && !dead) socket.end(() => socket.destroy());
    };
    live.set(socket, { busy: () => busy || queue.length > 0 });
    socket.setNoDelay(true);
    socket.setTimeout(opts.idleTimeoutMs);
    socket.on('data', (chunk: Buffer) => {
      if (dead) return;
      let packets: Packet[];
      try {
        packets = decoder.push(chunk);
      } catch (err) {
        const e = err as MilterProtocolError;
        return drop(e.message, e.code);
      }
      queue.push(...packets);
      if (queue.length > MAX_QUEUED_PACKETS) socket.pause();
      if (!busy && queue.length > 0) void drain();
    });
    socket.on('end', () => {
      if (decoder.midPacket) drop('connection closed in the middle of a packet (truncated)', 'TRUNCATED');
      else if (!busy) socket.destroy();
    });
    socket.on('timeout', () => {
      log.debug('closing idle milter connection');
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => log.debug({ code: err.code }, `milter connection error: ${err.message}`));
    socket.on('close', () => live.delete(socket));
  };

  const { servers, addresses } = await openListeners(opts.listeners, opts.socketMode, onConnection, (err, listener) =>
    opts.logger.error({ err, listener }, 'milter listener error'),
  );
  opts.logger.info({ listeners: addresses }, 'milter service ready');

  return {
    addresses,
    connections: () => live.size,
    async close() {
      closing = true;
      const closed = closeListeners(servers);
      // Idle sessions end now; the MTA applies its milter default for the rest of those sessions.
      for (const [socket, c] of live) if (!c.busy()) socket.end(() => socket.destroy());
      const deadline = Date.now() + opts.shutdownGraceMs;
      while (live.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const socket of live.keys()) socket.destroy();
      await closed;
    },
  };
}
