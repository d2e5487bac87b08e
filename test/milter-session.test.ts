import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseReply } from '../src/core/replies.js';
import fc from 'fast-check';
import { MilterDecoder, MilterProtocolError, decodeOptneg, type Packet } from '../src/faces/milter/codec.js';
import { MilterSession, type RcptContext } from '../src/faces/milter/session.js';
import { MAX_MACRO_BYTES, MAX_MACROS } from '../src/faces/milter/constants.js';
import { abort, connect, eob, helo, macro, mail, optneg, quit, quitNc, rcpt } from './helpers/milter-packets.js';

/** A session whose decider says "full" for full@ and records what it was asked. */
function newSession() {
  const asked: { rcpt: string; ctx: RcptContext }[] = [];
  const s = new MilterSession(async (r, ctx) => {
    asked.push({ rcpt: r, ctx });
    return parseReply(r.includes('full@') ? '452 4.2.2 Mailbox full ({percent}%)'.replace('{percent}', '100') : 'DUNNO');
  });
  return { s, asked };
}

/** Feeds MTA packets and returns the replies, as command letters plus data text. */
async function feed(s: MilterSession, ...packets: Buffer[]): Promise<string[]> {
  const d = new MilterDecoder();
  const out: string[] = [];
  for (const p of d.push(Buffer.concat(packets)) as Packet[]) {
    const r = await s.handle(p);
    if (r.reply) out.push(String.fromCharCode(r.reply[4]!) + r.reply.subarray(5).toString('latin1'));
  }
  return out;
}

test('v6 negotiation asks only for the steps used, no replies where allowed, and the RCPT macros', async () => {
  const { s } = newSession();
  const [reply] = await feed(s, optneg(6, 0x1ff, 0x1fffff));
  const data = Buffer.from(reply!.slice(1), 'latin1');
  const o = decodeOptneg(data);
  assert.equal(o.version, 6);
  assert.equal(o.actions, 0x100, 'SETSYMLIST only: we change nothing in the message');
  for (const bit of [0x2, 0x10, 0x20, 0x40, 0x100]) assert.ok(o.protocol & bit, `skips step 0x${bit.toString(16)}`);
  assert.equal(o.protocol & 0x200, 0, "DATA is not skipped: a lone DATA macro packet costs a 40 ms Nagle stall");
  for (const bit of [0x1000, 0x4000]) assert.ok(o.protocol & bit, `no reply for 0x${bit.toString(16)}`);
  assert.equal(o.protocol & 0x8, 0, 'RCPT is wanted');
  assert.equal(o.protocol & 0x8000, 0, 'RCPT is answered');
  assert.match(data.subarray(12).toString('latin1'), /\0\0\0\x03i \{rcpt_mailer\}\0/);
});

test('returned bits are always a subset of those offered, and the version is min(6, offered)', () => {
  fc.assert(
    fc.asyncProperty(fc.integer({ min: 2, max: 10 }), fc.nat({ max: 0x1ff }), fc.nat({ max: 0x1fffff }), async (version, actions, protocol) => {
      const { s } = newSession();
      const [reply] = await feed(s, optneg(version, actions, protocol));
      const o = decodeOptneg(Buffer.from(reply!.slice(1), 'latin1'));
      assert.equal(o.version, Math.min(6, version));
      assert.equal(o.actions & ~actions, 0);
      assert.equal(o.protocol & ~protocol, 0);
      if (o.version < 6) assert.equal(o.protocol & 0x1ff000, 0, 'no v6 bits before v6');
    }),
    { numRuns: 500 },
  );
});

test('an MTA below version 2 is refused', async () => {
  const { s } = newSession();
  await assert.rejects(feed(s, optneg(1, 0, 0)), /at least 2/);
});

test('commands before negotiation and unknown commands are protocol errors', async () => {
  await assert.rejects(feed(newSession().s, rcpt('<a@x>')), (e: MilterProtocolError) => e.code === 'OUT_OF_ORDER');
  await assert.rejects(feed(newSession().s, optneg(), Buffer.from([0, 0, 0, 1, 0x5a])), (e: MilterProtocolError) => e.code === 'UNKNOWN_COMMAND');
});

test('RCPT: a full mailbox gets y 452 4.2.2 with % doubled, the next recipient c; SIZE= is passed on', async () => {
  const { s, asked } = newSession();
  const replies = await feed(s, optneg(), macro('C', 'j', 'mx'), connect(), mail('<a@example.net>', 'BODY=8BITMIME', 'SIZE=2048'), macro('R', 'i', 'Q123'), rcpt('<full@example.com>'), rcpt('<ok@example.com>'));
  assert.deepEqual(replies.slice(1), ['y452 4.2.2 Mailbox full (100%%)\0', 'c']);
  assert.equal(asked[0]!.ctx.size, 2048);
  assert.equal(asked[0]!.ctx.queueId, 'Q123');
  assert.equal(asked[0]!.ctx.client?.address, '192.0.2.10');
  assert.equal(asked[0]!.ctx.sender, '<a@example.net>');
});

test('before v6 (no no-reply bits) CONNECT, HELO and MAIL are answered with continue', async () => {
  const { s } = newSession();
  const replies = await feed(s, optneg(2, 0x3f, 0x7f), connect(), helo(), mail('<a@x>'), rcpt('<ok@x>'));
  assert.deepEqual(replies.slice(1), ['c', 'c', 'c', 'c']);
});

test('ABORT, repeated or out of place, resets the message and keeps the connection', async () => {
  const { s, asked } = newSession();
  const replies = await feed(s, optneg(), abort(), connect(), abort(), abort(), mail('<a@x>', 'SIZE=10'), rcpt('<full@x>'), abort(), abort(), mail('<b@x>'), rcpt('<full@x>'), eob());
  assert.deepEqual(replies.slice(1), ['y452 4.2.2 Mailbox full (100%%)\0', 'y452 4.2.2 Mailbox full (100%%)\0', 'c']);
  assert.equal(asked[1]!.ctx.size, 0, 'the second message has no SIZE=');
  assert.equal(asked[1]!.ctx.sender, '<b@x>');
});

test('connection macros survive across messages; message macros do not', async () => {
  const { s, asked } = newSession();
  await feed(s, optneg(), macro('C', '{daemon_name}', 'mx'), connect(), macro('M', 'i', 'FIRST'), mail('<a@x>'), rcpt('<ok@x>'), abort(), mail('<b@x>'), rcpt('<ok@x>'));
  assert.equal(asked[0]!.ctx.queueId, 'FIRST');
  assert.equal(asked[1]!.ctx.queueId, undefined);
  assert.equal(asked[1]!.ctx.client?.hostname, 'client.example.org');
});

test('QUIT_NC keeps the socket for a new connection; QUIT closes', async () => {
  const { s, asked } = newSession();
  await feed(s, optneg(), connect('first.example', '192.0.2.1'), mail('<a@x>'), rcpt('<ok@x>'), quitNc(), connect('second.example', '192.0.2.2'), mail('<b@x>'), rcpt('<ok@x>'));
  assert.equal(asked[0]!.ctx.client?.address, '192.0.2.1');
  assert.equal(asked[1]!.ctx.client?.address, '192.0.2.2');
  const r = await s.handle(new MilterDecoder().push(quit())[0]!);
  assert.equal(r.close, true);
  assert.equal(r.reply, null);
});

test('a recipient Postfix already rejected ({rcpt_mailer}=error) is not looked up', async () => {
  const { s, asked } = newSession();
  const replies = await feed(s, optneg(), connect(), mail('<a@x>'), macro('R', '{rcpt_mailer}', 'error'), rcpt('<full@x>'));
  assert.deepEqual(replies.slice(1), ['c']);
  assert.equal(asked.length, 0);
});

/** n tiny macros ("m0" = "v", "m1" = "v", ...) as one list. */
const tinyMacros = (n: number) => Array.from({ length: n }, (_, i) => [`m${i}`, 'v']).flat();
const overLimit = (e: MilterProtocolError) => e.code === 'MACROS_OVER_LIMIT';

test('each stage keeps only its latest macro list: an MTA resending macros never piles them up', async () => {
  const { s, asked } = newSession();
  const resent = Array.from({ length: 2000 }, (_, i) => macro('R', 'i', `Q${i}`, ...tinyMacros(100)));
  await feed(s, optneg(), connect(), mail('<a@x>'), ...resent, rcpt('<ok@x>'));
  assert.equal(asked[0]!.ctx.queueId, 'Q1999');
});

test('macros for codes that are no stage are accepted and not kept (nor counted)', async () => {
  const { s, asked } = newSession();
  const unknown = Array.from({ length: 256 }, (_, code) => code).filter((c) => !'CHMRTNE'.includes(String.fromCharCode(c)));
  const replies = await feed(s, optneg(), ...unknown.map((c) => macro(String.fromCharCode(c), ...tinyMacros(MAX_MACROS))), mail('<a@x>'), macro('R', 'i', 'Q1'), rcpt('<ok@x>'));
  assert.deepEqual(replies.slice(1), ['c']);
  assert.equal(asked[0]!.ctx.queueId, 'Q1');
});

test(`more than ${MAX_MACROS} macros over the stages of one connection are a protocol error`, async () => {
  const half = MAX_MACROS / 2;
  await feed(newSession().s, optneg(), macro('C', ...tinyMacros(half)), macro('H', ...tinyMacros(half)));
  await assert.rejects(feed(newSession().s, optneg(), macro('C', ...tinyMacros(half)), macro('H', ...tinyMacros(half)), macro('M', 'i', 'Q1')), overLimit);
});

test(`more than ${MAX_MACRO_BYTES} bytes of macros on one connection are a protocol error`, async () => {
  const value = 'x'.repeat(MAX_MACRO_BYTES / 2);
  await assert.rejects(feed(newSession().s, optneg(), macro('C', 'a', value), macro('M', 'b', value)), overLimit);
  await assert.rejects(feed(newSession().s, optneg(), macro('E', 'a', value + value)), overLimit);
});
