/*
 * Replies as values: a configured reply text (checked at start-up by config/reply-text.ts) becomes a
 * Reply (kind, SMTP code, enhanced status, text, and the words as written); templates get their
 * figures per decision. Each face renders a Reply in its own protocol; none parses another face's
 * words. It never sees an unchecked text from the network.
 */

/** The figures a reply template may show. */
export interface ReplyFigures {
  usageBytes?: number;
  limitBytes?: number | null;
  sizeBytes?: number;
}

export function renderReply(template: string, f: ReplyFigures): string {
  if (!template.includes('{')) return template;
  const percent = f.limitBytes ? Math.floor(((f.usageBytes ?? 0) * 100) / f.limitBytes) : 0;
  return template
    .replaceAll('{usage}', String(f.usageBytes ?? 0))
    .replaceAll('{limit}', String(f.limitBytes ?? 0))
    .replaceAll('{percent}', String(percent))
    .replaceAll('{size}', String(f.sizeBytes ?? 0));
}

/**
 * What a reply does to the recipient, decided once, where the reply is parsed: faces and logs read
 * this, never the words. defer: a 4XX (DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, 4XX); reject: a 5XX
 * (REJECT, 5XX); warn: the mail goes on and Postfix logs the text (WARN, a dry run's refusal); hold:
 * the mail goes on to the hold queue (HOLD); continue: the mail goes on (DUNNO).
 */
export type ReplyKind = 'continue' | 'warn' | 'hold' | 'defer' | 'reject';

/** A reply as a value, for any face. */
export interface Reply {
  kind: ReplyKind;
  /**
   * The SMTP code of a refusal; a named action stands for the code Postfix gives it by default
   * (DEFER, DEFER_IF_PERMIT and DEFER_IF_REJECT: access_map_defer_code 450; REJECT:
   * access_map_reject_code 554). Empty when the mail goes on.
   */
  code: string;
  /** The enhanced status code as written ("4.2.2"), or empty. */
  status: string;
  /** What follows the code and status (for WARN and HOLD: their text). */
  text: string;
  /** As configured, in Postfix access(5) words: what the policy face sends and the decision line shows. */
  words: string;
}

/** Whether this recipient is refused (a 4XX or 5XX): the mail does not go on. */
export function refuses(reply: Reply): boolean {
  return reply.kind === 'defer' || reply.kind === 'reject';
}

const NAMED_CODE: Record<string, string> = { DEFER_IF_PERMIT: '450', DEFER_IF_REJECT: '450', DEFER: '450', REJECT: '554' };
/** The actions besides DUNNO that let the mail go on (config/reply-text.ts refuses OK and any other word). */
const GOES_ON: Record<string, ReplyKind> = { WARN: 'warn', HOLD: 'hold' };

/** A sound reply text (replyProblem() found nothing) as a value. */
export function parseReply(words: string): Reply {
  const [word = '', ...after] = words.trim().split(/\s+/);
  let rest = after.join(' ');
  const upper = word.toUpperCase();
  const code = /^[45]\d\d$/.test(word) ? word : NAMED_CODE[upper];
  if (code === undefined) return { kind: GOES_ON[upper] ?? 'continue', code: '', status: '', text: rest, words };
  const dsn = /^\d\.\d{1,3}\.\d{1,3}(?=\s|$)/.exec(rest);
  const status = dsn ? dsn[0] : '';
  if (dsn) rest = rest.slice(status.length).trim();
  return { kind: code[0] === '4' ? 'defer' : 'reject', code, status, text: rest, words };
}

/** The dry-run form of a refusing reply: Postfix logs it and the mail goes on (access(5) WARN). */
export function warnReply(reply: Reply): Reply {
  const text = `overquota dry run: ${reply.status ? `${reply.status} ` : ''}${reply.text}`;
  return { kind: 'warn', code: '', status: '', text, words: `WARN ${text}` };
}

/** What the SMTP client would see from Postfix for this reply at RCPT; for the check command. */
export function postfixWouldSay(reply: Reply, recipient: string): string {
  const action = reply.words;
  const [word = '', ...rest] = action.split(' ');
  const text = rest.join(' ');
  const upper = word.toUpperCase();
  const rejected = (code: string, t: string) => {
    const dsn = /^\d\.\d{1,3}\.\d{1,3}(?=\s)/.exec(t);
    const status = dsn ? dsn[0] : `${code[0]}.7.1`;
    const body = dsn ? t.slice(dsn[0].length).trim() : t;
    return `${code} ${status} <${recipient}>: Recipient address rejected: ${body}`;
  };
  if (/^\d{3}$/.test(word)) return rejected(word, text);
  switch (upper) {
    case 'DUNNO':
      return '250 2.1.5 Ok (DUNNO: Postfix evaluates the next restriction, which may still reject)';
    case 'WARN':
      return `250 2.1.5 Ok (WARN: Postfix logs "${text}")`;
    case 'DEFER_IF_PERMIT':
      return `${rejected('450', text)} (450 is $access_map_defer_code; only if the rest of the list permits)`;
    case 'REJECT':
      return `${rejected('554', text)} (554 is $access_map_reject_code)`;
    default:
      return `${action} (Postfix access(5) action)`;
  }
}
