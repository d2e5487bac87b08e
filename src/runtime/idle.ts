/*
 * Idle connections, found by a coarse sweep rather than socket.setTimeout(): Node re-arms that
 * timer on every read and write, measurable at tens of thousands of requests per second (the
 * policy face since issue 6; the milter's since issue 10, BENCHMARKS.md "Milter transactions per
 * second"). The sweep runs every period p (a tenth of the timeout, 10 ms to 1 s) and counts its
 * own turns: a connection that owes nothing is closed at the first turn at least ⌈timeout / p⌉ + 1
 * turns after its last read, so one or two periods past the timeout (later when the event loop is
 * busy); one that owes a reply is never closed by it. A timeout of 0 closes nothing, as
 * socket.setTimeout(0) did.
 */
import type net from 'node:net';

export interface IdleEntry {
  /** The sweep's tick (IdleSweep.now) at the connection's last read. */
  lastTick: number;
}

export class IdleSweep {
  private tick = 0;
  private readonly timer: NodeJS.Timeout | null = null;

  /**
   * @param live the face's connections (its own map: the sweep keeps nothing of its own).
   * @param idle whether a connection owes nothing (no request or packet in hand).
   * @param onIdle closes it (and logs why).
   */
  constructor(timeoutMs: number, live: Map<net.Socket, IdleEntry>, idle: (socket: net.Socket) => boolean, onIdle: (socket: net.Socket) => void) {
    if (timeoutMs <= 0) return;
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
    if (this.timer !== null) clearInterval(this.timer);
  }
}
