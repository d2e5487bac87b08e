/*
 * Reading a backend's answer: the seed quota.cgi's plain text and our quota service's JSON.
 *
 * Text: one line "OK|OVERQUOTA <user> <size> <quota>" (bytes). The seed never says "unknown"; our
 * service answers 404 "UNKNOWN <user>" for a mailbox it does not have. A quota of 0 means no limit.
 * Anything else is SOURCE_BAD_ANSWER: a backend printing an error page must not read as "room".
 *
 * An answer is believed only for the mailbox it names: both the seed and our service echo the user
 * asked, so an answer naming another one (a proxy or cache mixing answers up, a backend that
 * rewrites names) is SOURCE_BAD_ANSWER, never the figures of the mailbox asked. The JSON answer
 * must carry its `user`. A limit too small to be a quota (under MIN_PLAUSIBLE_LIMIT_BYTES, 512) is
 * SOURCE_BAD_ANSWER too (types.ts): a refusal, above all the permanent 552, must rest on an answer
 * that makes sense.
 */
import { checkPlausibleLimit, found, SourceError, type QuotaState } from '../quota.js';

/** Longest answer we read; the seed's is under 100 bytes. */
export const MAX_ANSWER_BYTES = 4096;

const TEXT_ANSWER = /^(OK|OVERQUOTA) (\S+) (\d{1,16}) (\d{1,16})\s*$/;

const UNKNOWN_ANSWER = /^UNKNOWN(?: (\S+))?\s*$/;

/** @param key the mailbox asked: the answer must name it. */
export function parseTextAnswer(body: string, key: string): QuotaState {
  const line = body.trim();
  const unknown = UNKNOWN_ANSWER.exec(line);
  if (unknown) {
    if (unknown[1] !== undefined) checkUser(unknown[1], key);
    return { kind: 'unknown' };
  }
  const m = TEXT_ANSWER.exec(line);
  if (!m) throw new SourceError('SOURCE_BAD_ANSWER', `not "OK|OVERQUOTA user size quota": ${JSON.stringify(line.slice(0, 80))}`);
  checkUser(m[2]!, key);
  const limit = Number(m[4]) === 0 ? null : Number(m[4]);
  checkPlausibleLimit(limit, 'the answer');
  return found(Number(m[3]), limit, { overQuota: m[1] === 'OVERQUOTA' });
}

interface JsonAnswer {
  user?: unknown;
  state?: unknown;
  usage?: { bytes?: unknown; messages?: unknown };
  limit?: { bytes?: unknown; messages?: unknown };
}

/** @param key the mailbox asked: the answer's `user` must be it. */
export function parseJsonAnswer(body: string, key: string): QuotaState {
  let doc: JsonAnswer;
  try {
    doc = JSON.parse(body) as JsonAnswer;
  } catch {
    throw new SourceError('SOURCE_BAD_ANSWER', `not JSON: ${JSON.stringify(body.slice(0, 80))}`);
  }
  if (typeof doc !== 'object' || doc === null) throw new SourceError('SOURCE_BAD_ANSWER', 'JSON answer is not an object');
  if (typeof doc.user !== 'string') throw new SourceError('SOURCE_BAD_ANSWER', 'JSON answer names no user');
  checkUser(doc.user, key);
  if (doc.state === 'unknown') return { kind: 'unknown' };
  if (doc.state !== 'ok' && doc.state !== 'overquota') throw new SourceError('SOURCE_BAD_ANSWER', `JSON answer has state ${JSON.stringify(doc.state)}`);
  const usage = count(doc.usage?.bytes, 'usage.bytes', false);
  // A limit of 0 means none, as in the text answer (and Dovecot).
  const noZero = (n: number | null) => (n === 0 ? null : n);
  const limit = noZero(count(doc.limit?.bytes, 'limit.bytes', true));
  checkPlausibleLimit(limit, 'the JSON answer');
  return found(usage!, limit, {
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

function checkUser(named: string, key: string): void {
  if (named !== key) {
    throw new SourceError('SOURCE_BAD_ANSWER', `the answer names ${JSON.stringify(named.slice(0, 80))}, not the mailbox asked, ${JSON.stringify(key)}`);
  }
}
