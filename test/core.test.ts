import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRecipient, type RecipientRules } from '../src/core/recipient.js';
import { decide, Replies, type ReplyTexts } from '../src/core/verdict.js';
import { found } from '../src/quota.js';
import { parseReply, refuses } from '../src/core/replies.js';
import { Router } from '../src/sources/router.js';
import type { QuotaSource } from '../src/quota.js';

const seed: RecipientRules = { delimiters: '+', lowercaseLocalPart: true, keyTemplate: '{local}' };

test('the mailbox key is the local part, without <>, extension and case', () => {
  const r = parseRecipient('<Alice+Lists@Example.COM>', seed)!;
  assert.equal(r.key, 'alice');
  assert.equal(r.domain, 'example.com');
  assert.equal(r.address, 'alice@example.com');
});

test('the key template can name the whole address', () => {
  assert.equal(parseRecipient('Bob@Example.com', { ...seed, keyTemplate: '{address}' })!.key, 'bob@example.com');
  assert.equal(parseRecipient('bob@example.com', { ...seed, keyTemplate: '{domain}/{local}' })!.key, 'example.com/bob');
});

test('local-part case is kept when folding is off', () => {
  assert.equal(parseRecipient('Alice@EXAMPLE.com', { ...seed, lowercaseLocalPart: false })!.key, 'Alice');
});

test('every character of recipient_delimiter starts an extension; the first one wins', () => {
  const rules = { ...seed, delimiters: '+-' };
  assert.equal(parseRecipient('a-b+c@x', rules)!.key, 'a');
  assert.equal(parseRecipient('a+b-c@x', rules)!.key, 'a');
  assert.equal(parseRecipient('a+b@x', { ...seed, delimiters: '' })!.key, 'a+b');
});

test('a local part starting with the delimiter is not emptied', () => {
  assert.equal(parseRecipient('+tag@x', seed)!.key, '+tag');
});

test('the last @ separates the domain (quoted local parts may hold @); the quotes go, as in Postfix\'s internal form', () => {
  const r = parseRecipient('"a@b"@example.com', { ...seed, keyTemplate: '{address}' })!;
  assert.equal(r.domain, 'example.com');
  assert.equal(r.local, 'a@b');
});

test('a quoted local part is the same mailbox as the plain one: "bob"@ and <"Bob+x"@> give the key bob', () => {
  // Postfix sends recipient=bob@example.com for "bob"@example.com; the milter sees <"bob"@example.com>.
  assert.equal(parseRecipient('"bob"@example.com', seed)!.key, 'bob');
  assert.equal(parseRecipient('<"Bob+x"@example.com>', seed)!.key, 'bob');
  assert.equal(parseRecipient('"a\\"b"@example.com', seed)!.local, 'a"b', 'a quoted-pair stands for its character');
});

test('UTF-8 and broken addresses never throw', () => {
  assert.equal(parseRecipient('Jürgen@Exämple.DE', seed)!.key, 'jürgen');
  assert.equal(parseRecipient('Jürgen@Exämple.DE', seed)!.domain, 'exämple.de');
  assert.equal(parseRecipient('\uD800bad@x', seed)!.key, '\uFFFDbad');
  for (const raw of ['', '<>', '@example.com', ' ', 'x'.repeat(10_000)]) assert.equal(parseRecipient(raw, seed), null, raw);
});

test('a trailing dot on the domain is the same domain', () => {
  assert.equal(parseRecipient('a@Example.com.', seed)!.domain, 'example.com');
});

const MiB = 1024 * 1024;

test('a mailbox under its limit is under quota', () => {
  assert.equal(decide(found(10 * MiB, 200 * MiB), 0).kind, 'under_quota');
});

test('a mailbox at or over its limit is over quota', () => {
  assert.equal(decide(found(200 * MiB, 200 * MiB), 0).kind, 'over_quota');
  assert.equal(decide(found(201 * MiB, 200 * MiB), 0).kind, 'over_quota');
});

test('a message that does not fit in the room left is over quota', () => {
  assert.equal(decide(found(190 * MiB, 200 * MiB), 11 * MiB).kind, 'over_quota');
  assert.equal(decide(found(190 * MiB, 200 * MiB), 10 * MiB).kind, 'under_quota');
});

test('a message larger than the whole quota is too large, even in an empty mailbox', () => {
  assert.equal(decide(found(0, 200 * MiB), 200 * MiB + 1).kind, 'too_large');
});

test('no limit means never full', () => {
  assert.equal(decide(found(10 ** 12, null), 10 ** 9).kind, 'under_quota');
});

test('a message-count limit reached is over quota', () => {
  assert.equal(decide(found(10, 1000, { usageMessages: 5, limitMessages: 5 }), 0).kind, 'over_quota');
  assert.equal(decide(found(10, 1000, { usageMessages: 4, limitMessages: 5 }), 0).kind, 'under_quota');
});

test("the source's own OVERQUOTA is believed", () => {
  assert.equal(decide(found(10, 1000, { overQuota: true }), 0).kind, 'over_quota');
});

test('an unknown mailbox has its own verdict', () => {
  assert.equal(decide({ kind: 'unknown' }, 0).kind, 'unknown_mailbox');
});

const texts: ReplyTexts = {
  under_quota: 'DUNNO',
  over_quota: '452 4.2.2 Mailbox full ({percent}% of {limit}), try again later',
  too_large: '552 5.2.3 Message is larger than the mailbox quota',
  unknown: 'DUNNO',
  on_error: 'DUNNO',
};

test('each verdict maps to its configured reply, with figures filled in', () => {
  const state = found(1500, 1000);
  const replies = new Replies(texts, false);
  assert.equal(replies.for(decide(state, 0), state, 0).words, '452 4.2.2 Mailbox full (150% of 1000), try again later');
  assert.deepEqual(replies.for(decide(state, 0), state, 0), { kind: 'defer', code: '452', status: '4.2.2', text: 'Mailbox full (150% of 1000), try again later', words: '452 4.2.2 Mailbox full (150% of 1000), try again later' });
  assert.equal(replies.for({ kind: 'too_large', reason: '' }, state, 2000).words, texts.too_large);
  assert.equal(replies.for({ kind: 'under_quota', reason: '' }, state, 0).words, 'DUNNO');
  assert.equal(new Replies({ ...texts, on_error: '451 4.3.0 Try later' }, false).for({ kind: 'error', reason: '' }, null, 0).words, '451 4.3.0 Try later');
  assert.equal(replies.for({ kind: 'not_checked', reason: '' }, null, 0).words, 'DUNNO');
});

test('dry-run turns a deferral into WARN, which Postfix logs and lets pass', () => {
  const state = found(1500, 1000);
  const replies = new Replies(texts, true);
  const reply = replies.for(decide(state, 0), state, 0);
  assert.match(reply.words, /^WARN /);
  assert.match(reply.words, /Mailbox full/);
  assert.equal(reply.kind, 'warn');
  assert.equal(replies.for({ kind: 'under_quota', reason: '' }, state, 0).words, 'DUNNO');
});

test('a reply says what it does, decided once from its words in any case: continue, warn, hold, defer, reject', () => {
  const kinds = ['DUNNO', 'dunno', 'WARN Mailbox full', 'warn mailbox full', 'HOLD over quota', 'hold', '452 4.2.2 Mailbox full', 'defer_if_permit 4.2.2 Mailbox full', 'DEFER', 'Reject 5.2.2 Mailbox full', '552 5.2.3 Too large'].map((w) => [w, parseReply(w).kind]);
  assert.deepEqual(kinds, [
    ['DUNNO', 'continue'], ['dunno', 'continue'], ['WARN Mailbox full', 'warn'], ['warn mailbox full', 'warn'], ['HOLD over quota', 'hold'], ['hold', 'hold'],
    ['452 4.2.2 Mailbox full', 'defer'], ['defer_if_permit 4.2.2 Mailbox full', 'defer'], ['DEFER', 'defer'], ['Reject 5.2.2 Mailbox full', 'reject'], ['552 5.2.3 Too large', 'reject'],
  ]);
  assert.deepEqual(['DUNNO', 'warn x', 'HOLD', '451 4.3.0 x', 'REJECT'].map((w) => refuses(parseReply(w))), [false, false, false, true, true]);
});

test("the reason names the rule that made a mailbox full: bytes, messages, the source's word, or the message's size", () => {
  const reason = (state: ReturnType<typeof found>, size = 0) => decide(state, size).reason;
  assert.equal(reason(found(1000, 1000)), '1000 of 1000 bytes used');
  assert.equal(reason(found(10, 1000, { usageMessages: 5, limitMessages: 5 })), '5 of 5 messages');
  assert.equal(reason(found(10, 1000, { overQuota: true })), 'the source says over quota');
  assert.equal(reason(found(900, 1000), 200), '900 of 1000 bytes used, message of 200 does not fit');
  assert.equal(decide(found(10, 1000, { usageMessages: 4, limitMessages: null }), 0).kind, 'under_quota');
});

const source = (name: string): QuotaSource => ({ name, lookup: async () => ({ kind: 'unknown' }), close: async () => {} });

test('with no domain table every domain goes to the default source', () => {
  const fallback = source('default');
  assert.equal(new Router(fallback, new Map()).route('anything.example'), fallback);
});

test('with a domain table only its domains are served, ".parent" entries cover subdomains', () => {
  const a = source('a');
  const b = source('b');
  const router = new Router(source('default'), new Map([['example.com', a], ['.example.org', b]]));
  assert.equal(router.route('example.com'), a);
  assert.equal(router.route('mail.example.org'), b);
  assert.equal(router.route('deep.mail.example.org'), b);
  assert.equal(router.route('example.org'), null);
  assert.equal(router.route('other.net'), null);
  assert.equal(router.route('sub.example.com'), null);
});

test("an address cannot steer its key: \"$'\", \"$&\" and placeholders in it are plain characters", () => {
  assert.equal(parseRecipient("$'alice@example.com", seed)!.key, "$'alice");
  assert.equal(parseRecipient('a$&b@example.com', seed)!.key, 'a$&b');
  assert.equal(parseRecipient('{domain}@example.com', seed)!.key, '{domain}');
  assert.equal(parseRecipient('{local}@example.com', { ...seed, keyTemplate: '{domain}/{local}' })!.key, 'example.com/{local}');
});

test('CR, LF, NUL or an empty domain after @ make no recipient', () => {
  for (const raw of ['a\u0000b@example.com', 'a\r\nb@example.com', 'bob@exam\nple.com', '<x@y@>', 'user@']) assert.equal(parseRecipient(raw, seed), null, JSON.stringify(raw));
});
