/*
 * scripts/manpage.ts — writes the overquota(8) manual page (roff) to stdout, generated from the
 * same sources as `--help`: the commands' usage and summaries (src/commands/help.ts) and every
 * setting of the schema with its variable, default and doc (describeSettings() in src/config.ts),
 * so the page cannot drift from the program. scripts/package.sh installs it in the Debian package.
 *
 * Usage: node --import tsx scripts/manpage.ts > overquota.8
 * The date is SOURCE_DATE_EPOCH's (the changelog's, set by package.sh) for a reproducible page.
 * It must never print anything but the page: its stdout is the file.
 */
import { readFileSync } from 'node:fs';
import { describeSettings } from '../src/config/schema.js';
import { COMMANDS } from '../src/commands/help.js';

/**
 * Text for roff: backslashes kept, a line never read as a request (leading . or '), and a break
 * point after each comma inside a word (a JSON list in a doc is wider than a terminal).
 */
function roff(text: string): string {
  return text
    .replaceAll('\\', '\\e')
    .replace(/,(?=\S)/g, ',\\:')
    .split('\n')
    .map((line) => (/^[.']/.test(line) ? `\\&${line}` : line))
    .join('\n');
}

/** A command-line word in roff: hyphens are minus signs there, so it can be copied and pasted. */
function option(text: string): string {
  return roff(text).replaceAll('-', '\\-');
}

function section(name: string, ...body: string[]): string[] {
  return [`.SH ${name}`, ...body];
}

function paragraph(text: string): string[] {
  return ['.PP', roff(text)];
}

function entry(term: string, ...body: string[]): string[] {
  return ['.TP', term, ...body];
}

export function manPage(version: string, date: string): string {
  const lines: string[] = [
    `.TH OVERQUOTA 8 "${date}" "overquota ${version}" "System Manager's Manual"`,
    // Left-aligned: long setting names and URLs leave justified lines full of holes.
    '.ad l',
    ...section('NAME', 'overquota \\- stop quota backscatter: answer 452 4.2.2 for a full mailbox at RCPT TO'),
    ...section('SYNOPSIS', ...Object.values(COMMANDS).flatMap((c) => ['.nf', option(c.usage), '.fi', '.br'])),
    '.nf',
    '\\fBoverquota\\fR \\-\\-help | \\fICOMMAND\\fR \\-\\-help | \\-\\-version',
    '.fi',
    ...section(
      'DESCRIPTION',
      ...paragraph(
        'A mail host that accepts a message and then finds the mailbox full bounces it, often to a forged sender: backscatter. ' +
          'overquota lets an MX frontend ask, at RCPT TO time, whether the mailbox is full, and answer ' +
          '452 4.2.2 Mailbox full, try again later: the sending server keeps the message and retries, nothing bounces.',
      ),
      ...paragraph(
        'The frontend is a Postfix SMTPD access policy delegation server (check_policy_service, or spawn(8) with --stdio) and a milter; ' +
          'the quota service runs on each mailbox backend and answers lookups from an mbox or Maildir++ store, like the classic quota.cgi.',
      ),
    ),
    ...section('COMMANDS', ...Object.entries(COMMANDS).flatMap(([name, c]) => entry(`\\fB${option(name)}\\fR`, roff(c.summary)))),
    ...section(
      'OPTIONS',
      ...entry('\\fB\\-\\-config\\fR \\fIFILE\\fR', 'Read settings from FILE (JSON; also OVERQUOTA_CONFIG).'),
      ...entry('\\fB\\-\\-\\fR\\fIpath.of.setting\\fR \\fIVALUE\\fR', 'Set one setting (see SETTINGS).'),
      ...entry('\\fB\\-\\-help\\fR', 'Print the usage; after a command, its settings.'),
      ...entry('\\fB\\-\\-version\\fR', 'Print the version.'),
    ),
    ...section(
      'SETTINGS',
      ...paragraph(
        'Each setting comes from its built-in default, then the file given by --config, then its environment variable, then its flag, ' +
          'each over the one before. An OVERQUOTA_ variable that names no setting is refused. Durations take ms, s, m, h; sizes take k, M, G (binary multiples).',
      ),
      ...describeSettings().flatMap((s) =>
        entry(`\\fB\\-\\-${option(s.path)}\\fR \\fIVALUE\\fR`, `Variable \\fB${roff(s.env)}\\fR, default \\fB${roff(JSON.stringify(s.default))}\\fR.`, '.br', roff(s.doc)),
      ),
    ),
    ...section(
      'SIGNALS',
      ...entry('\\fBSIGHUP\\fR', 'Re-read aliases.file and store.limits_file; a file with a bad line keeps the previous one.'),
      ...entry('\\fBSIGTERM\\fR', 'Stop accepting, answer what is in flight, exit.'),
    ),
    ...section(
      'EXIT STATUS',
      ...entry('\\fB0\\fR', 'Stopped cleanly. For check: the mail would pass.'),
      ...entry('\\fB1\\fR', 'Could not start (e.g. a port in use). For check: deferred or rejected (2: the source failed).'),
      ...entry('\\fB64\\fR', 'Usage error.'),
      ...entry('\\fB70\\fR', 'A bug: logged with its stack; the supervisor starts a clean process.'),
      ...entry('\\fB78\\fR', 'Invalid configuration; the systemd units do not restart on it.'),
    ),
    ...section(
      'FILES',
      ...entry('\\fI/etc/overquota/frontend.json\\fR', 'Settings of overquota\\-frontend.service (JSON with // comments).'),
      ...entry('\\fI/etc/overquota/quota\\-service.json\\fR', 'Settings of overquota\\-quota\\-service.service.'),
      ...entry('\\fI/usr/lib/systemd/system/overquota\\-frontend.service\\fR', 'The frontend\\(aqs unit; change it with systemctl edit.'),
      ...entry('\\fI/usr/lib/systemd/system/overquota\\-quota\\-service.service\\fR', 'The quota service\\(aqs unit.'),
      ...entry('\\fI/var/log/overquota/\\fR', 'Where a log.file goes (rotated by /etc/logrotate.d/overquota); by default the daemons log to the journal.'),
      ...entry('\\fI/usr/lib/overquota/\\fR', 'The application and the Node.js runtime it runs on.'),
    ),
    ...section('SEE ALSO', '\\fBpostconf\\fR(5), \\fBaccess\\fR(5), \\fBspawn\\fR(8), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)'),
  ];
  return lines.join('\n') + '\n';
}

function pageDate(): string {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  const when = epoch ? new Date(Number(epoch) * 1000) : new Date();
  return when.toISOString().slice(0, 10);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  process.stdout.write(manPage(pkg.version, pageDate()));
}
