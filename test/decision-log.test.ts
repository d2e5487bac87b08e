import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseReply } from '../src/core/replies.js';
import pino from 'pino';
import { logDecision } from '../src/faces/decision-line.js';
import type { Decision } from '../src/core/checker.js';
import { found } from '../src/quota.js';

function capture(level = 'info') {
  const lines: string[] = [];
  const logger = pino({ level, base: { pid: 42 } }, { write: (l: string) => lines.push(l) });
  return { logger, lines };
}

const decision: Decision = {
  verdict: { kind: 'over_quota', reason: '5000 of 1000 bytes used' },
  reply: parseReply('452 4.2.2 Mailbox full, try again later'),
  recipient: { original: 'a@x', local: 'a', domain: 'x', address: 'a@x', fullAddress: 'a@x', key: 'a' },
  source: 'mbox:/var/mail',
  cache: 'hit',
  state: found(5000, 1000),
  error: null,
  ms: 0.12,
  pending: null,
  reserved: null,
};

test('the hand-written decision line is valid JSON in pino format, whatever the strings hold', () => {
  const { logger, lines } = capture();
  const nasty = ['quote"d', 'back\\slash', 'tab\tnew\nline', 'nul\u0000', 'jürgen@exämple.de', 'lone \ud800 surrogate', 'emoji 😀', '</script>'];
  for (const sender of nasty) {
    logDecision(logger, () => ({ face: 'policy', sender, recipient: 'a@x', queue_id: 'Q1', client_address: '192.0.2.1', state: 'RCPT', size: 10 }), decision);
  }
  assert.equal(lines.length, nasty.length);
  lines.forEach((line, i) => {
    assert.ok(line.endsWith('\n'));
    const doc = JSON.parse(line) as Record<string, unknown>;
    assert.equal(doc.sender, JSON.parse(JSON.stringify(nasty[i])));
    assert.equal(doc.level, 30);
    assert.equal(doc.pid, 42);
    assert.equal(doc.msg, 'decision');
    assert.equal(doc.verdict, 'over_quota');
    assert.equal(doc.usage, 5000);
    assert.equal(doc.limit, 1000);
    assert.equal(doc.queue_id, 'Q1');
    assert.equal(typeof doc.time, 'number');
  });
});

test('source names and reply texts from the configuration are escaped too, and absent fields left out', () => {
  const { logger, lines } = capture();
  const odd = { ...decision, source: 'mbox:/var/"mail\\x', reply: parseReply('452 4.2.2 "Mailbox" full\\'), cache: null, state: null };
  logDecision(logger, () => ({ face: 'milter', size: 0 }), odd);
  logDecision(logger, () => ({ face: 'milter', size: 0 }), odd);
  for (const line of lines) {
    const doc = JSON.parse(line) as Record<string, unknown>;
    assert.equal(doc.source, 'mbox:/var/"mail\\x');
    assert.equal(doc.action, '452 4.2.2 "Mailbox" full\\');
    assert.deepEqual(['cache', 'usage', 'limit', 'queue_id', 'sender'].filter((k) => k in doc), []);
  }
});

test('no decision line below the configured level, and the context is not even gathered', () => {
  const { logger, lines } = capture('warn');
  let gathered = false;
  logDecision(logger, () => ((gathered = true), { face: 'policy', size: 0 }), decision);
  assert.equal(lines.length, 0);
  assert.equal(gathered, false);
  logDecision(logger, () => ({ face: 'policy', size: 0 }), { ...decision, verdict: { kind: 'error', reason: 'down' }, error: { code: 'SOURCE_UNREACHABLE', message: 'down' } });
  assert.equal(lines.length, 1, 'errors are logged at warn');
  assert.equal((JSON.parse(lines[0]!) as { level: number }).level, 40);
});
