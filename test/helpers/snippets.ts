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

/** main.cf parameter value from postfix/main.cf, whitespace folded. */
export function mainCfSnippet(name: string): string {
  const line = logicalLines(readFileSync(dir + 'main.cf', 'utf8')).find((l) => l.startsWith(`${name} =`) || l.startsWith(`${name}=`));
  if (!line) throw new Error(`postfix/main.cf has no ${name}`);
  return line.slice(line.indexOf('=') + 1).trim().replace(/\s+/g, ' ');
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
