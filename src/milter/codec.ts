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

export interface Packet {
  command: string;
  data: Buffer;
}

export type MilterProtocolErrorCode = 'LENGTH_ZERO' | 'LENGTH_TOO_LARGE' | 'MALFORMED_PACKET' | 'UNKNOWN_COMMAND' | 'OUT_OF_ORDER';

export class MilterProtocolError extends Error {
  constructor(
    readonly code: MilterProtocolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'MilterProtocolError';
  }
}

const HEADER = 4;

/** Names what a nonsense length most likely was, for the log line. */
function lengthHint(prefix: Buffer): string {
  const text = prefix.toString('latin1');
  if (/^[A-Z]{3,7} ?$/.test(text.trim()) || /^(GET |POST|HEAD|PUT )/.test(text)) return ` (looks like HTTP: ${JSON.stringify(text)})`;
  if (prefix[0] === 0x16 && prefix[1] === 0x03) return ' (looks like a TLS ClientHello)';
  if (/^[\x20-\x7e]{4}$/.test(text)) return ` (looks like text: ${JSON.stringify(text)})`;
  return '';
}

export class MilterDecoder {
  private pending: Buffer | null = null;
  private failed: MilterProtocolError | null = null;

  /** @param maxLength largest accepted packet length (command byte + data). */
  constructor(private readonly maxLength: number = MAX_DATA_SIZE + 1) {}

  /** Bytes of an incomplete packet are waiting. */
  get midPacket(): boolean {
    return this.pending !== null && this.pending.length > 0;
  }

  push(chunk: Uint8Array): Packet[] {
    if (this.failed) throw this.failed;
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.pending) data = Buffer.concat([this.pending, data]);
    this.pending = null;
    const packets: Packet[] = [];
    let offset = 0;
    while (data.length - offset >= HEADER) {
      const length = data.readUInt32BE(offset);
      if (length === 0) return this.fail(new MilterProtocolError('LENGTH_ZERO', 'packet of length 0'));
      if (length > this.maxLength) {
        const hint = lengthHint(data.subarray(offset, offset + HEADER));
        return this.fail(new MilterProtocolError('LENGTH_TOO_LARGE', `packet length ${length} over the limit of ${this.maxLength}${hint}`));
      }
      if (data.length - offset < HEADER + length) break;
      const command = String.fromCharCode(data[offset + HEADER]!);
      // Copy: the caller may keep the data after this read's buffer is reused.
      packets.push({ command, data: Buffer.from(data.subarray(offset + HEADER + 1, offset + HEADER + length)) });
      offset += HEADER + length;
    }
    if (offset < data.length) this.pending = Buffer.from(data.subarray(offset));
    return packets;
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
