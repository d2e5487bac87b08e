/*
 * A verdict's reply, in Postfix access(5) words (core/verdict.ts), -> the milter reply at RCPT.
 *
 * Only REPLYCODE ('y') carries "452 4.2.2 text" to the client (a plain TEMPFAIL gives 451 4.7.1).
 * The text must survive both MTAs: one terminating NUL; 3 digits, 4 or 5, then a space; an enhanced
 * status code whose class matches (else Postfix logs "malformed reply" and drops the milter);
 * '%' doubled (a lone one makes Sendmail answer 550 5.7.1 instead); no CR or LF; at most 980 bytes.
 * The access(5) actions map to the codes Postfix itself would use by default (access_map_defer_code
 * 450, access_map_reject_code 554).
 */
import { encodePacket } from './codec.js';
import { Reply } from './constants.js';

export const MAX_REPLY_TEXT_BYTES = 980;

export type RcptReply = { kind: 'continue'; note?: string } | { kind: 'replycode'; text: string };

const NAMED_CODE: Record<string, string> = { DEFER_IF_PERMIT: '450', DEFER_IF_REJECT: '450', DEFER: '450', REJECT: '554' };

export function rcptReplyFor(action: string): RcptReply {
  const [word = '', ...rest] = action.trim().split(/\s+/);
  const text = rest.join(' ');
  const upper = word.toUpperCase();
  if (/^[45]\d\d$/.test(word)) return { kind: 'replycode', text: formatReplyText(word, text) };
  const code = NAMED_CODE[upper];
  if (code) return { kind: 'replycode', text: formatReplyText(code, text) };
  // DUNNO, WARN (dry run), anything else that lets the mail pass: continue.
  return upper === 'DUNNO' ? { kind: 'continue' } : { kind: 'continue', note: action };
}

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
    status = `${cls}.0.0`;
  }
  if (body === '') body = cls === '4' ? 'Try again later' : 'Rejected';
  const out = `${code} ${status} ${body.replaceAll('%', '%%')}`;
  return (Buffer.byteLength(out) > MAX_REPLY_TEXT_BYTES ? cutToLimit(out) : out).toWellFormed();
}

/**
 * The longest prefix within MAX_REPLY_TEXT_BYTES, whole characters only, in one pass (cutting a
 * character at a time and measuring again was quadratic: 64 KiB took a second, fuzz-found), and
 * never ending in half of a "%%" pair.
 */
function cutToLimit(text: string): string {
  let bytes = 0;
  let end = 0;
  for (const ch of text) {
    const size = ch.length === 2 ? 4 : ch.charCodeAt(0) < 0x80 ? 1 : ch.charCodeAt(0) < 0x800 ? 2 : 3;
    if (bytes + size > MAX_REPLY_TEXT_BYTES) break;
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
