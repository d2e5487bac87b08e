/*
 * The milter listeners: Postfix (smtpd_milters) and Sendmail (INPUT_MAIL_FILTER) connect here.
 *
 * One MilterSession per connection, packets handled in order, each reply written with one write.
 * A connection that breaks the protocol (junk, a bad length, a truncated packet, an unknown
 * command, macros over their bounds) is logged and dropped alone; the MTA then applies its own
 * default for that session (Postfix milter_default_action, Sendmail F=). A client that
 * half-closes (its FIN after its last packet) is answered everything it sent, then closed: the
 * listener allows half-open sockets (runtime/listeners.ts), so ending our side is ours to do. What one
 * connection holds is bounded: one packet in the decoder, MAX_QUEUED_PACKETS / MAX_QUEUED_BYTES
 * waiting (reading pauses past them), macros within MAX_MACROS / MAX_MACRO_BYTES (session.ts).
 * Close: stop accepting, finish what is in flight.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import type { ListenAddress } from '../../config/listen.js';
import { closeListeners, openListeners } from '../../runtime/listeners.js';
import { MilterDecoder, MilterProtocolError, type Packet } from './codec.js';
import { MilterSession, type MessageEvents, type RcptDecider } from './session.js';
import { drainThenCut } from '../../runtime/shutdown.js';
import { NO_METRICS, type FaceCounts } from '../../runtime/metrics.js';
import { IdleSweep, type IdleEntry } from '../../runtime/idle.js';

export interface MilterServerOptions {
  listeners: ListenAddress[];
  socketMode: number;
  /** MTAs keep the connection for a whole SMTP session; this only bounds a forgotten one. */
  idleTimeoutMs: number;
  decide: RcptDecider;
  /** Ends and aborts of messages, for reservations (the decision core); null: not told. */
  messages?: MessageEvents | null;
  logger: Logger;
  shutdownGraceMs: number;
  /** The milter face's counts (protocol errors); absent: none. */
  counts?: FaceCounts;
}

export interface RunningMilterServer {
  addresses: string[];
  connections(): number;
  close(): Promise<void>;
}

/** Packets queued on one connection before we stop reading from it (resumed at half). */
const MAX_QUEUED_PACKETS = 256;
/** Bytes of queued packets on one connection before we stop reading from it (resumed at half). */
const MAX_QUEUED_BYTES = 256 * 1024;

export async function startMilterServer(opts: MilterServerOptions): Promise<RunningMilterServer> {
  const counts = opts.counts ?? NO_METRICS.face('milter');
  const live = new Map<net.Socket, IdleEntry & { busy: () => boolean }>();
  let nextId = 1;
  let closing = false;
  const sweep = new IdleSweep(opts.idleTimeoutMs, live, (socket) => !live.get(socket)!.busy(), (socket) => {
    opts.logger.debug({ idle_ms: opts.idleTimeoutMs }, 'closing idle milter connection');
    socket.destroy();
  });

  const onConnection = (socket: net.Socket, listener: string) => {
    const log = opts.logger.child({ conn: nextId++, listener, face: 'milter' });
    const decoder = new MilterDecoder();
    const session = new MilterSession(opts.decide, opts.messages ?? null);
    const queue: Packet[] = [];
    let queuedBytes = 0;
    let paused = false;
    let busy = false;
    let dead = false;
    /** The client sent its FIN: answer what is queued, then end our side. */
    let peerEnded = false;
    const drop = (reason: string, code?: string) => {
      if (dead) return;
      dead = true;
      counts.protocolError(code ?? 'INTERNAL');
      log.warn({ code, peer: socket.remoteAddress }, `milter connection dropped: ${reason}`);
      socket.destroy();
    };
    const finish = () => {
      if (dead) return;
      dead = true;
      socket.end(() => socket.destroy());
    };
    const drain = async () => {
      busy = true;
      while (queue.length > 0 && !dead) {
        const packet = queue.shift()!;
        queuedBytes -= packet.data.length;
        try {
          // Only a RCPT that must look its mailbox up returns a promise: the rest are answered without waiting a turn.
          let out = session.handle(packet);
          if (out instanceof Promise) out = await out;
          if (dead) break;
          if (out.note) log.info({ note: out.note }, 'recipient passed with a note (dry run)');
          if (out.reply) socket.write(out.reply);
          if (out.close) finish();
        } catch (err) {
          if (err instanceof MilterProtocolError) drop(err.message, err.code);
          else drop(`internal error: ${(err as Error).message}`, 'INTERNAL');
        }
        if (paused && queue.length <= MAX_QUEUED_PACKETS / 2 && queuedBytes <= MAX_QUEUED_BYTES / 2) {
          paused = false;
          socket.resume();
        }
      }
      busy = false;
      if (closing || peerEnded) finish();
    };
    const entry = { lastTick: sweep.now, busy: () => busy || queue.length > 0 };
    live.set(socket, entry);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      if (dead) return;
      entry.lastTick = sweep.now;
      let packets: Packet[];
      try {
        packets = decoder.push(chunk);
      } catch (err) {
        const e = err as MilterProtocolError;
        return drop(e.message, e.code);
      }
      for (const p of packets) {
        queue.push(p);
        queuedBytes += p.data.length;
      }
      if (!paused && (queue.length > MAX_QUEUED_PACKETS || queuedBytes > MAX_QUEUED_BYTES)) {
        paused = true;
        socket.pause();
      }
      if (!busy && queue.length > 0) void drain();
    });
    socket.on('end', () => {
      if (decoder.midPacket) return drop('connection closed in the middle of a packet (truncated)', 'TRUNCATED');
      peerEnded = true;
      if (!busy) finish();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => log.debug({ code: err.code }, `milter connection error: ${err.message}`));
    socket.on('close', () => {
      live.delete(socket);
      // Lost in the middle of a message: its recipients' reservations go (an MTA that gives up
      // on us applies its default; the message may still come, but not counted by us).
      session.giveUpMessage();
    });
  };

  const { servers, addresses } = await openListeners(opts.listeners, opts.socketMode, onConnection, (err, listener) =>
    opts.logger.error({ err, listener }, 'milter listener error'),
  ).catch((err: unknown) => {
    sweep.stop();
    throw err;
  });
  opts.logger.info({ listeners: addresses }, 'milter service ready');

  return {
    addresses,
    connections: () => live.size,
    close: () =>
      drainThenCut(
        {
          stopAccepting: () => {
            closing = true;
            sweep.stop();
            return closeListeners(servers);
          },
          // Idle sessions end now; the MTA applies its milter default for the rest of those sessions.
          finishIdle: () => {
            for (const [socket, c] of live) if (!c.busy()) socket.end(() => socket.destroy());
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
