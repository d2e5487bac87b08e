/*
 * Idle connections, found by a coarse sweep rather than socket.setTimeout(): Node re-arms that
 * timer on every read and write, measurable at tens of thousands of requests per second (the
 * policy face; the milter's 0.6% + 0.6% of its CPU in timer insertion and the clock,
 * bench/milter-wire.ts --cpu-prof, 2026-11-30). A connection is closed between `timeoutMs` and
 * `timeoutMs` + one sweep period (a tenth of it, 10 ms to 1 s) after its last read, and only
 * while it owes nothing.
 */
import type net from 'node:net';

export interface IdleEntry {
  /** The sweep's tick (IdleSweep.now) at the connection's last read. */
  lastTick: number;
}

export class IdleSweep {
  private tick = 0;
  private readonly timer: NodeJS.Timeout;

  /**
   * @param live the face's connections (its own map: the sweep keeps nothing of its own).
   * @param idle whether a connection owes nothing (no request or packet in hand).
   * @param onIdle closes it (and logs why).
   */
  constructor(timeoutMs: number, live: Map<net.Socket, IdleEntry>, idle: (socket: net.Socket) => boolean, onIdle: (socket: net.Socket) => void) {
    const period = Math.max(10, Math.min(1000, Math.floor(timeoutMs / 10)));
    const idleTicks = Math.ceil(timeoutMs / period) + 1;
    this.timer = setInterval(() => {
      this.tick++;
      for (const [socket, entry] of live) if (this.tick - entry.lastTick >= idleTicks && idle(socket)) onIdle(socket);
    }, period);
    this.timer.unref();
  }

  /** The current tick: a connection read from now gets it as its lastTick. */
  get now(): number {
    return this.tick;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
