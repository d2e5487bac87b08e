/*
 * Fuzz target: the milter decoder (src/milter/codec.ts MilterDecoder), bytes -> packets.
 *
 * Properties, for any bytes and any largest packet length:
 * - the decoder returns packets or throws MilterProtocolError, never anything else, and a failed
 *   decoder stays failed;
 * - the same bytes fed whole, cut at random offsets, and (when small) a byte at a time give the
 *   same packets, and are refused in all three or in none (chunking-invariant);
 * - every packet returned is the next frame of the input (uint32 length, command byte, data),
 *   and no packet is longer than the limit; a frame whose length is 0 or over the limit is
 *   refused, and nothing after it is returned; without an error every complete frame is
 *   returned, and midPacket tells whether bytes of an unfinished frame are waiting;
 * - the work per byte stays flat: bytes copied (bytesCopied) under MILTER_COPIES_PER_BYTE per byte fed.
 * Must never: weaken a property to make a run pass.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MilterDecoder, MilterProtocolError, type Packet } from '../../../src/faces/milter/codec.js';
import { MAX_DATA_SIZE } from '../../../src/faces/milter/constants.js';
import { assertFlatWork, BYTEWISE_MAX_BYTES, bytewise, cutAt, cutsArbitrary, feed, type Fed } from '../chunks.js';
import { bytesTarget, type BytesInput } from '../target.js';

export interface MilterBytesInput extends BytesInput {
  /** Largest accepted packet length (command byte + data); the server's is MAX_DATA_SIZE + 1. */
  maxLength: number;
}

/**
 * Bytes the milter decoder may copy per byte fed: into its buffer, moved once when it compacts or
 * grows, into the packet. Measured worst over 60,000 random cases and cuttings: 1.9.
 */
export const MILTER_COPIES_PER_BYTE = 4;

export const SERVER_MAX_LENGTH = MAX_DATA_SIZE + 1;
const COMMANDS = 'ABCDEHKLMNOQRTU';

/* ---------- generation ---------- */

/** A frame whose length field is right, zero, off by a little, huge, or anything. */
const frame = fc
  .tuple(
    fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...COMMANDS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)) }),
    fc.uint8Array({ maxLength: 40 }),
    fc.oneof(
      { weight: 12, arbitrary: fc.constant((right: number) => right) },
      { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }).map((d) => (right: number) => Math.max(0, right + d)) },
      { weight: 1, arbitrary: fc.constantFrom(0, 0x7fffffff, 0xffffffff, SERVER_MAX_LENGTH, SERVER_MAX_LENGTH + 1).map((v) => () => v) },
    ),
  )
  .map(([command, data, lengthOf]) => {
    const out = Buffer.alloc(5 + data.length);
    out.writeUInt32BE(lengthOf(1 + data.length), 0);
    out[4] = command.charCodeAt(0);
    out.set(data, 5);
    return out;
  });
/** What else reaches a milter port: HTTP, a TLS ClientHello, a policy request. */
const junk = fc.constantFrom('GET / HTTP/1.1\r\n\r\n', '\x16\x03\x01\x00\xa5\x01\x00', 'request=smtpd_access_policy\n\n', '\0\0\0').map((s) => Buffer.from(s, 'latin1'));
const frames = fc.array(fc.oneof({ weight: 10, arbitrary: frame }, { weight: 1, arbitrary: junk }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 12 }).map((b) => Buffer.from(b)) }), { maxLength: 8 }).map((f) => Buffer.concat(f));
const truncated = fc.tuple(frames, fc.nat()).map(([b, n]) => b.subarray(0, b.length === 0 ? 0 : n % b.length));

const arbitrary: fc.Arbitrary<MilterBytesInput> = fc.record({
  maxLength: fc.oneof(fc.constant(SERVER_MAX_LENGTH), fc.integer({ min: 1, max: 48 })),
  bytes: fc.oneof({ weight: 4, arbitrary: frames }, { weight: 1, arbitrary: truncated }),
  cuts: cutsArbitrary,
});

/* ---------- the reference framing ---------- */

interface Framing {
  frames: { command: string; data: Buffer }[];
  /** Index of the first frame whose length must be refused, or -1. */
  refusedAt: number;
  /** Bytes after the last complete frame (none counted after a refused length). */
  leftover: number;
}

function frameAll(bytes: Buffer, maxLength: number): Framing {
  const frames: Framing['frames'] = [];
  let at = 0;
  while (bytes.length - at >= 4) {
    const length = bytes.readUInt32BE(at);
    if (length === 0 || length > maxLength) return { frames, refusedAt: frames.length, leftover: 0 };
    if (bytes.length - at < 4 + length) break;
    frames.push({ command: String.fromCharCode(bytes[at + 4]!), data: bytes.subarray(at + 5, at + 4 + length) });
    at += 4 + length;
  }
  return { frames, refusedAt: -1, leftover: bytes.length - at };
}

/* ---------- the properties ---------- */

export function checkMilterDecoder(input: MilterBytesInput): void {
  const { bytes, maxLength } = input;
  const want = frameAll(bytes, maxLength);
  const runs: [string, MilterDecoder, Fed<Packet>][] = [];
  const run = (how: string, chunks: Buffer[]) => {
    const d = new MilterDecoder(maxLength);
    runs.push([how, d, feed(d, chunks, MilterProtocolError)]);
    assertFlatWork(d, bytes.length, MILTER_COPIES_PER_BYTE, how);
  };
  run('whole', [bytes]);
  run('cut', cutAt(bytes, input.cuts));
  if (bytes.length <= BYTEWISE_MAX_BYTES || input.bytewise) run('byte at a time', bytewise(bytes));

  for (const [how, decoder, fed] of runs) {
    assert.ok(fed.items.length <= want.frames.length, `${how}: ${fed.items.length} packets from ${want.frames.length} complete frames`);
    fed.items.forEach((p, i) => {
      assert.ok(1 + p.data.length <= maxLength, `${how}: packet ${i} of ${1 + p.data.length} bytes over the limit ${maxLength}`);
      assert.deepEqual({ command: p.command, data: Buffer.from(p.data) }, { command: want.frames[i]!.command, data: Buffer.from(want.frames[i]!.data) }, `${how}: packet ${i}`);
    });
    if (want.refusedAt !== -1) {
      assert.ok(fed.error !== null, `${how}: the length of frame ${want.refusedAt} is 0 or over ${maxLength} and must be refused`);
    } else {
      assert.equal(fed.error, null, `${how}: every length is valid, yet refused: ${fed.error?.message}`);
      assert.equal(fed.items.length, want.frames.length, `${how}: every complete frame must be returned`);
      const mid = (decoder as unknown as { midPacket?: unknown }).midPacket;
      if (typeof mid === 'boolean') assert.equal(mid, want.leftover > 0, `${how}: midPacket with ${want.leftover} bytes waiting`);
    }
  }
}

export const milterDecoderTarget = bytesTarget<MilterBytesInput>({
  name: 'milter-decoder',
  about: 'MilterDecoder.push: any bytes and limit, whole / cut / byte at a time',
  arbitrary,
  check: checkMilterDecoder,
});
