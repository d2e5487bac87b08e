/*
 * Postfix SMTPD access policy delegation protocol, sans I/O: bytes in, requests out; action in,
 * bytes out. No sockets here (see server.ts).
 *
 * A request is name=value lines ended by an empty line; a reply is "action=...\n\n". Postfix sends
 * LF; CRLF (a person typing into nc or telnet) is tolerated. Requests may arrive split at any byte
 * or several in one read. Every bound is a setting: past one the decoder throws PolicyProtocolError
 * and is dead, because the protocol says a server in trouble must not reply, only log and
 * disconnect (Postfix then retries and finally applies its default_action).
 *
 * Shortcuts kept for speed, each measured (BENCHMARKS.md; decode + decision ~1.9 us a request):
 * the request is scanned as one latin1 string with String#indexOf (faster than Buffer#indexOf
 * crossing into C++ per line); the attributes a decision reads are located on that one pass
 * ("spans": a read is a slice, not a search; a logged decision's 6 reads take ~0.15 us less, 3
 * reads ~0.07 us more: A/B on the bench's Postfix requests, 2026-11); a request split over reads
 * is kept in one growing buffer and only new bytes are scanned (~62 ns a byte read one at a time,
 * at 1.6 KB and 60 KB alike: bench/policy-bytewise.ts, in git history up to commit ae2c348).
 */
import { isAscii } from 'node:buffer';
import { ProtocolError } from '../../runtime/protocol-error.js';
import { Memo } from '../../runtime/memo.js';

export interface PolicyLimits {
  /** Longest line in bytes, newline excluded. */
  maxLineLength: number;
  maxAttributes: number;
  /** Most bytes of one request, newlines included. */
  maxRequestSize: number;
}

/**
 * One request's attributes. Decoded once as a whole (one string), read by name on demand: a
 * request carries ~40 attributes and a decision reads about six. A repeated name keeps its first
 * value (the protocol allows first or last); unknown names are carried and ignored.
 *
 * The attributes every decision and its log line read (KNOWN) are located by the decoder on its
 * one pass over the bytes, so reading them is a slice; any other name is searched for.
 */
/** "\nname=": built once per attribute name. */
const needles = new Memo((name: string) => `\n${name}=`, 1000);

/** Attribute name -> its slot in PolicyRequest.spans (start and end of the value, in the text). */
const KNOWN: Record<string, number> = { recipient: 0, protocol_state: 2, size: 4, queue_id: 6, client_address: 8, sender: 10, instance: 12 };
/* A plain array: a typed array costs an ArrayBuffer (malloc) per request. */
function noSpans(): number[] {
  return [-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1];
}

/** The KNOWN slot for a name at `bytes[start, start + length)`, or -1; checks the length first. */
function knownSlot(bytes: string, start: number, length: number): number {
  switch (length) {
    case 9:
      return bytes.startsWith('recipient', start) ? 0 : -1;
    case 14:
      return bytes.startsWith('protocol_state', start) ? 2 : bytes.startsWith('client_address', start) ? 8 : -1;
    case 4:
      return bytes.startsWith('size', start) ? 4 : -1;
    case 8:
      return bytes.startsWith('queue_id', start) ? 6 : bytes.startsWith('instance', start) ? 12 : -1;
    case 6:
      return bytes.startsWith('sender', start) ? 10 : -1;
    default:
      return -1;
  }
}

export class PolicyRequest {
  /**
   * @param text the attribute lines, each ended by "\n" (CR removed), as decoded: one flat string.
   * @param spans where the decoder found each KNOWN attribute's value in `text` (start, end;
   *   -1 when absent), or null: search for every name.
   */
  constructor(
    private readonly text: string,
    private readonly spans: number[] | null = null,
  ) {}

  get(name: string): string | undefined {
    const slot = this.spans === null ? undefined : KNOWN[name];
    if (slot !== undefined) {
      const start = this.spans![slot]!;
      return start === -1 ? undefined : this.text.slice(start, this.spans![slot + 1]);
    }
    let start: number;
    if (this.text.startsWith(name) && this.text.charCodeAt(name.length) === 0x3d) {
      start = name.length + 1;
    } else {
      const at = this.text.indexOf(needles.get(name));
      if (at === -1) return undefined;
      start = at + name.length + 2;
    }
    return this.text.slice(start, this.text.indexOf('\n', start));
  }

  /** Every attribute line as [name, value], in arrival order (repeats included). */
  entries(): [string, string][] {
    return this.text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        const eq = l.indexOf('=');
        return [l.slice(0, eq), l.slice(eq + 1)];
      });
  }
}

export type PolicyProtocolErrorCode = 'LINE_TOO_LONG' | 'TOO_MANY_ATTRIBUTES' | 'REQUEST_TOO_LARGE' | 'MALFORMED_LINE';

export class PolicyProtocolError extends ProtocolError<PolicyProtocolErrorCode> {}

const CR = 0x0d;
const LF = 0x0a;
/** First room for a request split across reads: a Postfix 3.x request is ~600-900 bytes. */
const PENDING_START_BYTES = 2048;

export class PolicyDecoder {
  /**
   * The request in progress when a read ended inside it, from index 0 to `filled`: one buffer
   * that grows by doubling and is released when no request is in progress (as pg-protocol keeps
   * its buffer and offsets). A read appends to it; nothing already checked is copied or decoded
   * again, so the cost per byte is the same however the bytes arrive.
   */
  private pending: Buffer | null = null;
  private filled = 0;
  /** Where the line in progress starts in `pending`: every byte before it is in whole lines, checked. */
  private lineStart = 0;
  private attributes = 0;
  private sawCr = false;
  /** Where the KNOWN attributes of the request in progress were found so far (see PolicyRequest). */
  private spans: number[] | null = null;
  private failed: PolicyProtocolError | null = null;
  /** Bytes copied or turned into text so far: lets a test show the work per byte stays flat. */
  bytesCopied = 0;

  constructor(private readonly limits: PolicyLimits) {}

  /** True while a request has started and not ended: a reply will be owed for it. */
  get midRequest(): boolean {
    return this.pending !== null;
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
    if (this.pending === null) {
      // The common case (Postfix writes a whole request at once): the read itself is scanned.
      const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      this.bytesCopied += data.length;
      // Scanned as latin1 (one char per byte, so positions are byte offsets for the byte bounds):
      // String#indexOf runs inside V8, where Buffer#indexOf crosses into C++ on every call (and a
      // charCodeAt loop measured slower than two indexOf per line).
      return this.scan(data, 0, data.toString('latin1'), 0);
    }
    this.append(chunk);
    if (chunk.indexOf(LF) === -1) {
      // No line ended: check the bounds, and leave the bytes for the read that ends their line.
      this.checkUnfinished(this.filled - this.lineStart, this.filled);
      return [];
    }
    const data = this.pending.subarray(0, this.filled);
    const bytes = data.toString('latin1', this.lineStart);
    this.bytesCopied += bytes.length;
    return this.scan(data, this.lineStart, bytes, -this.lineStart);
  }

  /**
   * The lines of `bytes`, the latin1 view of `data` from `base` (char i is byte base + i), which
   * starts at a line's start. The request in progress starts at `requestStart` in the view
   * (negative: it began in an earlier read, and its first bytes are in `data` before `base`).
   */
  private scan(data: Buffer, base: number, bytes: string, requestStart: number): PolicyRequest[] {
    const { maxLineLength, maxAttributes, maxRequestSize } = this.limits;
    const done: PolicyRequest[] = [];
    let pos = 0;
    let spans = this.spans;
    for (let nl = bytes.indexOf('\n', pos); nl !== -1; nl = bytes.indexOf('\n', pos)) {
      let end = nl;
      if (end > pos && bytes.charCodeAt(end - 1) === CR) {
        end--;
        this.sawCr = true;
      }
      if (end - pos > maxLineLength) throw new PolicyProtocolError('LINE_TOO_LONG', `line longer than ${maxLineLength} bytes`);
      if (nl + 1 - requestStart > maxRequestSize) throw new PolicyProtocolError('REQUEST_TOO_LARGE', `request larger than ${maxRequestSize} bytes`);
      if (end === pos) {
        done.push(this.request(data, base, bytes, requestStart, pos, spans));
        requestStart = nl + 1;
        this.attributes = 0;
        this.sawCr = false;
        spans = null;
      } else {
        const eq = bytes.indexOf('=', pos);
        if (eq === -1 || eq >= end || eq === pos) {
          const shown = data.toString('utf8', base + pos, base + Math.min(end, pos + 60));
          throw new PolicyProtocolError('MALFORMED_LINE', `line is not name=value: ${JSON.stringify(shown)}`);
        }
        if (++this.attributes > maxAttributes) {
          throw new PolicyProtocolError('TOO_MANY_ATTRIBUTES', `more than ${maxAttributes} attributes in one request`);
        }
        const slot = knownSlot(bytes, pos, eq - pos);
        if (slot !== -1) {
          spans ??= noSpans();
          // Offsets from the request's start; the first of a repeated name wins.
          if (spans[slot] === -1) {
            spans[slot] = eq + 1 - requestStart;
            spans[slot + 1] = end - requestStart;
          }
        }
      }
      pos = nl + 1;
    }
    this.checkUnfinished(bytes.length - pos, bytes.length - requestStart);
    this.keep(data, base + requestStart, pos - requestStart);
    this.spans = this.pending ? spans : null;
    return done;
  }

  /** The bounds, checked before a line or request ends: a client cannot make us hold more. */
  private checkUnfinished(lineBytes: number, requestBytes: number): void {
    // One more byte than the line bound: the CR of a CRLF.
    if (lineBytes > this.limits.maxLineLength + 1) throw new PolicyProtocolError('LINE_TOO_LONG', `line longer than ${this.limits.maxLineLength} bytes`);
    if (requestBytes > this.limits.maxRequestSize) throw new PolicyProtocolError('REQUEST_TOO_LARGE', `request larger than ${this.limits.maxRequestSize} bytes`);
  }

  /** Adds a read to the request in progress. */
  private append(chunk: Uint8Array): void {
    const pending = this.pending!;
    const filled = this.filled + chunk.length;
    if (filled > pending.length) {
      const grown = Buffer.allocUnsafe(Math.max(filled, 2 * pending.length));
      pending.copy(grown, 0, 0, this.filled);
      this.bytesCopied += this.filled;
      this.pending = grown;
    }
    this.pending!.set(chunk, this.filled);
    this.bytesCopied += chunk.length;
    this.filled = filled;
  }

  /**
   * Keeps the unfinished request, `data` from `from` (its line in progress at `lineStart` from
   * there), at the start of `pending`; releases `pending` when there is none.
   */
  private keep(data: Buffer, from: number, lineStart: number): void {
    const rest = data.length - from;
    this.lineStart = lineStart;
    this.filled = rest;
    if (rest === 0) {
      this.pending = null;
    } else if (this.pending === null) {
      // Copied out of the read, so a large read is not retained by a few bytes of it.
      this.pending = Buffer.allocUnsafe(Math.max(PENDING_START_BYTES, 2 * rest));
      data.copy(this.pending, 0, from);
      this.bytesCopied += rest;
    } else if (from > 0) {
      this.pending.copyWithin(0, from, data.length);
      this.bytesCopied += rest;
    }
  }

  /**
   * The request's lines as text (`start`, `end` in the latin1 view; `start` may be before it): the
   * latin1 view itself when all ASCII, else decoded as UTF-8. The spans hold only for the ASCII
   * text without CRs (their removal shifts every offset).
   */
  private request(data: Buffer, base: number, bytes: string, start: number, end: number, spans: number[] | null): PolicyRequest {
    const from = base + start;
    const to = base + end;
    const ascii = from === 0 && to === data.length - 1 ? isAscii(data) : isAscii(data.subarray(from, to));
    if (!ascii) {
      this.bytesCopied += to - from;
      return new PolicyRequest(data.toString('utf8', from, to).replaceAll('\r\n', '\n'));
    }
    let lines: string;
    if (start >= 0) {
      lines = bytes.slice(start, end);
    } else {
      // Begun in an earlier read: its text is made once, now that it is whole.
      lines = data.toString('latin1', from, to);
      this.bytesCopied += lines.length;
    }
    if (this.sawCr) return new PolicyRequest(lines.replaceAll('\r\n', '\n'));
    return new PolicyRequest(lines, spans ?? noSpans());
  }
}

/** Replies are few distinct texts: each is encoded once (bounded: templates with figures vary). */
const encoded = new Memo((action: string) => Buffer.from(`action=${action}\n\n`, 'utf8'), 1000);

/** The reply bytes for one action. The action must already be valid (config/reply-text.ts). */
export function encodeReply(action: string): Buffer {
  return encoded.get(action);
}
