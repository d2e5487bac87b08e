/*
 * Slow-input probes for the long run (npm run fuzz): does the work per byte stay flat as the
 * input grows? Each probe builds the worst shape we know for one target (a byte at a time up to
 * the largest request or packet, a text far over its bound) at a small and a 16 times larger
 * size, and compares the time per byte. Linear code gives a ratio near 1, quadratic near 16: the
 * bound MAX_PER_BYTE_GROWTH = 4 is generous on a busy 2-core machine and still tells them apart.
 * Must never: run in npm test (timing is not asserted there; the decoders' byte counters are,
 * in the targets), or keep a measurement from a single run (best of PROBE_ROUNDS).
 */
import { formatReplyText } from '../../src/faces/milter/render.js';
import { MilterDecoder, encodePacket } from '../../src/faces/milter/codec.js';
import { PolicyDecoder } from '../../src/faces/policy/codec.js';
import { replyProblem } from '../../src/config/reply-text.js';
import { checkMailboxUser } from '../../src/stores/paths.js';
import { parseRecipient } from '../../src/core/recipient.js';

export const MAX_PER_BYTE_GROWTH = 4;
const GROWTH = 16;
const PROBE_ROUNDS = 3;

export interface ScalingProbe {
  target: string;
  name: string;
  /** Input size in bytes at the small end; the large end is GROWTH times it. */
  small: number;
  /** Builds the input of about `bytes` bytes (not timed) and returns the work to time. */
  prepare(bytes: number): () => void;
}

/** A probe feeding a new decoder its input one byte at a time, from 16 KiB to 256 KiB. */
function byteAtATime(target: string, name: string, input: (bytes: number) => Buffer, decoder: () => { push(b: Buffer): unknown }): ScalingProbe {
  return {
    target,
    name: `${name}, a byte at a time`,
    small: 16384,
    prepare: (bytes) => {
      const data = input(bytes);
      return () => {
        const d = decoder();
        for (let i = 0; i < data.length; i++) d.push(data.subarray(i, i + 1));
      };
    },
  };
}

/*
 * The decoders' bounds are settings (and milter v6 may negotiate 256 KiB and 1 MiB packets), so the
 * probes raise them: at the defaults (64 KiB) the fixed cost per read hides a quadratic term
 * (the decoders before issue 11 measured x3.2 to x5.1 from 4 KiB to 64 KiB, x13 to x35 from 16 KiB
 * to 256 KiB).
 */
const LARGE_POLICY_LIMITS = { maxLineLength: 1 << 20, maxAttributes: 10_000, maxRequestSize: 1 << 21 };
const LARGE_PACKET = 1 << 20;

/** One policy request of `bytes` bytes in lines of about 650 bytes. */
function policyRequest(bytes: number): Buffer {
  const lines: string[] = [];
  for (let n = 0, size = 0; size + 650 < bytes; n++, size += 650) lines.push(`attr${String(n).padStart(4, '0')}=${'v'.repeat(640)}\n`);
  return Buffer.from(`${lines.join('')}\n`);
}

export const PROBES: ScalingProbe[] = [
  byteAtATime('policy-decoder', 'one request of many lines (request bound set to 2 MiB)', policyRequest, () => new PolicyDecoder(LARGE_POLICY_LIMITS)),
  byteAtATime('policy-decoder', 'one long line (line bound set to 1 MiB)', (bytes) => Buffer.from(`recipient=${'a'.repeat(bytes)}`), () => new PolicyDecoder(LARGE_POLICY_LIMITS)),
  byteAtATime('milter-decoder', 'one packet (packet bound set to 1 MiB)', (bytes) => encodePacket('B', Buffer.alloc(bytes, 0x61)), () => new MilterDecoder(LARGE_PACKET)),
  {
    target: 'reply-formatter',
    name: 'formatReplyText of a text far over its byte bound',
    small: 4096,
    prepare: (bytes) => {
      const text = 'x'.repeat(bytes);
      return () => void formatReplyText('452', text);
    },
  },
  {
    target: 'reply-templates',
    name: 'replyProblem of a long template',
    small: 65536,
    prepare: (bytes) => {
      const text = `452 4.2.2 ${'{usag '.repeat(bytes / 6)}`;
      return () => void replyProblem(text);
    },
  },
  {
    target: 'recipient',
    name: 'parseRecipient of a long address',
    small: 65536,
    prepare: (bytes) => {
      const raw = `<${' '.repeat(bytes)}a@example.com>`;
      return () => void parseRecipient(raw, { delimiters: '+', lowercaseLocalPart: true, keyTemplate: '{local}' });
    },
  },
  {
    target: 'mailbox-user',
    name: 'checkMailboxUser of a long key',
    small: 65536,
    prepare: (bytes) => {
      const user = 'a'.repeat(bytes);
      return () => void checkMailboxUser(user);
    },
  },
];

/** A round this long says enough: super-linear code is not run twice more (minutes, at 256 KiB). */
const ENOUGH_MS = 2000;

function bestMs(work: () => void): number {
  let best = Infinity;
  for (let r = 0; r < PROBE_ROUNDS; r++) {
    const t0 = performance.now();
    work();
    best = Math.min(best, performance.now() - t0);
    if (best > ENOUGH_MS) break;
  }
  return best;
}

export interface ProbeResult {
  probe: ScalingProbe;
  smallMs: number;
  largeMs: number;
  /** Time per byte at the large size over that at the small size. */
  growth: number;
}

export function runProbe(probe: ScalingProbe): ProbeResult {
  const small = probe.prepare(probe.small);
  const large = probe.prepare(probe.small * GROWTH);
  small(); // warm up: compiled code, not the interpreter, is compared
  const smallMs = bestMs(small);
  const largeMs = bestMs(large);
  return { probe, smallMs, largeMs, growth: largeMs / GROWTH / Math.max(smallMs, 1e-3) };
}
