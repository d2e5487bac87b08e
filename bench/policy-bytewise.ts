/*
 * The policy decoder's cost per byte when a request arrives one byte at a time, against the same
 * request in one read, at growing request sizes: flat means the per-byte figure does not grow
 * with the size (issue 11: the old decoder copied and decoded the whole pending request on every
 * read, O(n²)). A microscope for src/policy/codec.ts, no sockets; not part of `npm run bench`.
 *
 *   node --import tsx bench/policy-bytewise.ts [--rounds 3]
 *
 * Prints nanoseconds per byte (medians of the rounds) and the decoder's bytesCopied per byte.
 */
import { parseArgs } from 'node:util';
import { PolicyDecoder } from '../src/faces/policy/codec.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
const rounds = Number(values.rounds);
const limits = { maxLineLength: 2048, maxAttributes: 1000, maxRequestSize: 65536 };
const SIZES = [1_000, 8_000, 60_000];
/** Bytes fed per measurement, so small and large requests are timed over similar work. */
const BYTES_PER_RUN = 2_000_000;

/** A request of about `size` bytes: Postfix-like lines and long filler values. */
function requestOf(size: number): Buffer {
  const lines = ['request=smtpd_access_policy', 'protocol_state=RCPT', 'recipient=bob@example.com', 'sender=alice@example.net'];
  for (let i = 0, bytes = 90; bytes < size; i++) {
    const line = `x_filler${i}=${'v'.repeat(i % 2 === 0 ? 1500 : 20)}`;
    lines.push(line);
    bytes += line.length + 1;
  }
  return Buffer.from(lines.join('\n') + '\n\n');
}

function run(request: Buffer, bytewise: boolean): { nsPerByte: number; copiedPerByte: number } {
  const bytes = bytewise ? [...request].map((b) => Buffer.of(b)) : [request];
  const times = Math.max(1, Math.round(BYTES_PER_RUN / request.length));
  let copied = 0;
  const start = process.hrtime.bigint();
  for (let t = 0; t < times; t++) {
    const decoder = new PolicyDecoder(limits);
    let got = 0;
    for (const b of bytes) got += decoder.push(b).length;
    if (got !== 1) throw new Error('request not decoded');
    copied += decoder.bytesCopied;
  }
  const ns = Number(process.hrtime.bigint() - start);
  return { nsPerByte: ns / (times * request.length), copiedPerByte: copied / (times * request.length) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const size of SIZES) run(requestOf(size), true); // warm-up
for (const size of SIZES) {
  const request = requestOf(size);
  for (const bytewise of [false, true]) {
    const runs = Array.from({ length: rounds }, () => run(request, bytewise));
    const ns = median(runs.map((r) => r.nsPerByte));
    console.log(`${String(request.length).padStart(6)} bytes, ${bytewise ? 'one byte per read' : 'one read         '}: ${ns.toFixed(2).padStart(7)} ns/byte, ${runs[0]!.copiedPerByte.toFixed(2)} bytes copied/byte`);
  }
}
