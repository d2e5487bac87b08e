/*
 * The closed-loop Postfix policy load shared by bench/policy-load.ts and bench/cluster-load.ts:
 * N persistent connections, each with at most one request in flight (smtpd never pipelines policy
 * requests), the reply read up to its empty line, latency (write to whole reply) in a perf_hooks
 * histogram (microseconds), reply actions counted, failed requests counted with a few samples, a
 * watchdog for unanswered requests, broken connections replaced, and a clean drain at the end.
 *
 * The caller says where each connection goes, what it sends and what else to note per measured
 * reply, and does its own timing: connect(), start(), set `measuring` around the window, stop().
 */
import net from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import { sleep } from './shared.js';

const MAX_DISTINCT_ACTIONS = 32;

/** One connection's part: its target, its next request, and what to note of a measured reply. */
export interface LoadConnection {
  host: string;
  port: number;
  /** The next request (a whole Postfix policy request, ending in an empty line). */
  request(): Buffer | string;
  /** A reply that arrived inside the measured window (after the shared counters). */
  measured?(): void;
}

export interface ClosedLoopOptions {
  connections: number;
  /** A request not answered in this long is an error (the connection is then replaced). */
  timeoutMs: number;
  /** Total requests/s aimed at over all connections (each paced at rate/connections); 0: unpaced. */
  rate?: number;
  /** Said after "closed by the server" when a connection closes with no request in flight. */
  idleCloseNote?: string;
  connection(id: number): LoadConnection;
}

/** `inet:HOST:PORT`, `HOST:PORT` or `[IPv6]:PORT`. */
export function parseTarget(text: string): { host: string; port: number } {
  const m = /^(?:inet:)?(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw new Error(`--connect ${text}: expected inet:HOST:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

export class ClosedLoop {
  /** Latency of the measured replies, microseconds. */
  readonly histogram = createHistogram();
  /** Reply actions seen in the measured window, by action text (at most 32 distinct, then "(other)"). */
  readonly actions = new Map<string, number>();
  readonly errorSamples: string[] = [];
  errors = 0;
  /** Replies received while `measuring`. */
  counted = 0;
  /** Set by the caller around the measured window. */
  measuring = false;
  private stopping = false;
  private readonly interval: number;
  private readonly clients: Client[];
  private watchdog: NodeJS.Timeout | undefined;

  constructor(readonly o: ClosedLoopOptions) {
    this.interval = o.rate && o.rate > 0 ? (o.connections * 1000) / o.rate : 0;
    this.clients = Array.from({ length: o.connections }, (_, i) => new Client(this, i, o.connection(i)));
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  get pacingInterval(): number {
    return this.interval;
  }

  fail(what: string): void {
    this.errors++;
    if (this.errorSamples.length < 10) this.errorSamples.push(what);
  }

  /** Opens every connection; on a failure closes them all and throws the first error. */
  async connect(): Promise<void> {
    try {
      await Promise.all(this.clients.map((c) => c.connect()));
    } catch (err) {
      this.stopping = true;
      for (const c of this.clients) c.socket?.destroy();
      throw err;
    }
  }

  /** Starts the watchdog and the first requests (staggered when paced, so they do not go in step). */
  start(): void {
    this.watchdog = setInterval(() => {
      const now = performance.now();
      for (const c of this.clients) {
        if (c.inFlight && now - c.sentAt > this.o.timeoutMs) {
          this.fail(`connection ${c.id}: no reply within ${this.o.timeoutMs} ms`);
          c.replace();
        }
      }
    }, 250);
    const t = performance.now();
    for (const c of this.clients) {
      c.due = t + (this.interval * c.id) / this.o.connections - this.interval;
      c.schedule();
    }
  }

  /** Sends no more; lets the requests in flight finish (they do not count), so the servers see clean EOFs. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const c of this.clients) clearTimeout(c.timer);
    const deadline = performance.now() + this.o.timeoutMs;
    while (this.clients.some((c) => c.inFlight) && performance.now() < deadline) await sleep(10);
    clearInterval(this.watchdog);
    for (const c of this.clients) {
      if (c.inFlight) this.fail(`connection ${c.id}: no reply within ${this.o.timeoutMs} ms at the end of the run`);
      c.closedByUs = true;
      c.socket.end();
      setTimeout(() => c.socket.destroy(), 1000).unref();
    }
  }

  /** A whole reply on a connection with a request in flight, inside the measured window. */
  record(conn: LoadConnection, sentAt: number, now: number, reply: string): void {
    this.counted++;
    conn.measured?.();
    this.histogram.record(Math.max(1, Math.round((now - sentAt) * 1000)));
    const action = reply.slice(7);
    const seen = this.actions.get(action);
    if (seen !== undefined) this.actions.set(action, seen + 1);
    else if (this.actions.size < MAX_DISTINCT_ACTIONS) this.actions.set(action, 1);
    else this.actions.set('(other)', (this.actions.get('(other)') ?? 0) + 1);
  }
}

class Client {
  socket!: net.Socket;
  buffer = '';
  sentAt = 0;
  inFlight = false;
  closedByUs = false;
  /** When the next request may go out (performance.now ms), when paced. */
  due = 0;
  timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly loop: ClosedLoop,
    readonly id: number,
    private readonly conn: LoadConnection,
  ) {}

  connect(): Promise<void> {
    this.buffer = '';
    this.inFlight = false;
    this.closedByUs = false;
    const socket = net.connect({ host: this.conn.host, port: this.conn.port, noDelay: true });
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => {
      if (socket === this.socket) this.onData(text);
    });
    const connected = new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (socket === this.socket && !this.closedByUs && !this.loop.isStopping) this.loop.fail(`connection ${this.id}: ${err.code ?? err.message}`);
    });
    socket.on('close', () => {
      if (socket !== this.socket || this.closedByUs || this.loop.isStopping) return;
      this.loop.fail(`connection ${this.id}: closed by the server${this.inFlight ? ' with a request in flight' : (this.loop.o.idleCloseNote ?? '')}`);
      this.replace();
    });
    return connected;
  }

  replace(): void {
    this.closedByUs = true;
    this.socket.destroy();
    if (this.loop.isStopping) return;
    setTimeout(() => {
      if (this.loop.isStopping) return;
      this.connect().then(
        () => this.send(),
        () => undefined, // counted by the error handler; the close handler tries again
      );
    }, 50);
  }

  /** The next request now, or when its turn comes when paced: still one in flight at most. */
  schedule(): void {
    const interval = this.loop.pacingInterval;
    if (interval === 0) return this.send();
    const now = performance.now();
    // Never more than one interval behind: a slow reply does not cause a burst afterwards.
    this.due = Math.max(this.due + interval, now - interval);
    const wait = this.due - now;
    if (wait < 0.5) this.send();
    else this.timer = setTimeout(() => this.send(), wait);
  }

  send(): void {
    this.timer = undefined;
    if (this.loop.isStopping) return;
    const request = this.conn.request();
    this.inFlight = true;
    this.sentAt = performance.now();
    if (typeof request === 'string') this.socket.write(request, 'latin1');
    else this.socket.write(request);
  }

  onData(text: string): void {
    this.buffer = this.buffer === '' ? text : this.buffer + text;
    for (let end = this.buffer.indexOf('\n\n'); end !== -1; end = this.buffer.indexOf('\n\n')) {
      const reply = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const now = performance.now();
      if (!this.inFlight || !reply.startsWith('action=')) {
        this.loop.fail(`connection ${this.id}: unexpected reply ${JSON.stringify(reply.slice(0, 80))}`);
        this.replace();
        return;
      }
      this.inFlight = false;
      if (this.loop.measuring) this.loop.record(this.conn, this.sentAt, now, reply);
      this.schedule();
    }
  }
}
