/*
 * Reads the operator-facing snippets in postfix/, so the end-to-end tests run Postfix with exactly
 * the lines the README tells operators to paste (only ports and paths substituted).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('../../postfix/', import.meta.url));

/** Logical lines of a Postfix config text: comments dropped, indented continuation lines joined. */
export function logicalLines(text: string): string[] {
  const lines: string[] = [];
  for (const raw of text.split('\n')) {
    if (/^\s*#/.test(raw) || raw.trim() === '') continue;
    if (/^\s/.test(raw) && lines.length > 0) lines[lines.length - 1] += ' ' + raw.trim();
    else lines.push(raw.trim());
  }
  return lines;
}

/** A main.cf parameter's value from a snippet file in postfix/ (default main.cf), whitespace folded. */
export function mainCfSnippet(name: string, file = 'main.cf'): string {
  const line = logicalLines(readFileSync(dir + file, 'utf8')).find((l) => l.startsWith(`${name} =`) || l.startsWith(`${name}=`));
  if (!line) throw new Error(`postfix/${file} has no ${name}`);
  return line.slice(line.indexOf('=') + 1).trim().replace(/\s+/g, ' ');
}

/** The F= and T= of the INPUT_MAIL_FILTER line in postfix/sendmail.mc, and its socket. */
export function sendmailFilterSnippet(): { socket: string; flags: string; timeouts: string } {
  const text = readFileSync(dir + 'sendmail.mc', 'utf8');
  const m = /^INPUT_MAIL_FILTER\(`overquota', `S=([^,]+), F=([A-Z]*), T=([^']+)'\)/m.exec(text);
  if (!m) throw new Error('postfix/sendmail.mc has no INPUT_MAIL_FILTER line');
  return { socket: m[1]!, flags: m[2]!, timeouts: m[3]! };
}

/** The service entry of postfix/master.cf (one logical line). */
export function masterCfSnippet(): string {
  const line = logicalLines(readFileSync(dir + 'master.cf', 'utf8'))[0];
  if (!line) throw new Error('postfix/master.cf has no service line');
  return line;
}

/** The commented main.cf lines at the end of postfix/master.cf, uncommented, as name -> value. */
export function masterCfCompanionMain(): Map<string, string> {
  const text = readFileSync(dir + 'master.cf', 'utf8');
  const body = text
    .split('\n')
    .filter((l) => /^#\s{3}/.test(l))
    .map((l) => l.replace(/^#\s{3}/, ''))
    .join('\n');
  return new Map(logicalLines(body).map((l) => [l.slice(0, l.indexOf('=')).trim(), l.slice(l.indexOf('=') + 1).trim().replace(/\s+/g, ' ')]));
}
