/*
 * Milter wire format, sans I/O: bytes in, packets out (framing plus typed decoding); replies in,
 * bytes out. No sockets here (server.ts).
 *
 * A packet is a uint32 big-endian length (counting the command byte and the data), the command
 * byte, the data. The length is untrusted: zero, or more than the largest packet we accept, is
 * refused before any allocation (junk on milter ports reads as huge lengths: "GET " is 1195725856,
 * a TLS ClientHello 0x16030100...). After an error the decoder is dead: the connection is dropped.
 */
import { MAX_DATA_SIZE } from './constants.js';
import { ProtocolError } from '../../runtime/protocol-error.js';

export interface Packet {
  command: string;
  data: Buffer;
}

export type MilterProtocolErrorCode = 'LENGTH_ZERO' | 'LENGTH_TOO_LARGE' | 'MALFORMED_PACKET' | 'UNKNOWN_COMMAND' | 'OUT_OF_ORDER' | 'MACROS_OVER_LIMIT';

export class MilterProtocolError extends ProtocolError<MilterProtocolErrorCode> {}

const HEADER = 4;

/** Names what a nonsense length most likely was, for the log line. */
function lengthHint(prefix: Buffer): string {
  const text = prefix.toString('latin1');
  if (/^[A-Z]{3,7} ?$/.test(text.trim()) || /^(GET |POST|HEAD|PUT )/.test(text)) return ` (looks like HTTP: ${JSON.stringify(text)})`;
  if (prefix[0] === 0x16 && prefix[1] === 0x03) return ' (looks like a TLS ClientHello)';
  if (/^[\x20-\x7e]{4}$/.test(text)) return ` (looks like text: ${JSON.stringify(text)})`;
  return '';
}

/** Room the decoder's buffer starts with, and keeps between packets (most packets are far smaller). */
const INITIAL_BUFFER = 4096;

/**
 * Framing over one buffer with offsets, compacted only when it must be (as pg-protocol does):
 * each byte is copied into the buffer at most once on arrival, moved at most about once more, and
 * copied once into its packet, however the bytes arrive (one at a time costs the same per byte
 * as one big read). Before this, every read copied the whole pending buffer: O(n^2) for a client
 * dribbling a packet one byte at a time.
 */
export class MilterDecoder {
  private buffer: Buffer = Buffer.alloc(0);
  /** The unread bytes are buffer[start, end). */
  private start = 0;
  private end = 0;
  private failed: MilterProtocolError | null = null;
  /** Bytes copied so far (into the buffer, within it, into packets): the tests' measure of the cost per byte. */
  bytesCopied = 0;

  /** @param maxLength largest accepted packet length (command byte + data). */
  constructor(private readonly maxLength: number = MAX_DATA_SIZE + 1) {}

  /** Bytes of an incomplete packet are waiting. */
  get midPacket(): boolean {
    return this.end > this.start;
  }

  /** Bytes held for an incomplete packet (never more than one packet and its header). */
  get buffered(): number {
    return this.end - this.start;
  }

  push(chunk: Uint8Array): Packet[] {
    if (this.failed) throw this.failed;
    const input = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    // Nothing pending: decode straight from the read, keeping only its incomplete tail.
    if (this.end === this.start) {
      const packets: Packet[] = [];
      const used = this.decode(input, 0, input.length, packets);
      if (used < input.length) this.append(input.subarray(used));
      return packets;
    }
    this.append(input);
    const packets: Packet[] = [];
    this.start = this.decode(this.buffer, this.start, this.end, packets);
    if (this.start === this.end) this.reset();
    return packets;
  }

  /** Decodes whole packets from data[from, to) into `out`; returns where the undecoded bytes start. */
  private decode(data: Buffer, from: number, to: number, out: Packet[]): number {
    let offset = from;
    while (to - offset >= HEADER) {
      const length = data.readUInt32BE(offset);
      if (length === 0) return this.fail(new MilterProtocolError('LENGTH_ZERO', 'packet of length 0'));
      if (length > this.maxLength) {
        const hint = lengthHint(data.subarray(offset, offset + HEADER));
        return this.fail(new MilterProtocolError('LENGTH_TOO_LARGE', `packet length ${length} over the limit of ${this.maxLength}${hint}`));
      }
      if (to - offset < HEADER + length) break;
      const command = String.fromCharCode(data[offset + HEADER]!);
      // Copy: the buffer is reused, and the caller's chunk is not ours to keep.
      out.push({ command, data: Buffer.from(data.subarray(offset + HEADER + 1, offset + HEADER + length)) });
      this.bytesCopied += length - 1;
      offset += HEADER + length;
    }
    return offset;
  }

  /**
   * Adds bytes after the unread ones. Compacts (moves the unread bytes to the front) only when
   * that frees at least as much as it moves; else grows to twice the size: either way a byte is
   * moved a bounded number of times on average.
   */
  private append(bytes: Buffer): void {
    const unread = this.end - this.start;
    if (this.end + bytes.length > this.buffer.length) {
      if (unread + bytes.length <= this.buffer.length && unread <= this.start) {
        this.buffer.copy(this.buffer, 0, this.start, this.end);
      } else {
        let size = Math.max(INITIAL_BUFFER, this.buffer.length * 2);
        while (size < unread + bytes.length) size *= 2;
        const grown = Buffer.allocUnsafe(size);
        this.buffer.copy(grown, 0, this.start, this.end);
        this.buffer = grown;
      }
      this.bytesCopied += unread;
      this.start = 0;
      this.end = unread;
    }
    bytes.copy(this.buffer, this.end);
    this.bytesCopied += bytes.length;
    this.end += bytes.length;
  }

  /** Empty: start over at the front; a buffer grown for a large packet is let go (idle connections stay small). */
  private reset(): void {
    this.start = 0;
    this.end = 0;
    if (this.buffer.length > INITIAL_BUFFER) this.buffer = Buffer.alloc(0);
  }

  private fail(err: MilterProtocolError): never {
    this.failed = err;
    throw err;
  }
}

/** One packet as one buffer: MTAs (miltertest) read the header with a single read(). */
export function encodePacket(command: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(HEADER + 1 + data.length);
  out.writeUInt32BE(1 + data.length, 0);
  out[HEADER] = command.charCodeAt(0);
  data.copy(out, HEADER + 1);
  return out;
}

/** NUL-terminated strings to the end of the data; a missing final NUL is tolerated. */
export function splitStrings(data: Buffer): string[] {
  if (data.length === 0) return [];
  const end = data[data.length - 1] === 0 ? data.length - 1 : data.length;
  return data.toString('utf8', 0, end).split('\0');
}

export interface OptionNegotiation {
  version: number;
  actions: number;
  protocol: number;
}

export function decodeOptneg(data: Buffer): OptionNegotiation {
  if (data.length < 12) throw new MilterProtocolError('MALFORMED_PACKET', `OPTNEG of ${data.length} bytes, 12 expected`);
  return { version: data.readUInt32BE(0), actions: data.readUInt32BE(4), protocol: data.readUInt32BE(8) };
}

export function encodeOptneg(o: OptionNegotiation, symbols: Map<number, string> = new Map()): Buffer {
  const parts: Buffer[] = [Buffer.alloc(12)];
  parts[0]!.writeUInt32BE(o.version, 0);
  parts[0]!.writeUInt32BE(o.actions, 4);
  parts[0]!.writeUInt32BE(o.protocol, 8);
  for (const [stage, names] of symbols) {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(stage, 0);
    parts.push(head, Buffer.from(`${names}\0`, 'latin1'));
  }
  return encodePacket('O', Buffer.concat(parts));
}

export interface MacroPacket {
  /** The command the macros belong to, e.g. 'C', 'M', 'R'. */
  stage: string;
  macros: Map<string, string>;
}

/** Empty lists (Postfix sends them) and an odd number of strings are accepted. */
export function decodeMacros(data: Buffer): MacroPacket {
  if (data.length === 0) throw new MilterProtocolError('MALFORMED_PACKET', 'MACRO packet without a command code');
  const stage = String.fromCharCode(data[0]!);
  const strings = splitStrings(data.subarray(1));
  const macros = new Map<string, string>();
  for (let i = 0; i + 1 < strings.length; i += 2) macros.set(strings[i]!, strings[i + 1]!);
  return { stage, macros };
}

/**
 * How many name/value pairs the macro list at data[from..] (a MACRO packet after its command
 * code) holds, as decodeMacros reads them (repeated names too).
 */
export function countMacros(data: Buffer, from = 0): number {
  if (data.length <= from) return 0;
  let strings = data[data.length - 1] === 0 ? 0 : 1;
  for (let at = data.indexOf(0, from); at !== -1; at = data.indexOf(0, at + 1)) strings++;
  return strings >> 1;
}

/**
 * One macro's value in the macro list at data[from..], as decodeMacros would give it (the last
 * one of that name), read in place: the session keeps lists as they came and reads the one or two
 * it needs, rather than decoding four lists into maps per message (see session.ts).
 */
export function findMacro(data: Buffer, name: string, from = 0): string | undefined {
  const nameBytes = Buffer.byteLength(name);
  let found: string | undefined;
  for (let at = from; at < data.length; ) {
    const nameEnd = data.indexOf(0, at);
    if (nameEnd === -1 || nameEnd + 1 === data.length) break; // a name without a value
    let valueEnd = data.indexOf(0, nameEnd + 1);
    if (valueEnd === -1) valueEnd = data.length; // a missing final NUL is tolerated
    if (nameEnd - at === nameBytes && data.toString('utf8', at, nameEnd) === name) found = data.toString('utf8', nameEnd + 1, valueEnd);
    at = valueEnd + 1;
  }
  return found;
}

/** The first NUL-terminated string (a RCPT's address), as splitStrings(data)[0] gives it. */
export function firstString(data: Buffer): string {
  const nul = data.indexOf(0);
  return data.toString('utf8', 0, nul === -1 ? data.length : nul);
}

export interface ConnectInfo {
  hostname: string;
  family: 'unix' | 'inet' | 'inet6' | 'unknown';
  port: number | null;
  address: string;
}

export function decodeConnect(data: Buffer): ConnectInfo {
  const nul = data.indexOf(0);
  if (nul === -1 || nul + 1 >= data.length) throw new MilterProtocolError('MALFORMED_PACKET', 'CONNECT without host name and family');
  const hostname = data.toString('utf8', 0, nul);
  const fam = String.fromCharCode(data[nul + 1]!);
  const family = fam === '4' ? 'inet' : fam === '6' ? 'inet6' : fam === 'L' ? 'unix' : 'unknown';
  if (family === 'unknown') return { hostname, family, port: null, address: '' };
  let rest = data.subarray(nul + 2);
  // The port is there for 4, 6 and L (0 for a unix socket); only U (unknown) has none.
  if (rest.length < 2) throw new MilterProtocolError('MALFORMED_PACKET', 'CONNECT without a port');
  const port = rest.readUInt16BE(0);
  rest = rest.subarray(2);
  return { hostname, family, port, address: splitStrings(rest)[0] ?? '' };
}
