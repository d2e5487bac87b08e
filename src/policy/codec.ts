/*
 * Postfix SMTPD access policy delegation protocol, sans I/O: bytes in, requests out; action in,
 * bytes out. No sockets here (see server.ts).
 *
 * A request is name=value lines ended by an empty line; a reply is "action=...\n\n". Postfix sends
 * LF; CRLF (a person typing into nc or telnet) is tolerated. Requests may arrive split at any byte
 * or several in one read. Every bound is a setting: past one the decoder throws PolicyProtocolError
 * and is dead, because the protocol says a server in trouble must not reply, only log and
 * disconnect (Postfix then retries and finally applies its default_action).
 */

export interface PolicyLimits {
  /** Longest line in bytes, newline excluded. */
  maxLineLength: number;
  maxAttributes: number;
  /** Most bytes of one request, newlines included. */
  maxRequestSize: number;
}

/** Attributes in arrival order; a repeated name keeps its last value; unknown names are kept and ignored by readers. */
export type PolicyRequest = Map<string, string>;

export type PolicyProtocolErrorCode = 'LINE_TOO_LONG' | 'TOO_MANY_ATTRIBUTES' | 'REQUEST_TOO_LARGE' | 'MALFORMED_LINE';

export class PolicyProtocolError extends Error {
  constructor(
    readonly code: PolicyProtocolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'PolicyProtocolError';
  }
}

const LF = 0x0a;
const CR = 0x0d;
const EQUALS = 0x3d;

export class PolicyDecoder {
  /** Bytes of a line that has not ended yet (copied, so a large read is not retained). */
  private partial: Buffer | null = null;
  private current: PolicyRequest = new Map();
  private requestBytes = 0;
  private failed: PolicyProtocolError | null = null;

  constructor(private readonly limits: PolicyLimits) {}

  /** True while a request has started and not ended: a reply will be owed for it. */
  get midRequest(): boolean {
    return this.requestBytes > 0 || this.partial !== null;
  }

  push(chunk: Uint8Array): PolicyRequest[] {
    if (this.failed) throw this.failed;
    try {
      return this.decode(chunk);
    } catch (err) {
      if (err instanceof PolicyProtocolError) this.failed = err;
      throw err;
    }
  }

  private decode(chunk: Uint8Array): PolicyRequest[] {
    const data = this.partial ? Buffer.concat([this.partial, chunk]) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.partial = null;
    const done: PolicyRequest[] = [];
    let start = 0;
    for (let nl = data.indexOf(LF, start); nl !== -1; nl = data.indexOf(LF, start)) {
      const end = nl > start && data[nl - 1] === CR ? nl - 1 : nl;
      this.account(nl + 1 - start, end - start);
      if (end === start) {
        done.push(this.current);
        this.current = new Map();
        this.requestBytes = 0;
      } else {
        this.attribute(data, start, end);
      }
      start = nl + 1;
    }
    const rest = data.length - start;
    if (rest > 0) {
      if (rest > this.limits.maxLineLength + 1) {
        throw new PolicyProtocolError('LINE_TOO_LONG', `line longer than ${this.limits.maxLineLength} bytes`);
      }
      if (this.requestBytes + rest > this.limits.maxRequestSize) {
        throw new PolicyProtocolError('REQUEST_TOO_LARGE', `request larger than ${this.limits.maxRequestSize} bytes`);
      }
      this.partial = Buffer.from(data.subarray(start));
    }
    return done;
  }

  private account(withNewline: number, lineLength: number): void {
    if (lineLength > this.limits.maxLineLength) {
      throw new PolicyProtocolError('LINE_TOO_LONG', `line longer than ${this.limits.maxLineLength} bytes`);
    }
    this.requestBytes += withNewline;
    if (this.requestBytes > this.limits.maxRequestSize) {
      throw new PolicyProtocolError('REQUEST_TOO_LARGE', `request larger than ${this.limits.maxRequestSize} bytes`);
    }
  }

  private attribute(data: Buffer, start: number, end: number): void {
    const eq = data.indexOf(EQUALS, start);
    if (eq === -1 || eq >= end || eq === start) {
      const shown = data.toString('utf8', start, Math.min(end, start + 60));
      throw new PolicyProtocolError('MALFORMED_LINE', `line is not name=value: ${JSON.stringify(shown)}`);
    }
    if (this.current.size >= this.limits.maxAttributes) {
      throw new PolicyProtocolError('TOO_MANY_ATTRIBUTES', `more than ${this.limits.maxAttributes} attributes in one request`);
    }
    this.current.set(data.toString("latin1", start, eq), data.toString("utf8", eq + 1, end));
  }
}

/** The reply bytes for one action. The action must already be valid (core/replies.ts). */
export function encodeReply(action: string): Buffer {
  return Buffer.from(`action=${action}\n\n`, 'utf8');
}
