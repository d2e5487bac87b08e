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
  let out = `${code} ${status} ${body.replaceAll('%', '%%')}`;
  while (Buffer.byteLength(out) > MAX_REPLY_TEXT_BYTES) {
    out = out.slice(0, -1);
    // Never leave half of a "%%" pair at the end.
    if (/(^|[^%])(%%)*%$/.test(out)) out = out.slice(0, -1);
  }
  return out.toWellFormed();
}

export function encodeRcptReply(reply: RcptReply): Buffer {
  if (reply.kind === 'continue') return encodePacket(Reply.CONTINUE);
  return encodePacket(Reply.REPLYCODE, Buffer.from(`${reply.text}\0`, 'utf8'));
}
