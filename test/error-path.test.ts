/*
 * A bug while deciding (the audit of issues 12 and 13): each face answers replies.on_error, and
 * an operator sees it as for any other trouble of ours: overquota_decisions_total counts the error
 * verdict, and a decision line (verdict error, error INTERNAL) is written under log.decisions
 * refusals. The bug is stood in for by a checker that throws or rejects: a real one never does.
 * The counts are the real exporter's, read from its Prometheus text.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { makePolicyHandler } from '../src/faces/policy/handler.js';
import { makeMilterDecider } from '../src/faces/milter/handler.js';
import { PolicyDecoder, type PolicyRequest } from '../src/faces/policy/codec.js';
import { createPrometheusMetrics } from '../src/runtime/prometheus.js';
import type { QuotaChecker } from '../src/core/checker.js';
import { sample } from './helpers/prometheus.js';

const ON_ERROR = '451 4.3.0 Try again later';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info', base: { pid: 42 } }, { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) });
  return { logger, lines };
}

/** A checker with a bug: check() throws at once, or its promise rejects. */
function broken(how: 'throws' | 'rejects'): QuotaChecker {
  const bug = new Error('a bug in the core');
  return {
    check: () => {
      if (how === 'throws') throw bug;
      return Promise.reject(bug);
    },
    messageSize() {},
    giveUp() {},
  } as unknown as QuotaChecker;
}

function rcpt(recipient: string, queueId: string): PolicyRequest {
  const decoder = new PolicyDecoder({ maxLineLength: 4096, maxAttributes: 100, maxRequestSize: 65536 });
  const text = `request=smtpd_access_policy\nprotocol_state=RCPT\nqueue_id=${queueId}\nclient_address=192.0.2.10\nsender=a@example.net\nrecipient=${recipient}\nsize=0\n\n`;
  return decoder.push(Buffer.from(text))[0]!;
}

const decisions = (lines: Record<string, unknown>[]) => lines.filter((l) => l.msg === 'decision');

test('policy: a bug answers on_error, counted as an error decision and logged as one (with the stack on its own line)', async () => {
  const metrics = createPrometheusMetrics('frontend');
  const { logger, lines } = capture();
  for (const [how, queueId] of [['throws', 'Q1'], ['rejects', 'Q2']] as const) {
    const handle = makePolicyHandler(broken(how), { checkEndOfMessage: false, onError: ON_ERROR, decisions: 'refusals', counts: metrics.face('policy') }, logger);
    assert.equal(await handle(rcpt('bob@example.com', queueId)), ON_ERROR, how);
  }
  assert.equal(sample(await metrics.text(), 'overquota_decisions_total', { face: 'policy', verdict: 'error' }), 2);
  const logged = decisions(lines);
  assert.deepEqual(
    logged.map((l) => [l.queue_id, l.recipient, l.verdict, l.error, l.level, l.reply_kind, l.action]),
    [
      ['Q1', 'bob@example.com', 'error', 'INTERNAL', 40, 'defer', ON_ERROR],
      ['Q2', 'bob@example.com', 'error', 'INTERNAL', 40, 'defer', ON_ERROR],
    ],
  );
  assert.match(String(logged[0]!.reason), /a bug in the core/);
  assert.equal(lines.filter((l) => l.level === 50 && (l.err as { stack?: string } | undefined)?.stack?.includes('a bug in the core')).length, 2);
});

test('milter: a bug answers on_error, counted as an error decision and logged as one', async () => {
  const metrics = createPrometheusMetrics('frontend');
  const { logger, lines } = capture();
  for (const [how, queueId] of [['throws', 'M1'], ['rejects', 'M2']] as const) {
    const decide = makeMilterDecider(broken(how), ON_ERROR, logger, 'refusals', metrics.face('milter'));
    const reply = await decide('<bob@example.com>', { queueId, client: null, sender: '<a@example.net>', size: 0, txn: 't1' });
    assert.equal(reply.words, ON_ERROR, how);
  }
  assert.equal(sample(await metrics.text(), 'overquota_decisions_total', { face: 'milter', verdict: 'error' }), 2);
  assert.deepEqual(
    decisions(lines).map((l) => [l.face, l.queue_id, l.recipient, l.sender, l.verdict, l.error]),
    [
      ['milter', 'M1', 'bob@example.com', 'a@example.net', 'error', 'INTERNAL'],
      ['milter', 'M2', 'bob@example.com', 'a@example.net', 'error', 'INTERNAL'],
    ],
  );
});
