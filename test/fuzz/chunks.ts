/*
 * Feeding a decoder the same bytes cut in different places, as TCP may deliver them.
 *
 * Used by the policy and milter decoder targets to check that a decoder is chunking-invariant.
 * Must never hide an exception: anything a decoder throws that is not its protocol error is
 * rethrown as the crash it is.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';

/** Inputs up to this size are also fed one byte at a time on every case (bigger ones cost too much per case, unless the input asks). */
export const BYTEWISE_MAX_BYTES = 512;

/** Cut offsets: any naturals, taken modulo the input length when applied. */
export const cutsArbitrary = fc.array(fc.nat({ max: 1 << 20 }), { maxLength: 8 });

/** The chunks for these cuts: offsets are folded into [0, length], sorted; empty chunks are kept (a read of 0 bytes must be harmless). */
export function cutAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const at = cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const c of at) {
    chunks.push(bytes.subarray(from, c));
    from = c;
  }
  chunks.push(bytes.subarray(from));
  return chunks;
}

export function bytewise(bytes: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i++) chunks.push(bytes.subarray(i, i + 1));
  return chunks;
}

export interface Decoder<T> {
  push(chunk: Uint8Array): T[];
}

/**
 * The decoders count the bytes they copy or turn into text (bytesCopied): the work per byte must
 * stay flat however the bytes arrive, so this count is bounded by a multiple of the bytes fed.
 * A decoder without the counter fails here: the property could not be checked.
 */
export function assertFlatWork(decoder: object, fedBytes: number, factor: number, where: string): void {
  const copied = (decoder as { bytesCopied?: unknown }).bytesCopied;
  assert.equal(typeof copied, 'number', `${where}: the decoder has no bytesCopied counter to check the work per byte`);
  assert.ok((copied as number) <= factor * fedBytes + 16, `${where}: ${copied} bytes copied for ${fedBytes} fed, over ${factor} per byte (super-linear)`);
}

export interface Fed<T> {
  items: T[];
  /** The protocol error the decoder threw, or null. */
  error: (Error & { code: string }) | null;
}

/**
 * Pushes every chunk; stops at the first error, which must be the decoder's protocol error. A
 * failed decoder must stay failed: one more push throws a protocol error again.
 */
export function feed<T>(decoder: Decoder<T>, chunks: Buffer[], protocolError: new (...a: never[]) => Error): Fed<T> {
  const items: T[] = [];
  for (const chunk of chunks) {
    try {
      items.push(...decoder.push(chunk));
    } catch (err) {
      if (!(err instanceof protocolError)) throw err;
      assert.throws(() => decoder.push(Buffer.from('x')), protocolError, 'a decoder that failed must stay failed');
      return { items, error: err as Error & { code: string } };
    }
  }
  return { items, error: null };
}
