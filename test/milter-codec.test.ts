import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MilterDecoder, MilterProtocolError, countMacros, decodeConnect, decodeMacros, encodePacket, findMacro } from '../src/faces/milter/codec.js';
import { formatReplyText, rcptReplyFor, MAX_MILTER_REPLY_BYTES } from '../src/faces/milter/render.js';
import { parseReply } from '../src/core/replies.js';
import { connect, macro, mail, optneg, rcpt } from './helpers/milter-packets.js';

const session = Buffer.concat([optneg(), macro('C', 'j', 'mx.example.com', '{daemon_name}', 'smtpd'), connect(), mail('<a@example.net>', 'SIZE=1024'), macro('R', 'i', 'ABC123'), rcpt('<u@example.com>')]);

test('packets split at every byte offset decode the same', () => {
  const whole = new MilterDecoder().push(session);
  assert.deepEqual(whole.map((p) => p.command), ['O', 'D', 'C', 'M', 'D', 'R']);
  for (let cut = 0; cut <= session.length; cut++) {
    const d = new MilterDecoder();
    const got = [...d.push(session.subarray(0, cut)), ...d.push(session.subarray(cut))];
    assert.deepEqual(got, whole, `cut at ${cut}`);
    assert.equal(d.midPacket, false);
  }
});

test('a packet fed one byte at a time decodes, and midPacket tells a truncated one', () => {
  const d = new MilterDecoder();
  const got = [];
  for (const b of session.subarray(0, session.length - 1)) got.push(...d.push(Uint8Array.of(b)));
  assert.equal(got.length, 5);
  assert.equal(d.midPacket, true);
  got.push(...d.push(session.subarray(session.length - 1)));
  assert.equal(got.length, 6);
  assert.equal(d.midPacket, false);
});

/** Bytes the decoder copied per byte of input, fed in chunks of `chunk` bytes. */
function copiedPerByte(bytes: Buffer, chunk: number): number {
  const d = new MilterDecoder();
  let packets = 0;
  for (let i = 0; i < bytes.length; i += chunk) packets += d.push(bytes.subarray(i, i + chunk)).length;
  assert.equal(d.midPacket, false);
  assert.ok(packets > 0);
  return d.bytesCopied / bytes.length;
}

test('the cost per byte is flat: one byte at a time copies each byte a few times, not the whole pending buffer', () => {
  // The largest packets a client may send, and a plain session: one read, odd-sized reads, one byte per read.
  const large = Buffer.concat([optneg(), encodePacket('B', Buffer.alloc(65535, 0x61)), encodePacket('D', Buffer.alloc(40_000, 0x62)), session]);
  for (const bytes of [session, large]) {
    assert.ok(copiedPerByte(bytes, bytes.length) <= 1, 'in one read: each byte copied once, into its packet');
    for (const chunk of [1, 3, 1000]) {
      const perByte = copiedPerByte(bytes, chunk);
      assert.ok(perByte <= 4, `in reads of ${chunk} byte(s): ${perByte.toFixed(2)} bytes copied per byte of ${bytes.length}`);
    }
  }
});

function refused(bytes: Buffer, code: string) {
  const d = new MilterDecoder();
  assert.throws(() => d.push(bytes), (e: unknown) => e instanceof MilterProtocolError && e.code === code);
  assert.throws(() => d.push(optneg()), MilterProtocolError, 'a failed decoder stays failed');
}

test('length 0 is refused', () => refused(Buffer.from([0, 0, 0, 0, 0x4f]), 'LENGTH_ZERO'));

test('a length over the limit is refused before the data arrives, with a hint for HTTP and TLS junk', () => {
  const d = new MilterDecoder();
  assert.throws(() => d.push(Buffer.from('GET / HTTP/1.1\r\n')), /1195725856 over the limit.*looks like HTTP/);
  assert.throws(() => new MilterDecoder().push(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01])), /looks like a TLS ClientHello/);
  refused(Buffer.from([0, 1, 0, 1, 0x52]), 'LENGTH_TOO_LARGE');
});

test('a packet of exactly 65535 data bytes is accepted', () => {
  const p = encodePacket('B', Buffer.alloc(65535, 0x61));
  const [got] = new MilterDecoder().push(p);
  assert.equal(got!.data.length, 65535);
});

test('macro packets: empty lists and odd string counts are accepted', () => {
  assert.deepEqual(decodeMacros(Buffer.from('H')), { stage: 'H', macros: new Map() });
  const odd = decodeMacros(Buffer.concat([Buffer.from('R'), Buffer.from('i\0Q1\0{rcpt_addr}\0')]));
  assert.deepEqual([...odd.macros], [['i', 'Q1']]);
});

test('a macro read in place (findMacro, countMacros) is what decoding the whole list gives', () => {
  const name = fc.constantFrom('i', '{rcpt_mailer}', 'j', '', 'é');
  fc.assert(
    fc.property(fc.array(fc.oneof(name, fc.string({ maxLength: 6 }))), fc.boolean(), name, (strings, finalNul, wanted) => {
      const text = strings.join('\0') + (finalNul && strings.length > 0 ? '\0' : '');
      const list = Buffer.from(text, 'utf8');
      const decoded = decodeMacros(Buffer.concat([Buffer.from('R'), list])).macros;
      assert.equal(findMacro(list, wanted), decoded.get(wanted));
      assert.equal(countMacros(list), Math.floor(splitCount(list) / 2));
    }),
    { numRuns: 3000 },
  );
});

/** Strings in a list as splitStrings counts them. */
function splitCount(list: Buffer): number {
  if (list.length === 0) return 0;
  return list.toString('utf8', 0, list[list.length - 1] === 0 ? list.length - 1 : list.length).split('\0').length;
}

test('connect packets of every family decode', () => {
  assert.deepEqual(decodeConnect(connect('h', '192.0.2.1', 25).subarray(5)), { hostname: 'h', family: 'inet', port: 25, address: '192.0.2.1' });
  assert.deepEqual(decodeConnect(Buffer.from('localhost\0U')), { hostname: 'localhost', family: 'unknown', port: null, address: '' });
  assert.throws(() => decodeConnect(Buffer.from('nohost')), MilterProtocolError);
});

test('random and mutated input never throws anything but a protocol error, and never holds more than one packet', () => {
  const limit = 1000;
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(session, optneg(), Buffer.from('GET / HTTP/1.0\r\n\r\n'))), { maxLength: 20 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
      (chunks, mutations) => {
        const bytes = Buffer.concat(chunks);
        for (const [at, value] of mutations) if (bytes.length > 0) bytes[at % bytes.length] = value;
        const d = new MilterDecoder(limit);
        try {
          for (let i = 0; i < bytes.length; i += 7) {
            for (const p of d.push(bytes.subarray(i, i + 7))) assert.ok(p.data.length < limit);
            assert.ok(d.buffered <= limit + 4, 'buffers at most one packet');
          }
        } catch (e) {
          if (!(e instanceof MilterProtocolError)) throw e;
        }
      },
    ),
    { numRuns: 2000 },
  );
});

const VALID_REPLY = /^[45]\d\d [45]\.\d{1,3}\.\d{1,3} [^\r\n\0]*$/;

test('the reply formatter always produces a reply both MTAs accept, whatever the text', () => {
  fc.assert(
    fc.property(fc.constantFrom('452', '450', '552', '554', '421'), fc.string({ maxLength: 1500, unit: 'binary' }), (code, text) => {
      const out = formatReplyText(code, text);
      assert.match(out, VALID_REPLY);
      assert.equal(out.slice(0, 3), code);
      assert.equal(out[4], code[0], 'status class matches the code');
      assert.ok(Buffer.byteLength(out) <= MAX_MILTER_REPLY_BYTES);
      assert.doesNotMatch(out.replaceAll('%%', ''), /%/, 'every % is doubled');
    }),
    { numRuns: 3000 },
  );
});

test('the usual replies become y with the text escaped; DUNNO and WARN continue', () => {
  assert.deepEqual(rcptReplyFor(parseReply('452 4.2.2 Mailbox full, try again later')), { kind: 'replycode', text: '452 4.2.2 Mailbox full, try again later' });
  assert.deepEqual(rcptReplyFor(parseReply('452 4.2.2 Mailbox full ({percent}% used)'.replace('{percent}', '100'))), { kind: 'replycode', text: '452 4.2.2 Mailbox full (100%% used)' });
  assert.deepEqual(rcptReplyFor(parseReply('552 5.2.3 Too large')), { kind: 'replycode', text: '552 5.2.3 Too large' });
  assert.deepEqual(rcptReplyFor(parseReply('452 Mailbox full')), { kind: 'replycode', text: '452 4.7.1 Mailbox full' });
  assert.deepEqual(rcptReplyFor(parseReply('DEFER_IF_PERMIT 4.2.2 Mailbox full')), { kind: 'replycode', text: '450 4.2.2 Mailbox full' });
  assert.deepEqual(rcptReplyFor(parseReply('DUNNO')), { kind: 'continue' });
  assert.equal(rcptReplyFor(parseReply('WARN overquota dry run: Mailbox full')).kind, 'continue');
});
