/*
 * The backscatter bench's judge (bench/backscatter-rig.ts): which recipient finally bounced, read
 * from Postfix's maillog, and which defer was false (the message would have fitted, counting what
 * was already on its way). The bench's figures rest on these; they must never touch a server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LIMIT, falseDefers, finalStatuses, type RcptEvent } from '../bench/backscatter-rig.js';

const event = (t: number, code: number, lf: number, queueId: string | null = null): RcptEvent => ({ msg: t, mailbox: 'b0', t, ms: 1, code, bytes: lf, lf, queueId });

test('the last status of a recipient counts; probes and the bounce to the sender do not', () => {
  const log = [
    'Nov 30 10:00:01 mta postfix/lmtp[1]: 4A1: to=<b0@example.com>, relay=127.0.0.1[127.0.0.1]:24, status=deferred (deferred transport)',
    'Nov 30 10:00:02 mta postfix/lmtp[1]: 4A1: to=<b0@example.com>, relay=127.0.0.1[127.0.0.1]:24, status=bounced (host said: 552 5.2.2 Quota exceeded)',
    'Nov 30 10:00:02 mta postfix/lmtp[1]: 4A2: to=<b0@example.com>, relay=127.0.0.1[127.0.0.1]:24, status=sent (250 2.0.0 Saved)',
    'Nov 30 10:00:02 mta postfix/lmtp[1]: 4A3: to=<b1@example.com>, relay=127.0.0.1[127.0.0.1]:24, status=deliverable (250 2.1.5 OK)',
    'Nov 30 10:00:03 mta postfix/discard[2]: 4B9: to=<sender@example.org>, relay=none, status=sent (discarded)',
  ].join('\n');
  assert.deepEqual([...finalStatuses(log)], [['4A1 b0', 'bounced'], ['4A2 b0', 'sent']]);
});

test('a defer is false only when usage, what is on its way and the message fit the limit', () => {
  const fill = [{ mailbox: 'b0', t: 0, bytes: LIMIT - 100_000 }];
  const statuses = new Map([['Q1 b0', 'sent' as const], ['Q2 b0', 'bounced' as const]]);
  // 40 KB accepted and delivered, 50 KB accepted and bounced (takes no room): 60 KB left.
  const before = [event(1, 250, 40_000, 'Q1'), event(2, 250, 50_000, 'Q2')];
  assert.equal(falseDefers([...before, event(3, 452, 59_000)], statuses, fill, 500), 1, 'fits: a false defer');
  assert.equal(falseDefers([...before, event(3, 452, 60_000)], statuses, fill, 500), 0, 'does not fit with its headers');
});

test('what was accepted after the defer, or before an expunge, does not count against it', () => {
  const statuses = new Map([['Q1 b0', 'sent' as const]]);
  const resets = [{ mailbox: 'b0', t: 0, bytes: LIMIT }, { mailbox: 'b0', t: 5, bytes: 0 }];
  // Before the expunge a full mailbox: a true defer; after it, an empty one: a false defer.
  assert.equal(falseDefers([event(1, 452, 20_000), event(6, 452, 20_000)], statuses, resets, 500), 1);
  // Accepted later than the defer: it was not on its way yet.
  const full = [{ mailbox: 'b0', t: 0, bytes: LIMIT - 30_000 }];
  assert.equal(falseDefers([event(1, 452, 20_000), event(2, 250, 20_000, 'Q1')], statuses, full, 500), 1);
});
