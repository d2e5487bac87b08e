/*
 * Reply texts: validated once at start-up, parsed into a face-neutral value, rendered per decision.
 *
 * An operator writes replies in Postfix's access(5) words ("452 4.2.2 Mailbox full", "DUNNO",
 * "DEFER_IF_PERMIT 4.2.2 ..."). Several spellings look right and are silently wrong in Postfix
 * (see ../shared/references/postfix-policy.md); this module refuses them before the first request,
 * so a typo never turns into accepted-and-bounced mail. It must never let through an all-numeric
 * action (Postfix reads it as OK) or OK itself (it skips the operator's later restrictions).
 * A sound text becomes a Reply (kind, SMTP code, enhanced status, text, and the words as written):
 * each face renders that value in its own protocol; none parses another face's words.
 */

/** SMTP reply lines are at most 512 bytes (RFC 5321); Postfix adds "<rcpt>: Recipient address rejected: ". */
export const MAX_REPLY_TEXT_BYTES = 400;

/** Actions that carry an optional text and may be configured as a reply. */
const NAMED_ACTIONS = new Set(['DUNNO', 'DEFER_IF_PERMIT', 'DEFER_IF_REJECT', 'DEFER', 'REJECT', 'WARN', 'HOLD']);
/** The class each named action implies for an enhanced status code at the start of its text. */
const ACTION_CLASS: Record<string, '4' | '5' | undefined> = {
  DEFER_IF_PERMIT: '4',
  DEFER_IF_REJECT: '4',
  DEFER: '4',
  REJECT: '5',
};

const PLACEHOLDERS = ['{usage}', '{limit}', '{percent}', '{size}'];

/*
 * A placeholder becomes 1 to 16 digits ({usage} of a mailbox past 9 PB has 16): the reply must be
 * sound for the shortest, a middling and the longest figure, or a template that reads well with
 * "100" ("452 4.2.2{percent}") renders, at 0%, into a reply Postfix misreads ("452 4.2.20").
 */
const SAMPLE_FIGURES = ['0', '100', '9007199254740991'];

/**
 * Returns why Postfix would misread this reply, or null when it is sound.
 * Placeholders are checked as if replaced by figures of every length they can take.
 */
export function replyProblem(reply: string): string | null {
  if (typeof reply !== 'string' || reply.trim() === '') return 'is empty';
  if (!reply.isWellFormed() || reply.includes('\uFFFD')) return 'is not valid UTF-8';
  if (/[\x00-\x1f\x7f]/.test(reply)) return 'contains a control character (CR, LF, TAB, NUL ...)';
  if (reply !== reply.trim()) return 'has leading or trailing white space';
  const stray = /\{[a-z_]+\}/.exec(PLACEHOLDERS.reduce((text, p) => text.replaceAll(p, ''), reply));
  if (stray) return `uses the unknown placeholder ${stray[0]} (known: ${PLACEHOLDERS.join(' ')})`;
  // Figures in the first two words could become the code, a status code or a code after a named
  // action, whatever their values: "{percent}{size}" is "010" at 0% of a 10-byte message.
  if (reply.split(' ', 2).some((word) => PLACEHOLDERS.some((p) => word.includes(p)))) {
    return 'has a placeholder in its first two words, where a figure could be read as a code or a status code: put it in the text';
  }
  for (const figure of SAMPLE_FIGURES) {
    const problem = renderedProblem(PLACEHOLDERS.reduce((text, p) => text.replaceAll(p, figure), reply));
    if (problem) return figure === '100' ? problem : `${problem} (when a placeholder is ${figure})`;
  }
  return null;
}

function renderedProblem(sample: string): string | null {
  if (Buffer.byteLength(sample) > MAX_REPLY_TEXT_BYTES) return `is longer than ${MAX_REPLY_TEXT_BYTES} bytes`;

  const [word = '', ...rest] = sample.split(' ');
  const text = rest.join(' ');
  if (/^\d+$/.test(word)) return numericProblem(word, text);
  const action = word.toUpperCase();
  if (action === 'OK' || action === 'PERMIT')
    return 'is OK: Postfix would skip every later restriction (use DUNNO for "let the next restriction decide")';
  if (!NAMED_ACTIONS.has(action)) return `starts with "${word}", which is not a Postfix access(5) action or a 4XX/5XX code`;
  if (action === 'DUNNO' && text !== '') return 'is DUNNO with a text, which Postfix ignores';
  if (/^\d{3}(\s|$)/.test(text))
    return `puts an SMTP code after ${action}: Postfix would send "${action === 'REJECT' ? 554 : 450} 4.7.1 ...: ${text}" (write "452 4.2.2 text" instead)`;
  const wanted = ACTION_CLASS[action];
  const dsn = /^(\d)\.\d{1,3}\.\d{1,3}(\s|$)/.exec(text);
  if (wanted && dsn && dsn[1] !== wanted) return `has the status code ${text.split(' ')[0]} where ${action} needs ${wanted}.X.X`;
  return null;
}

function numericProblem(code: string, text: string): string | null {
  if (text === '') return `is the bare code "${code}": Postfix treats an all-numeric action as OK and accepts the mail`;
  if (!/^[45]\d\d$/.test(code)) return `has the code ${code}: only 4XX and 5XX codes are replies`;
  if (code === '421') return 'is a 421, which makes Postfix disconnect the client';
  const dsn = /^(\d)\.\d{1,3}\.\d{1,3}(\s|$)/.exec(text);
  if (dsn) {
    if (dsn[1] !== code[0]) return `has the status code ${text.split(' ')[0]} whose class does not match ${code}`;
    if (text.slice(dsn[0].length).trim() === '') return 'has a status code but no text';
  }
  return null;
}

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

/** A reply as a value, for any face. */
export interface Reply {
  /** refuse: this recipient gets a 4XX or 5XX; pass: the mail goes on (DUNNO; WARN and HOLD, which Postfix logs or holds). */
  kind: 'refuse' | 'pass';
  /**
   * The SMTP code of a refusal; a named action stands for the code Postfix gives it by default
   * (DEFER, DEFER_IF_PERMIT and DEFER_IF_REJECT: access_map_defer_code 450; REJECT:
   * access_map_reject_code 554). Empty for a pass.
   */
  code: string;
  /** The enhanced status code as written ("4.2.2"), or empty. */
  status: string;
  /** What follows the code and status (for WARN and HOLD: their text). */
  text: string;
  /** As configured, in Postfix access(5) words: what the policy face sends and the decision line shows. */
  words: string;
}

const NAMED_CODE: Record<string, string> = { DEFER_IF_PERMIT: '450', DEFER_IF_REJECT: '450', DEFER: '450', REJECT: '554' };

/** A sound reply text (replyProblem() found nothing) as a value. */
export function parseReply(words: string): Reply {
  const [word = '', ...after] = words.trim().split(/\s+/);
  let rest = after.join(' ');
  const upper = word.toUpperCase();
  const code = /^[45]\d\d$/.test(word) ? word : NAMED_CODE[upper];
  if (code === undefined) return { kind: 'pass', code: '', status: '', text: rest, words };
  const dsn = /^\d\.\d{1,3}\.\d{1,3}(?=\s|$)/.exec(rest);
  const status = dsn ? dsn[0] : '';
  if (dsn) rest = rest.slice(status.length).trim();
  return { kind: 'refuse', code, status, text: rest, words };
}

/** The dry-run form of a refusing reply: Postfix logs it and the mail goes on (access(5) WARN). */
export function warnReply(reply: Reply): Reply {
  const text = `overquota dry run: ${reply.status ? `${reply.status} ` : ''}${reply.text}`;
  return { kind: 'pass', code: '', status: '', text, words: `WARN ${text}` };
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
