/*
 * log.format text: each log line as one line in the style of Postfix's own mail log, for sites
 * whose logs go to syslog `mail` beside Postfix's. A decision:
 *
 *   overquota[4711]: 4F2A1B3C: defer: RCPT to=<bob@example.com>: 452 4.2.2 Mailbox full, try again later
 *       (usage 205M of 200M, source http:mx1:10035/quota, 1.2 ms)
 *
 * (one line; NOQUEUE when there is no queue id yet, as Postfix writes it), the word saying what
 * the client was told: defer, reject, warn (dry run), pass, skip (not ours), error (our trouble,
 * answered with on_error). Other events: "overquota[4711]: warning: redis unavailable: ...
 * (mode=standalone)", with Postfix's level words (warning, error, fatal; info has none).
 * In a file each line starts with the time and the host, as Postfix's maillog_file writes them.
 * It reads the JSON line pino (or faces/decision-line.ts) wrote, so both formats say the same.
 * Never throws: a line it cannot read is written as it came.
 */
import { hostname } from 'node:os';

const LEVEL_WORD: Record<number, string> = { 60: 'fatal: ', 50: 'error: ', 40: 'warning: ', 30: '', 20: 'debug: ', 10: 'trace: ' };
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
/** Keys of every line: said in the prefix, not repeated in the details. */
const FRAME = new Set(['level', 'time', 'pid', 'hostname', 'msg']);

type Line = Record<string, unknown>;

/** The converter for one destination: JSON line in, text line out. */
export function textLineOf(withTimeAndHost: boolean): (json: string) => string {
  const host = hostname().split('.')[0];
  return (json) => {
    let line: Line;
    try {
      line = JSON.parse(json) as Line;
    } catch {
      return json;
    }
    const prefix = withTimeAndHost ? `${syslogTime(Number(line.time))} ${host} ` : '';
    const body = line.msg === 'decision' ? decisionText(line) : eventText(line);
    return `${prefix}overquota[${String(line.pid)}]: ${body}\n`;
  };
}

function decisionText(d: Line): string {
  const action = String(d.action ?? '');
  const details: string[] = [];
  if (typeof d.usage === 'number') details.push(`usage ${size(d.usage)} of ${d.limit === null ? 'no limit' : size(Number(d.limit))}`);
  if (typeof d.pending_bytes === 'number') details.push(`${size(d.pending_bytes)} in ${String(d.pending_messages)} messages on their way`);
  if (d.verdict === 'unknown_mailbox') details.push('unknown mailbox');
  if (d.verdict === 'not_checked' || d.verdict === 'error') details.push(String(d.reason));
  if (d.error) details.push(String(d.error));
  if (d.source) details.push(`source ${String(d.source)}`);
  if (d.cache) details.push(`cache ${String(d.cache)}`);
  details.push(`${String(d.ms)} ms`);
  const state = d.state === 'END-OF-MESSAGE' ? 'END-OF-MESSAGE' : 'RCPT';
  const from = d.client_address ? ` from ${String(d.client_address)}` : '';
  return `${String(d.queue_id || 'NOQUEUE')}: ${wordOf(d)}: ${state}${from} to=<${String(d.recipient ?? '')}>: ${action} (${details.join(', ')})`;
}

/**
 * What the client was told, in Postfix's words where it has them: from the line's reply_kind
 * (core/replies.ts decided it once, faces/decision-line.ts wrote it), never from the reply's words.
 */
function wordOf(d: Line): string {
  const kind = d.reply_kind;
  if (kind === 'defer' || kind === 'reject' || kind === 'warn' || kind === 'hold') return kind;
  if (d.verdict === 'error') return 'error';
  return d.verdict === 'not_checked' ? 'skip' : 'pass';
}

function eventText(e: Line): string {
  const details = Object.entries(e)
    .filter(([k]) => !FRAME.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? (('message' in v ? String((v as { message: unknown }).message) : JSON.stringify(v))) : String(v)}`);
  return `${LEVEL_WORD[Number(e.level)] ?? ''}${String(e.msg ?? '')}${details.length > 0 ? ` (${details.join(', ')})` : ''}`;
}

/** "205M": binary multiples, one decimal below 10. */
function size(bytes: number): string {
  for (const [unit, n] of [['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= n) {
      const v = bytes / n;
      return `${v < 10 ? v.toFixed(1).replace(/\.0$/, '') : Math.round(v)}${unit}`;
    }
  }
  return `${bytes}`;
}

/** "Nov 30 12:04:05", local time, as syslog writes it. */
function syslogTime(ms: number): string {
  const t = new Date(Number.isFinite(ms) ? ms : Date.now());
  const two = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[t.getMonth()]} ${String(t.getDate()).padStart(2, ' ')} ${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
}
