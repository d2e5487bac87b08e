/*
 * Reading a backend's answer: the seed quota.cgi's plain text and our quota service's JSON.
 *
 * Text: one line "OK|OVERQUOTA <user> <size> <quota>" (bytes). The seed never says "unknown"; our
 * service answers 404 "UNKNOWN <user>" for a mailbox it does not have. A quota of 0 means no limit.
 * Anything else is SOURCE_BAD_ANSWER: a backend printing an error page must not read as "room".
 */
import { found, SourceError, type QuotaState } from './types.js';

/** Longest answer we read; the seed's is under 100 bytes. */
export const MAX_ANSWER_BYTES = 4096;

const TEXT_ANSWER = /^(OK|OVERQUOTA) (\S+) (\d{1,16}) (\d{1,16})\s*$/;

export function parseTextAnswer(body: string): QuotaState {
  const line = body.trim();
  if (/^UNKNOWN(\s|$)/.test(line)) return { kind: 'unknown' };
  const m = TEXT_ANSWER.exec(line);
  if (!m) throw new SourceError('SOURCE_BAD_ANSWER', `not "OK|OVERQUOTA user size quota": ${JSON.stringify(line.slice(0, 80))}`);
  const limit = Number(m[4]);
  return found(Number(m[3]), limit === 0 ? null : limit, { overQuota: m[1] === 'OVERQUOTA' });
}

interface JsonAnswer {
  state?: unknown;
  usage?: { bytes?: unknown; messages?: unknown };
  limit?: { bytes?: unknown; messages?: unknown };
}

export function parseJsonAnswer(body: string): QuotaState {
  let doc: JsonAnswer;
  try {
    doc = JSON.parse(body) as JsonAnswer;
  } catch {
    throw new SourceError('SOURCE_BAD_ANSWER', `not JSON: ${JSON.stringify(body.slice(0, 80))}`);
  }
  if (typeof doc !== 'object' || doc === null) throw new SourceError('SOURCE_BAD_ANSWER', 'JSON answer is not an object');
  if (doc.state === 'unknown') return { kind: 'unknown' };
  if (doc.state !== 'ok' && doc.state !== 'overquota') throw new SourceError('SOURCE_BAD_ANSWER', `JSON answer has state ${JSON.stringify(doc.state)}`);
  const usage = count(doc.usage?.bytes, 'usage.bytes', false);
  // A limit of 0 means none, as in the text answer (and Dovecot).
  const noZero = (n: number | null) => (n === 0 ? null : n);
  return found(usage!, noZero(count(doc.limit?.bytes, 'limit.bytes', true)), {
    usageMessages: count(doc.usage?.messages, 'usage.messages', true),
    limitMessages: noZero(count(doc.limit?.messages, 'limit.messages', true)),
    overQuota: doc.state === 'overquota',
  });
}

function count(v: unknown, what: string, nullable: boolean): number | null {
  if (v === null || v === undefined) {
    if (nullable) return null;
  } else if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) {
    return v;
  }
  throw new SourceError('SOURCE_BAD_ANSWER', `JSON answer has ${what} = ${JSON.stringify(v)}`);
}
