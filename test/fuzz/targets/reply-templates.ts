/*
 * Fuzz target: the operator's reply texts (src/core/replies.ts): replyProblem at start-up,
 * renderReply per decision.
 *
 * Properties, for any template and any figures:
 * - replyProblem never throws; it says why, or null;
 * - a template it accepts is never OK/PERMIT, never an all-numeric action alone (Postfix reads
 *   both as OK: the mail is accepted and bounces later), never a code outside 4XX/5XX or 421;
 *   it has no control character, is well-formed, and its status class matches its code;
 * - rendered with any figures, an accepted template is still accepted: the figures cannot turn
 *   a sound reply into one Postfix misreads (apart from the byte bound, which a figure longer
 *   than the "100" the check assumes may pass: that is reported separately as a length).
 * Must never: weaken a property to make a run pass.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { renderReply, type ReplyFigures } from '../../../src/core/replies.js';
import { MAX_CONFIGURED_REPLY_BYTES, replyProblem } from '../../../src/config/reply-text.js';
import { nearBound, SPECIAL_CHARS, textOf } from '../strings.js';
import { jsonTarget } from '../target.js';

export interface TemplateInput {
  template: string;
  figures: ReplyFigures;
}

const WORDS = ['452', '450', '421', '554', '550', '250', '200', '4', '45', '4520', '4.2.2', '5.2.2', '2.0.0', '4.7.1', '{usage}', '{limit}', '{percent}', '{size}', '{other}', '{', '}', '{{size}}', '.2.2', 'DEFER_IF_PERMIT', 'DEFER_IF_REJECT', 'DEFER', 'defer', 'REJECT', 'DUNNO', 'WARN', 'HOLD', 'OK', 'ok', 'PERMIT', 'Mailbox', 'full', '%', '(', ')'];
const word = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...WORDS) }, { weight: 1, arbitrary: fc.constantFrom(...SPECIAL_CHARS) }, { weight: 2, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 5 }) });
/** Mostly words joined by one space (the shape replyProblem reads), sometimes glued or doubled. */
const template = fc.oneof(
  { weight: 8, arbitrary: fc.array(fc.tuple(word, fc.constantFrom(' ', ' ', ' ', '', '  ')), { minLength: 1, maxLength: 7 }).map((p) => p.map(([w, s]) => w + s).join('').trimEnd()) },
  { weight: 1, arbitrary: textOf(20) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('452 4.2.2 ', 'DEFER_IF_PERMIT ', '452 {size}'), nearBound(MAX_CONFIGURED_REPLY_BYTES - 12)).map(([a, b]) => a + b) },
);
/** Figures as a source reports them: bytes up to a petabyte and beyond, a missing limit. */
const bytes = fc.oneof(fc.nat({ max: 1000 }), fc.maxSafeNat());
const figures: fc.Arbitrary<ReplyFigures> = fc.record({ usageBytes: bytes, limitBytes: fc.option(bytes), sizeBytes: bytes }, { requiredKeys: [] });

const arbitrary: fc.Arbitrary<TemplateInput> = fc.record({ template, figures });

/** What Postfix does with an access(5) action, read independently of replyProblem. */
function assertPostfixReadsAsReply(reply: string, where: string): void {
  const [first = '', ...rest] = reply.split(' ');
  const text = rest.join(' ');
  assert.ok(!/^(ok|permit)$/i.test(first), `${where}: ${JSON.stringify(reply)} is OK to Postfix (later restrictions skipped)`);
  assert.ok(!/^\d+$/.test(reply), `${where}: ${JSON.stringify(reply)} is all-numeric: Postfix reads it as OK`);
  assert.doesNotMatch(reply, /[\x00-\x1f\x7f]/, `${where}: a control character`);
  assert.ok(reply.isWellFormed(), `${where}: not well-formed`);
  if (/^\d+$/.test(first)) {
    assert.match(first, /^[45]\d\d$/, `${where}: code ${first} is not 4XX/5XX`);
    assert.notEqual(first, '421', `${where}: 421 disconnects the client`);
    const dsn = /^(\d)\.\d{1,3}\.\d{1,3}(\s|$)/.exec(text);
    if (dsn) assert.equal(dsn[1], first[0], `${where}: status ${text.split(' ')[0]} does not match the code ${first}`);
  }
}

export function checkReplyTemplate(input: TemplateInput): void {
  const problem = replyProblem(input.template);
  assert.ok(problem === null || (typeof problem === 'string' && problem.length > 0), 'null or a reason');
  if (problem !== null) return;
  assertPostfixReadsAsReply(input.template, 'accepted template');
  const rendered = renderReply(input.template, input.figures);
  assertPostfixReadsAsReply(rendered, 'rendered');
  const again = replyProblem(rendered);
  if (again !== null && !again.startsWith('is longer than')) assert.fail(`the accepted ${JSON.stringify(input.template)} renders as ${JSON.stringify(rendered)}, which replyProblem refuses: ${again}`);
}

export const replyTemplatesTarget = jsonTarget<TemplateInput>({
  name: 'reply-templates',
  about: 'replyProblem / renderReply: any template, any figures',
  arbitrary,
  check: checkReplyTemplate,
});
