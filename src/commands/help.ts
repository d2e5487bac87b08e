/*
 * --help texts. The settings list is generated from the schema, so it cannot drift.
 */
import { describeSettings } from '../config/schema.js';

export const COMMANDS: Record<string, { usage: string; summary: string }> = {
  frontend: {
    usage: 'overquota frontend [--stdio] [--config FILE] [--SETTING VALUE ...]',
    summary: 'Run the Postfix policy service (inet/unix listeners, or spawn(8) mode on stdin/stdout with --stdio).',
  },
  'quota-service': {
    usage: 'overquota quota-service [--config FILE] [--SETTING VALUE ...]',
    summary: 'Run the backend quota service (replaces quota.cgi): GET /quota?u=USER, /cgi-bin/quota.cgi?u=USER, /quota.json?u=USER, /health, /ready, /metrics.',
  },
  check: {
    usage: 'overquota check ADDRESS [--size BYTES] [--json] [--config FILE] [--SETTING VALUE ...]',
    summary: 'Ask one address through the same path as the frontend and print verdict, usage, limit, source and the reply Postfix would give. Exit 0: accepted, 1: deferred or rejected, 2: error reply.',
  },
  invalidate: {
    usage: 'overquota invalidate ADDRESS [--config FILE] [--SETTING VALUE ...]',
    summary: "Make every frontend forget ADDRESS's cached quota state now (Redis: delete and publish; else the admin endpoint).",
  },
  notify: {
    usage: 'overquota notify [+N|-N] USER [--config FILE] [--SETTING VALUE ...]',
    summary: "For Dovecot's quota_warning scripts: make every frontend forget mailbox USER (the mailbox key) now, as invalidate does.",
  },
  status: {
    usage: 'overquota status [--json] [--config FILE] [--SETTING VALUE ...]',
    summary: "Ask the running frontend at admin.listen whether it is ready (GET /ready) and print what is wrong, if anything: Redis, each source. Exit 0: ready, 1: degraded, 2: no answer.",
  },
  config: {
    usage: 'overquota config [--config FILE] [--SETTING VALUE ...]',
    summary: 'Print the effective configuration as JSON, secrets redacted.',
  },
};

export function mainHelp(): string {
  const lines = ['overquota: refuse RCPT TO for full mailboxes with 452 4.2.2, so nothing bounces.', '', 'Commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(14)} ${c.summary}`);
  lines.push('', 'Options: --help (also after a command), --version.', 'Configuration: --config FILE or OVERQUOTA_CONFIG (JSON); env OVERQUOTA_*; flags --path.of.setting VALUE.');
  return lines.join('\n');
}

export function commandHelp(name: string): string {
  const c = COMMANDS[name]!;
  const lines = [`Usage: ${c.usage}`, '', c.summary, '', 'Settings (flag / env var / default):'];
  for (const s of describeSettings()) {
    lines.push(`  --${s.path}  ${s.env}  [${JSON.stringify(s.default)}]`, `      ${s.doc}`);
  }
  return lines.join('\n');
}
