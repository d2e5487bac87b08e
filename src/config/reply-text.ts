/*
 * The reply texts an operator may configure, in Postfix's access(5) words ("452 4.2.2 Mailbox
 * full", "DUNNO", "DEFER_IF_PERMIT 4.2.2 ..."), checked at start-up. Several spellings look right
 * and are silently wrong in Postfix (see the README, Decisions); each is refused with the reason
 * before the first request, so a typo never turns into accepted-and-bounced mail. It must never
 * let through an all-numeric action (Postfix reads it as OK) or OK itself (it skips the
 * operator's later restrictions). core/replies.ts turns a sound text into a value.
 */

/** SMTP reply lines are at most 512 bytes (RFC 5321); Postfix adds "<rcpt>: Recipient address rejected: ". */
export const MAX_CONFIGURED_REPLY_BYTES = 400;

/** Actions that carry an optional text and may be configured as a reply. */
const NAMED_ACTIONS = new Set(['DUNNO', 'DEFER_IF_PERMIT', 'DEFER_IF_REJECT', 'DEFER', 'REJECT', 'WARN', 'HOLD']);
/** The class each named action implies for an enhanced status code at the start of its text. */
const ACTION_CLASS: Record<string, '4' | '5' | undefined> = {
  DEFER_IF_PERMIT: '4',
  DEFER_IF_REJECT: '4',
  DEFER: '4',
  REJECT: '5',
};

export const PLACEHOLDERS = ['{usage}', '{limit}', '{percent}', '{size}'];

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
  if (Buffer.byteLength(sample) > MAX_CONFIGURED_REPLY_BYTES) return `is longer than ${MAX_CONFIGURED_REPLY_BYTES} bytes`;

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

