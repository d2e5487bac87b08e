/*
 * Fuzz target: the Postfix policy decoder (src/policy/codec.ts), bytes -> requests.
 *
 * Properties, for any bytes and any limits:
 * - the decoder returns requests or throws PolicyProtocolError, never anything else, and a failed
 *   decoder stays failed;
 * - the same bytes fed whole, cut at random offsets, and (when small) a byte at a time give the
 *   same requests, and are refused in all three or in none: the decoder is chunking-invariant;
 * - every request returned is the next complete request of the input, attribute for attribute
 *   (entries() and get(), first value of a repeated name), and keeps every bound: no line longer
 *   than maxLineLength, no more than maxAttributes, no more than maxRequestSize bytes;
 * - nothing is swallowed: without an error every complete request is returned; a complete
 *   request over a bound is refused; input well inside every bound is never refused;
 * - the work per byte stays flat: the bytes the decoder copies (its bytesCopied counter) stay
 *   under POLICY_COPIES_PER_BYTE per byte fed, however the input is cut.
 * The reference here is the protocol's framing (lines ended by LF, one CR before it tolerated,
 * a request ended by an empty line), written independently of the decoder.
 * Must never: weaken a property to make a run pass; a failure is written up, not hidden.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PolicyDecoder, PolicyProtocolError, type PolicyLimits, type PolicyRequest } from '../../../src/faces/policy/codec.js';
import { assertFlatWork, BYTEWISE_MAX_BYTES, bytewise, cutAt, cutsArbitrary, feed, type Fed } from '../chunks.js';
import { bytesTarget, type BytesInput } from '../target.js';

export interface PolicyInput extends BytesInput {
  limits: PolicyLimits;
}

/**
 * Bytes a policy decoder may copy or decode per byte fed: into its buffer, once more when it
 * grows, the line in progress as text, the unfinished request kept, the request's text (latin1,
 * or UTF-8 too). Measured worst over 60,000 random cases and cuttings: 5.1.
 */
export const POLICY_COPIES_PER_BYTE = 8;

/** The frontend's defaults (src/config.ts policy.max_*): the limits Postfix meets in production. */
const DEFAULT_LIMITS: PolicyLimits = { maxLineLength: 4096, maxAttributes: 100, maxRequestSize: 65536 };

/** The attribute names the decoder locates on its pass (its "spans"), and some that look like them. */
const NAMES = ['recipient', 'sender', 'protocol_state', 'size', 'queue_id', 'client_address', 'request', 'instance', 'Recipient', 'recipient ', 'sizes', 'siz', 'x'];

const LF = 0x0a;
const CR = 0x0d;
const EQ = 0x3d;

/* ---------- generation ---------- */

const str = (s: string) => Buffer.from(s, 'utf8');
/** Value bytes: text, the bytes that matter to the framing, broken and whole UTF-8. */
const valuePiece = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 12 }).map(str) },
  { weight: 2, arbitrary: fc.constantFrom('=', '\r', '\0', '\t', ' ', 'é', '€', '😀', '@', '<>', '\r\r').map(str) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 3, min: 0x80, max: 0xff }).map((b) => Buffer.from(b)) },
);
const value = fc.array(valuePiece, { maxLength: 6 }).map((p) => Buffer.concat(p));
const name = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...NAMES).map(str) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((b) => Buffer.from(b.filter((x) => x !== EQ && x !== LF))) },
);
const eol = fc.oneof({ weight: 12, arbitrary: fc.constantFrom('\n', '\r\n').map(str) }, { weight: 1, arbitrary: fc.constantFrom('\r\r\n', '').map(str) });
/** A value long enough to pass the default line bound (4096) or come near it. */
const longValue = fc.integer({ min: 4000, max: 5000 }).map((n) => Buffer.alloc(n, 0x76));
const line = fc.oneof(
  { weight: 30, arbitrary: fc.tuple(name, value, eol).map(([n, v, e]) => Buffer.concat([n, str('='), v, e])) },
  { weight: 1, arbitrary: fc.tuple(name, longValue, eol).map(([n, v, e]) => Buffer.concat([n, str('='), v, e])) },
  { weight: 1, arbitrary: fc.tuple(value, eol).map(([v, e]) => Buffer.concat([v, e])) },
  { weight: 1, arbitrary: fc.tuple(value, eol).map(([v, e]) => Buffer.concat([str('='), v, e])) },
);
const request = fc.tuple(fc.array(line, { maxLength: 8 }), eol).map(([lines, end]) => Buffer.concat([...lines, end]));
const requests = fc.array(request, { maxLength: 5 }).map((r) => Buffer.concat(r));
const junk = fc.oneof(fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), fc.constantFrom('GET / HTTP/1.1\r\nHost: x\r\n\r\n', '\x16\x03\x01\x00\xa5\x01').map((s) => Buffer.from(s, 'latin1')));
/** Flips a few bytes of a well-formed stream, or truncates it. */
const mutated = fc.tuple(requests, fc.array(fc.tuple(fc.nat(), fc.constantFrom(LF, CR, EQ, 0, 0x80, 0xff, 0x61)), { maxLength: 4 }), fc.option(fc.nat())).map(([b, flips, cut]) => {
  const out = Buffer.from(b);
  for (const [at, v] of flips) if (out.length > 0) out[at % out.length] = v;
  return cut === null || out.length === 0 ? out : out.subarray(0, cut % out.length);
});

const limits: fc.Arbitrary<PolicyLimits> = fc.oneof(
  fc.constant(DEFAULT_LIMITS),
  fc.record({ maxLineLength: fc.integer({ min: 1, max: 80 }), maxAttributes: fc.integer({ min: 0, max: 8 }), maxRequestSize: fc.integer({ min: 1, max: 300 }) }),
);

const arbitrary: fc.Arbitrary<PolicyInput> = fc.record({
  limits,
  bytes: fc.oneof({ weight: 5, arbitrary: requests }, { weight: 3, arbitrary: mutated }, { weight: 1, arbitrary: junk }, { weight: 1, arbitrary: fc.tuple(requests, junk).map((p) => Buffer.concat(p)) }),
  cuts: cutsArbitrary,
});

/* ---------- the reference framing ---------- */

interface RawRequest {
  /** Each attribute line without its LF and without one CR before it. */
  lines: Buffer[];
  /** Bytes of CR before LF per line (0 or 1). */
  crs: number[];
  /** Every byte of the request, its empty line included. */
  size: number;
  /** Bytes of the empty line that ended it ("\n" or "\r\n"). */
  terminator: number;
}

interface Framing {
  complete: RawRequest[];
  /** The request not yet ended: its whole lines, and the bytes after the last LF. */
  partial: RawRequest;
  tail: Buffer;
}

function frame(bytes: Buffer): Framing {
  const complete: RawRequest[] = [];
  let current: RawRequest = { lines: [], crs: [], size: 0, terminator: 0 };
  let pos = 0;
  for (let nl = bytes.indexOf(LF, pos); nl !== -1; nl = bytes.indexOf(LF, pos)) {
    const cr = nl > pos && bytes[nl - 1] === CR ? 1 : 0;
    const content = bytes.subarray(pos, nl - cr);
    current.size += nl + 1 - pos;
    if (content.length === 0) {
      current.terminator = nl + 1 - pos;
      complete.push(current);
      current = { lines: [], crs: [], size: 0, terminator: 0 };
    } else {
      current.lines.push(content);
      current.crs.push(cr);
    }
    pos = nl + 1;
  }
  return { complete, partial: current, tail: bytes.subarray(pos) };
}

const wellFormed = (l: Buffer) => l.indexOf(EQ) > 0;

/** Over a bound or malformed however the bounds are read: must never be returned. */
function mustRefuse(r: RawRequest, lim: PolicyLimits): string | null {
  if (r.lines.length > lim.maxAttributes) return `${r.lines.length} attributes > maxAttributes ${lim.maxAttributes}`;
  if (r.size - r.terminator > lim.maxRequestSize) return `${r.size - r.terminator} bytes before the empty line > maxRequestSize ${lim.maxRequestSize}`;
  for (const l of r.lines) {
    if (l.length > lim.maxLineLength) return `a line of ${l.length} bytes > maxLineLength ${lim.maxLineLength}`;
    if (!wellFormed(l)) return `a line that is not name=value: ${JSON.stringify(l.toString('latin1').slice(0, 40))}`;
  }
  return null;
}

/** Inside every bound however they are read (CRs, newlines and the empty line counted): must be accepted. */
function mustAccept(r: RawRequest, lim: PolicyLimits): boolean {
  return r.lines.length <= lim.maxAttributes && r.size <= lim.maxRequestSize && r.lines.every((l, i) => l.length + r.crs[i]! <= lim.maxLineLength && wellFormed(l));
}

/**
 * The unfinished request cannot yet be over a bound, even for a decoder that refuses as early as
 * it may (counting the LF and empty line still to come, and the tail as one more attribute).
 */
function partialFits(f: Framing, lim: PolicyLimits): boolean {
  const { partial, tail } = f;
  const tailIsLine = tail.length > 0 && !(tail.length === 1 && tail[0] === CR);
  return (
    mustAccept(partial, lim) &&
    partial.lines.length + (tailIsLine ? 1 : 0) <= lim.maxAttributes &&
    tail.length + 1 <= lim.maxLineLength &&
    partial.size + tail.length + 3 <= lim.maxRequestSize &&
    tail[0] !== EQ
  );
}

/** The attributes as the protocol defines them: UTF-8 text, name before the first '='. */
function entriesOf(r: RawRequest): [string, string][] {
  return r.lines.map((l) => {
    const text = l.toString('utf8');
    const eq = text.indexOf('=');
    return [text.slice(0, eq), text.slice(eq + 1)];
  });
}

const KNOWN = ['recipient', 'protocol_state', 'size', 'queue_id', 'client_address', 'sender'];

function assertSameRequest(got: PolicyRequest, want: RawRequest, where: string): void {
  const entries = entriesOf(want);
  assert.deepEqual(got.entries(), entries, `${where}: entries()`);
  const first = new Map<string, string>();
  for (const [n, v] of entries) if (!first.has(n)) first.set(n, v);
  for (const n of new Set([...first.keys(), ...KNOWN, 'no_such_attribute'])) {
    assert.equal(got.get(n), first.get(n), `${where}: get(${JSON.stringify(n)}) must be the first value`);
  }
}

/* ---------- the properties ---------- */

function run(input: PolicyInput, chunks: Buffer[], how: string): Fed<PolicyRequest> {
  const decoder = new PolicyDecoder(input.limits);
  const fed = feed(decoder, chunks, PolicyProtocolError);
  assertFlatWork(decoder, input.bytes.length, POLICY_COPIES_PER_BYTE, how);
  return fed;
}

export function checkPolicyDecoder(input: PolicyInput): void {
  const { bytes, limits: lim } = input;
  const f = frame(bytes);
  const firstBad = f.complete.findIndex((r) => mustRefuse(r, lim) !== null);
  const allClean = f.complete.every((r) => mustAccept(r, lim)) && partialFits(f, lim);

  const runs: [string, Fed<PolicyRequest>][] = [
    ['whole', run(input, [bytes], 'whole')],
    ['cut', run(input, cutAt(bytes, input.cuts), 'cut')],
  ];
  if (bytes.length <= BYTEWISE_MAX_BYTES || input.bytewise) runs.push(['byte at a time', run(input, bytewise(bytes), 'byte at a time')]);

  const [, whole] = runs[0]!;
  for (const [how, fed] of runs) {
    // Which bound is named may differ (a request cut inside an over-long line can pass the request
    // bound first); whether the input is refused may not.
    assert.equal(fed.error === null, whole.error === null, `${how}: refused ${fed.error?.message ?? 'nothing'}, fed whole: ${whole.error?.message ?? 'nothing'} (chunking-invariant)`);
    assert.ok(fed.items.length <= f.complete.length, `${how}: ${fed.items.length} requests returned from ${f.complete.length} complete ones`);
    fed.items.forEach((got, i) => {
      const over = mustRefuse(f.complete[i]!, lim);
      assert.equal(over, null, `${how}: request ${i} was returned although ${over}`);
      assertSameRequest(got, f.complete[i]!, `${how}: request ${i}`);
    });
    if (fed.error === null) assert.equal(fed.items.length, f.complete.length, `${how}: no error, so every complete request must be returned`);
    if (firstBad !== -1) assert.ok(fed.error !== null, `${how}: request ${firstBad} (${mustRefuse(f.complete[firstBad]!, lim)}) must be refused`);
    if (allClean) assert.equal(fed.error, null, `${how}: input inside every bound was refused: ${fed.error?.message}`);
  }
}

export const policyDecoderTarget = bytesTarget<PolicyInput>({
  name: 'policy-decoder',
  about: 'PolicyDecoder.push: any bytes and limits, whole / cut / byte at a time',
  arbitrary,
  check: checkPolicyDecoder,
});
