/*
 * pino, configured once. JSON lines to stdout by default, or to log.file.
 *
 * In spawn (--stdio) mode stdout carries the policy protocol and stderr goes to the SMTP client's
 * smtpd: logs then go to log.file or nowhere. Never log to stderr from a face.
 *
 * Lines are batched: they go out in one write FLUSH_AFTER_MS after the first of them, or once
 * FLUSH_AT_BYTES are pending, and at exit. At a decision line per request this halves the cost of
 * logging at high rates (sonic-boom measured the whole pending buffer on every line), and at low
 * rates saves a write(2) and an event-loop turn per request (measured: ~9 µs of CPU of ~50 per
 * request, one policy client asking in turn). A stalled reader (a full pipe) must not stall mail:
 * past MAX_BUFFERED_BYTES lines are dropped, counted, and the count logged once the reader is back.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export interface LogOptions {
  level: string;
  file: string;
  /** stdout is a protocol channel: never write logs to it. */
  stdoutIsProtocol: boolean;
}

const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/** Longest a line waits for its batch: `tail -f` shows it this late at most. */
export const FLUSH_AFTER_MS = 50;
const FLUSH_AT_BYTES = 64 * 1024;

export class BatchedDestination {
  private lines: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private dropped = 0;

  constructor(private readonly out: Writable) {
    out.on('error', () => {
      /* a closed log pipe must not take the service down */
    });
    // Whatever way the process ends (process.exit included), pending lines go out first.
    process.once('exit', () => this.flush());
  }

  write(line: string): boolean {
    this.lines.push(line);
    this.pendingBytes += line.length;
    if (this.pendingBytes >= FLUSH_AT_BYTES) this.flush();
    else if (this.timer === null) {
      // Unref'd: pending lines never keep a finished process alive (the exit hook writes them).
      this.timer = setTimeout(() => this.flush(), FLUSH_AFTER_MS);
      this.timer.unref();
    }
    return true;
  }

  /** Hands everything pending to the stream now (at exit: the stream writes it before the process ends). */
  flush(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.lines.length === 0) return;
    const batch = this.lines.join('');
    this.lines = [];
    this.pendingBytes = 0;
    if (this.out.writableLength > MAX_BUFFERED_BYTES) {
      this.dropped += batch.split('\n').length - 1;
      return;
    }
    if (this.dropped > 0) {
      this.out.write(`${JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, dropped: this.dropped, msg: 'log lines dropped: the log reader was too slow' })}\n`);
      this.dropped = 0;
    }
    this.out.write(batch);
  }

  flushSync(): void {
    this.flush();
  }
}

export function createLogger(opts: LogOptions): Logger {
  const base = { level: opts.level, base: { pid: process.pid } };
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true });
    return pino(base, new BatchedDestination(fs.createWriteStream(opts.file, { flags: 'a' })));
  }
  if (opts.stdoutIsProtocol) return pino({ ...base, level: 'silent' });
  return pino(base, new BatchedDestination(process.stdout));
}
