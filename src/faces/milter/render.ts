/*
 * A verdict's reply (a value: core/replies.ts) -> the milter reply at RCPT.
 *
 * Only REPLYCODE ('y') carries "452 4.2.2 text" to the client (a plain TEMPFAIL gives 451 4.7.1).
 * The text must survive both MTAs: one terminating NUL; 3 digits, 4 or 5, then a space; an enhanced
 * status code whose class matches (else Postfix logs "malformed reply" and drops the milter);
 * '%' doubled (a lone one makes Sendmail answer 550 5.7.1 instead); no CR or LF; at most 980 bytes.
 * A reply that lets the mail go on is CONTINUE; a WARN (a dry run) or HOLD is noted.
 */
import { encodePacket } from './codec.js';
import { Reply } from './constants.js';
import { refuses, type Reply as Verdict } from '../../core/replies.js';

export const MAX_MILTER_REPLY_BYTES = 980;

export type RcptReply = { kind: 'continue'; note?: string } | { kind: 'replycode'; text: string };

export function rcptReplyFor(reply: Verdict): RcptReply {
  if (refuses(reply)) return { kind: 'replycode', text: formatReplyText(reply.code, reply.status === '' ? reply.text : `${reply.status} ${reply.text}`) };
  return reply.kind === 'continue' ? CONTINUE_REPLY : { kind: 'continue', note: reply.words };
}

const CONTINUE_REPLY: RcptReply = Object.freeze({ kind: 'continue' });

/** "452", "4.2.2 Mailbox full" -> "452 4.2.2 Mailbox full", made safe for Postfix and Sendmail. */
export function formatReplyText(code: string, text: string): string {
  const cls = code[0]!;
  let body = text.replace(/[\x00-\x1f\x7f]/g, ' ').trim();
  const dsn = /^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/.exec(body);
  let status: string;
  if (dsn) {
    status = `${cls}.${dsn[2]}.${dsn[3]}`;
    body = body.slice(dsn[0].length).trim();
  } else {
    // What Postfix gives an access(5) reply without one (smtpd_check.c), so both faces agree.
    status = `${cls}.7.1`;
  }
  if (body === '') body = cls === '4' ? 'Try again later' : 'Rejected';
  const out = `${code} ${status} ${body.replaceAll('%', '%%')}`;
  return (Buffer.byteLength(out) > MAX_MILTER_REPLY_BYTES ? cutToLimit(out) : out).toWellFormed();
}

/**
 * The longest prefix within MAX_MILTER_REPLY_BYTES, whole characters only, in one pass (cutting a
 * character at a time and measuring again was quadratic: 64 KiB took a second, fuzz-found), and
 * never ending in half of a "%%" pair.
 */
function cutToLimit(text: string): string {
  let bytes = 0;
  let end = 0;
  for (const ch of text) {
    const size = ch.length === 2 ? 4 : ch.charCodeAt(0) < 0x80 ? 1 : ch.charCodeAt(0) < 0x800 ? 2 : 3;
    if (bytes + size > MAX_MILTER_REPLY_BYTES) break;
    bytes += size;
    end += ch.length;
  }
  let cut = text.slice(0, end);
  let percents = 0;
  while (percents < cut.length && cut[cut.length - 1 - percents] === '%') percents++;
  if (percents % 2 === 1) cut = cut.slice(0, -1);
  return cut;
}

/** CONTINUE, the most frequent reply, encoded once (socket writes never change a buffer). */
export const CONTINUE_PACKET = encodePacket(Reply.CONTINUE);

export function encodeRcptReply(reply: RcptReply): Buffer {
  if (reply.kind === 'continue') return CONTINUE_PACKET;
  return encodePacket(Reply.REPLYCODE, Buffer.from(`${reply.text}\0`, 'utf8'));
}
