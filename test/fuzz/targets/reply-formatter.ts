/*
 * Fuzz target: the milter's reply formatter (src/milter/reply.ts): formatReplyText, rcptReplyFor,
 * encodeRcptReply.
 *
 * Properties, for any code 4XX/5XX, any text and any access(5) action:
 * - the text is "DDD X.Y.Z text": the code, a space, an enhanced status code whose class is the
 *   code's first digit (else Postfix logs "malformed reply" and drops the milter), a space, text;
 * - no control character (CR, LF, NUL ...), no lone '%' (Sendmail would answer 550 5.7.1
 *   instead), at most MAX_MILTER_REPLY_BYTES bytes, well-formed UTF-8;
 * - plain short text arrives unchanged ('%' doubled);
 * - an action becomes a reply code only when it asks for one, in its own class (a 4XX or DEFER*
 *   never becomes a permanent 5XX); anything else continues; the packet ends in exactly one NUL.
 * Must never: weaken a property to make a run pass.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MilterDecoder } from '../../../src/faces/milter/codec.js';
import { encodeRcptReply, formatReplyText, MAX_MILTER_REPLY_BYTES, rcptReplyFor } from '../../../src/faces/milter/render.js';
import { parseReply } from '../../../src/core/replies.js';
import { nearBound, SPECIAL_CHARS, textOf } from '../strings.js';
import { jsonTarget } from '../target.js';

export interface ReplyInput {
  code: string;
  text: string;
  action: string;
}

/** Words that mean something at the start of a reply or an action. */
const WORDS = ['452', '450', '421', '554', '550', '250', '200', '999', '4.2.2', '5.2.2', '2.0.0', '4.7.1', '4.2', '4.2.2.2', '45.2.2', 'DEFER_IF_PERMIT', 'DEFER_IF_REJECT', 'DEFER', 'defer', 'REJECT', 'DUNNO', 'WARN', 'OK', 'HOLD', 'Mailbox', 'full', '%', '%%', '%s', ' ', '\t', '\r\n'];
const word = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...WORDS) }, { weight: 2, arbitrary: fc.constantFrom(...SPECIAL_CHARS) }, { weight: 3, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 6 }) });
const phrase = fc.array(fc.tuple(word, fc.constantFrom(' ', '', '  ')), { maxLength: 8 }).map((p) => p.map(([w, s]) => w + s).join(''));
const text = fc.oneof({ weight: 6, arbitrary: phrase }, { weight: 3, arbitrary: textOf(30) }, { weight: 1, arbitrary: nearBound(MAX_MILTER_REPLY_BYTES) });

/** An action as the decision core may return it: a word (code or access(5) name) and a text, or anything. */
export const actionArbitrary = fc.oneof(fc.tuple(word, text).map(([w, t]) => `${w} ${t}`), text);

const arbitrary: fc.Arbitrary<ReplyInput> = fc.record({
  code: fc.oneof(fc.constantFrom('452', '450', '554'), fc.integer({ min: 400, max: 599 }).map(String)),
  text,
  action: actionArbitrary,
});

/** Every rule a reply text must keep to reach the client through Postfix and Sendmail alike. */
export function assertSafeReplyText(out: string, code: string): void {
  const m = /^(\d{3}) ([245])\.\d{1,3}\.\d{1,3} (.+)$/s.exec(out);
  assert.ok(m, `not "DDD X.Y.Z text": ${JSON.stringify(out.slice(0, 80))}`);
  assert.equal(m[1], code, 'the reply code given');
  assert.equal(m[2], code[0], `enhanced status class ${m[2]} does not match ${code}`);
  assert.doesNotMatch(out, /[\x00-\x1f\x7f]/, 'a control character (CR, LF, NUL ...)');
  assert.ok(!out.replaceAll('%%', '').includes('%'), `a lone '%': ${JSON.stringify(out.slice(-40))}`);
  assert.ok(Buffer.byteLength(out) <= MAX_MILTER_REPLY_BYTES, `${Buffer.byteLength(out)} bytes > ${MAX_MILTER_REPLY_BYTES}`);
  assert.ok(out.isWellFormed(), 'not well-formed UTF-16 (would be invalid UTF-8 on the wire)');
}

/** The class a Postfix access(5) action asks for at RCPT, or null: it lets the mail continue. */
function askedClass(action: string): { code: string; cls: string } | null {
  const w = action.trim().split(/\s+/)[0] ?? '';
  if (/^[45]\d\d$/.test(w)) return { code: w, cls: w[0]! };
  const upper = w.toUpperCase();
  if (upper === 'DEFER_IF_PERMIT' || upper === 'DEFER_IF_REJECT' || upper === 'DEFER') return { code: '450', cls: '4' };
  if (upper === 'REJECT') return { code: '554', cls: '5' };
  return null;
}

/** What the session must answer at RCPT for this action; shared with the session target. */
export function assertRcptReply(packet: Buffer, action: string): void {
  const [p, ...more] = new MilterDecoder().push(packet);
  assert.ok(p && more.length === 0, 'one reply packet');
  const asked = askedClass(action);
  if (asked === null) {
    assert.equal(p.command, 'c', `the action ${JSON.stringify(action)} lets the mail continue`);
    return;
  }
  assert.equal(p.command, 'y', `the action ${JSON.stringify(action)} asks for a reply code`);
  assert.equal(p.data.indexOf(0), p.data.length - 1, 'the text ends in exactly one NUL');
  const out = p.data.subarray(0, -1).toString('utf8');
  assertSafeReplyText(out, asked.code);
}

export function checkReplyFormatter(input: ReplyInput): void {
  const out = formatReplyText(input.code, input.text);
  assertSafeReplyText(out, input.code);
  if (/^[\x21-\x7e][\x20-\x7e]{0,200}$/.test(input.text) && input.text === input.text.trim() && !/^[245]\.\d{1,3}\.\d{1,3}(\s|$)/.test(input.text)) {
    assert.equal(out, `${input.code} ${input.code[0]}.7.1 ${input.text.replaceAll('%', '%%')}`, 'plain short text arrives unchanged');
  }
  assertRcptReply(encodeRcptReply(rcptReplyFor(parseReply(input.action))), input.action);
}

export const replyFormatterTarget = jsonTarget<ReplyInput>({
  name: 'reply-formatter',
  about: 'milter formatReplyText / rcptReplyFor / encodeRcptReply: any code, text, action',
  arbitrary,
  check: checkReplyFormatter,
});
