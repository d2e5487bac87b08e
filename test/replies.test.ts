import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseReply, postfixWouldSay } from '../src/core/replies.js';
import { replyProblem } from '../src/config/reply-text.js';

test('sound replies pass validation', () => {
  for (const ok of [
    'DUNNO',
    '452 4.2.2 Mailbox full, try again later',
    'DEFER_IF_PERMIT 4.2.2 Mailbox full',
    '552 5.2.3 Message is larger than the mailbox quota',
    '452 Mailbox full',
    'WARN mailbox full',
    '452 4.2.2 Mailbox full ({percent}% used)',
    '450 4.2.2 Postfach voll – später erneut',
  ]) {
    assert.equal(replyProblem(ok), null, ok);
  }
});

test('replies Postfix would misread are refused with the reason', () => {
  const cases: [string, RegExp][] = [
    ['452', /all-numeric action as OK/],
    ['452 5.2.2 Mailbox full', /class does not match/],
    ['552 4.2.2 Mailbox full', /class does not match/],
    ['DEFER_IF_PERMIT 452 4.2.2 Mailbox full', /SMTP code after DEFER_IF_PERMIT/],
    ['DEFER_IF_PERMIT 5.2.2 Mailbox full', /needs 4.X.X/],
    ['', /empty/],
    ['   ', /empty/],
    ['OK', /skip every later restriction/],
    ['ok', /skip every later restriction/],
    ['452 4.2.2 bad\r\nline', /control character/],
    ['452 4.2.2 \uFFFD', /UTF-8/],
    ['452 4.2.2 \uD800', /UTF-8/],
    ['352 3.2.2 hi', /only 4XX and 5XX/],
    ['421 4.2.2 bye', /disconnect/],
    ['452 4.2.2', /no text/],
    ['FULL mailbox', /not a Postfix access\(5\) action/],
    ['452 4.2.2 Mailbox {full}', /unknown placeholder/],
    ['452 4.2.2 ' + 'x'.repeat(500), /longer than/],
  ];
  for (const [reply, why] of cases) assert.match(replyProblem(reply) ?? 'accepted', why, JSON.stringify(reply));
});

test('the check command shows what the SMTP client would see', () => {
  assert.equal(
    postfixWouldSay(parseReply('452 4.2.2 Mailbox full, try again later'), 'u@x'),
    '452 4.2.2 <u@x>: Recipient address rejected: Mailbox full, try again later',
  );
  assert.match(postfixWouldSay(parseReply('DEFER_IF_PERMIT 4.2.2 Mailbox full'), 'u@x'), /^450 4\.2\.2 <u@x>: Recipient address rejected: Mailbox full/);
  assert.match(postfixWouldSay(parseReply('DUNNO'), 'u@x'), /^250 2\.1\.5 Ok/);
});

test('a template must be sound for every figure a placeholder can become, not only for "100"', () => {
  assert.match(replyProblem('452 4.2.2{percent}')!, /placeholder in its first two words/);
  assert.match(replyProblem('452 {size}.2.2 Mailbox full')!, /placeholder in its first two words/);
  assert.match(replyProblem('DEFER_IF_REJECT {percent}{size}')!, /placeholder in its first two words/, 'renders "010" at 0% of a 10-byte message');
  assert.equal(replyProblem('452 4.2.2 Mailbox full ({usage} of {limit} bytes, {percent}%)'), null);
});
