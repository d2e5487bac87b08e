/*
 * Fuzz target: the recipient parser (src/core/address.ts parseRecipient), address -> mailbox key.
 *
 * Properties, for any text and any rules:
 * - it never throws; it returns a recipient or null (input over MAX_ADDRESS_LENGTH, or no local part);
 * - the key, local part, domain and address never hold CR, LF or NUL (the key is sent to a quota
 *   source as a URL parameter, a Redis key, a doveadm argument, a log field) and are well-formed;
 * - their length is bounded: local part and domain at most 2 x MAX_ADDRESS_LENGTH (lower-casing
 *   U+0130 doubles it), the key at most the template with each placeholder so filled;
 * - the domain is lower case, and the local part too when the rules say so; no extension is
 *   left after a delimiter;
 * - idempotent where it should be: the address of a plain recipient parses to itself.
 * Must never: weaken a property to make a run pass.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MAX_ADDRESS_LENGTH, parseRecipient, type RecipientRules } from '../../../src/core/recipient.js';
import { anyChar, nearBound, textOf } from '../strings.js';
import { jsonTarget } from '../target.js';

export interface RecipientInput {
  raw: string;
  rules: RecipientRules;
}

const rules: fc.Arbitrary<RecipientRules> = fc.record({
  // Postfix's recipient_delimiter: ASCII punctuation in practice (see the report on non-BMP ones).
  delimiters: fc.oneof(fc.constantFrom('', '+', '+-', '-', '.', '@', '"'), fc.string({ unit: 'grapheme-ascii', maxLength: 3 })),
  lowercaseLocalPart: fc.boolean(),
  // The configuration refuses a template without a placeholder (src/config.ts).
  keyTemplate: fc.oneof(
    fc.constantFrom('{local}', '{address}', '{local}@{domain}', '{domain}/{local}', 'mbox-{local}', '{local}{local}'),
    fc.array(fc.constantFrom('{local}', '{domain}', '{address}', 'mbox-', '/', '@', '.', '+', 'x'), { minLength: 1, maxLength: 5 }).map((p) => `${p.join('')}{local}`),
  ),
});

const localChar = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...'abcXYZ019.+-_'.split('')) }, { weight: 2, arbitrary: anyChar });
const local = textOf(10, localChar);
const domain = fc.oneof(fc.constantFrom('example.com', 'EXAMPLE.com', 'example.com.', 'xn--bcher-kva.example', 'bücher.example', '[192.0.2.1]', ''), textOf(8, localChar));
const raw = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom('', '<', ' <', ' '), local, fc.constantFrom('@', '@', '', '@@'), domain, fc.constantFrom('', '>', '> ', ' ', '\r\n')).map((p) => p.join('')) },
  { weight: 2, arbitrary: textOf(16) },
  { weight: 1, arbitrary: nearBound(MAX_ADDRESS_LENGTH).map((s) => `${s}@example.com`) },
);

const arbitrary: fc.Arbitrary<RecipientInput> = fc.record({ raw, rules });

/** Recipients whose address must parse back to itself: nothing trimmed, unwrapped or folded a second time. */
function plain(address: string): boolean {
  return /^[a-z0-9._-]{1,64}(@[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})*)?$/i.test(address);
}

const count = (s: string, sub: string) => s.split(sub).length - 1;

export function checkRecipient(input: RecipientInput): void {
  const { raw, rules } = input;
  const r = parseRecipient(raw, rules);
  if (r === null) return;
  // Every text field derived from the address (key, local, domain, address, and any added later).
  for (const [field, v] of Object.entries(r).filter(([f, v]) => f !== 'original' && typeof v === 'string') as [string, string][]) {
    assert.doesNotMatch(v, /[\r\n\0]/, `"${field}" holds CR, LF or NUL: ${JSON.stringify(v)}`);
    assert.ok(v.isWellFormed(), `"${field}" is not well-formed`);
  }
  assert.equal(r.original, raw);
  assert.ok(r.local.length > 0, 'an empty local part is no recipient');
  assert.ok(r.local.length <= 2 * MAX_ADDRESS_LENGTH && r.domain.length <= 2 * MAX_ADDRESS_LENGTH, 'bounded parts');
  const literal = rules.keyTemplate.replace(/\{(local|domain|address)\}/g, (_, n: 'local' | 'domain' | 'address') => r[n]);
  assert.equal(r.key, literal, 'the key is the template with each placeholder replaced by the text itself (no $ patterns, no placeholder from the address)');
  const filled = rules.keyTemplate.length + count(rules.keyTemplate, '{local}') * r.local.length + count(rules.keyTemplate, '{domain}') * r.domain.length + count(rules.keyTemplate, '{address}') * r.address.length;
  assert.ok(r.key.length <= filled, 'key no longer than its template filled');
  assert.equal(r.domain, r.domain.toLowerCase(), 'the domain is folded');
  if (rules.lowercaseLocalPart) assert.equal(r.local, r.local.toLowerCase(), 'the local part is folded');
  if (rules.delimiters !== '' && !r.local.startsWith('"')) {
    for (const ch of r.local.slice(1)) assert.ok(!rules.delimiters.includes(ch), `extension left after ${JSON.stringify(ch)} in ${JSON.stringify(r.local)}`);
  }
  if (plain(r.address)) {
    const again = parseRecipient(r.address, rules);
    assert.equal(again?.address, r.address, 'a plain address parses to itself');
    assert.equal(again?.key, r.key, 'and to the same key');
  }
}

export const recipientTarget = jsonTarget<RecipientInput>({
  name: 'recipient',
  about: 'parseRecipient: any text, any rules',
  arbitrary,
  check: checkRecipient,
});
