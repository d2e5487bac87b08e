/*
 * pino, configured once. JSON lines to stdout by default, or to log.file.
 *
 * In spawn (--stdio) mode stdout carries the policy protocol and stderr goes to the SMTP client's
 * smtpd: logs then go to log.file or nowhere. Never log to stderr from a face.
 */
import pino, { type Logger } from 'pino';

export interface LogOptions {
  level: string;
  file: string;
  /** stdout is a protocol channel: never write logs to it. */
  stdoutIsProtocol: boolean;
}

export function createLogger(opts: LogOptions): Logger {
  const base = { level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (opts.file) return pino(base, pino.destination({ dest: opts.file, mkdir: true, sync: false }));
  if (opts.stdoutIsProtocol) return pino({ ...base, level: 'silent' });
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
