/*
 * One policy client: bytes in, requests answered in order, replies out.
 *
 * Shared by sockets and spawn(8) stdin/stdout. Postfix sends one request and waits, but a client
 * may pipeline: answers keep request order. On a protocol error nothing is replied (the protocol's
 * rule for a server in trouble): the owner logs it and drops this connection only. The same goes
 * for our own trouble answering (a handler that throws or rejects, a reply that cannot be
 * rendered): this connection is dropped, never left waiting; Postfix retries the request and
 * finally applies its default_action. It must never hold a client without an answer coming.
 */
import { encodeReply, PolicyDecoder, type PolicyLimits, type PolicyRequest } from './codec.js';

/** Requests queued on one connection before we stop reading from it (backpressure on a flood). */
export const MAX_QUEUED_REQUESTS = 64;

export interface ConnectionIo {
  write(bytes: Buffer): void;
  pause(): void;
  resume(): void;
  /**
   * Close without another byte: a PolicyProtocolError (the client's fault) or any other error
   * (ours, while answering).
   */
  drop(reason: Error): void;
  /** Graceful: everything owed was answered. */
  end(): void;
}

/** A string when the answer is known at once (a cache hit), a promise otherwise. Should never reject. */
export type PolicyHandler = (request: PolicyRequest) => string | Promise<string>;

export class PolicyConnection {
  private readonly decoder: PolicyDecoder;
  private readonly queue: PolicyRequest[] = [];
  private busy = false;
  private closing = false;
  private dead = false;
  requestsAnswered = 0;

  constructor(
    limits: PolicyLimits,
    private readonly handle: PolicyHandler,
    private readonly io: ConnectionIo,
  ) {
    this.decoder = new PolicyDecoder(limits);
  }

  receive(chunk: Uint8Array): void {
    if (this.dead) return;
    let requests: PolicyRequest[];
    try {
      requests = this.decoder.push(chunk);
    } catch (err) {
      return this.fail(err);
    }
    if (requests.length === 0) return;
    if (!this.busy && this.queue.length === 0 && requests.length === 1) {
      // The common case (Postfix sends one request and waits): answer a cache hit right here,
      // without queueing or a promise.
      let pending: string | Promise<string>;
      try {
        pending = this.handle(requests[0]!);
        if (typeof pending === 'string') return this.reply(pending);
      } catch (err) {
        return this.fail(err);
      }
      this.busy = true;
      pending.then(
        (action) => this.answered(action),
        (err: unknown) => this.fail(err),
      );
      return;
    }
    this.queue.push(...requests);
    if (this.queue.length > MAX_QUEUED_REQUESTS) this.io.pause();
    this.next();
  }

  /** The answer to the one request in flight outside the queue (see receive). */
  private answered(action: string): void {
    this.busy = false;
    if (this.dead) return;
    try {
      this.reply(action);
    } catch (err) {
      return this.fail(err);
    }
    this.next();
  }

  private reply(action: string): void {
    this.io.write(encodeReply(action));
    this.requestsAnswered++;
  }

  /**
   * Anything thrown while decoding or answering: drop this connection (the protocol's rule for a
   * server in trouble is no reply, disconnect), so nothing waits for an answer that cannot come.
   */
  private fail(err: unknown): void {
    this.busy = false;
    this.queue.length = 0;
    if (this.dead) return;
    this.dead = true;
    this.io.drop(err instanceof Error ? err : new Error(String(err)));
  }

  private next(): void {
    if (!this.busy && this.queue.length > 0) this.drain().catch((err: unknown) => this.fail(err));
    else if (!this.busy && this.closing && !this.dead) {
      this.dead = true;
      this.io.end();
    }
  }

  /** Stop after answering what has fully arrived (SIGTERM, or the client's EOF). */
  finish(): void {
    this.closing = true;
    if (!this.busy && !this.dead) {
      this.dead = true;
      this.io.end();
    }
  }

  /**
   * Nothing is being answered or waiting to be. A half-received request counts as idle too: a
   * client that stops in the middle of one must not hold its connection for ever.
   */
  get idle(): boolean {
    return !this.busy && this.queue.length === 0;
  }

  /** Answers the queue in order; a throw or rejection ends it, and its caller drops the connection. */
  private async drain(): Promise<void> {
    this.busy = true;
    while (this.queue.length > 0 && !this.dead) {
      const request = this.queue.shift()!;
      const pending = this.handle(request);
      // Only a real lookup waits: cache hits are answered in the same turn of the event loop.
      const action = typeof pending === 'string' ? pending : await pending;
      if (this.dead) break;
      this.reply(action);
      if (this.queue.length === MAX_QUEUED_REQUESTS) this.io.resume();
    }
    this.busy = false;
    if (this.closing && !this.dead) {
      this.dead = true;
      this.io.end();
    }
  }
}
