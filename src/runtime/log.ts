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
 *
 * Nothing logged may be lost at exit, process.exit() included: log.file is opened before the
 * logger exists (a file that cannot be opened stops start-up) and each batch is written to it
 * synchronously, so the exit hook's last batch is on disk before the process ends. stdout, a file
 * or pipe, is written synchronously by Node on Linux already.
 */
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { ConfigError } from '../config/load.js';

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

/** Where batches go. */
export interface LogSink {
  /** Writes or queues the text; throws when it cannot (a full disk): the batch is then counted as dropped. */
  write(text: string): void;
  /** Bytes taken but not yet written (a stalled pipe reader). */
  backlog(): number;
}

/** log.file, opened now; every batch written before write() returns. */
export function fileSink(file: string): LogSink {
  let fd: number;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fd = fs.openSync(file, 'a');
  } catch (err) {
    throw new ConfigError(`log.file: cannot open ${file} for writing: ${(err as Error).message}`);
  }
  return {
    write(text) {
      const bytes = Buffer.from(text);
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done);
    },
    backlog: () => 0,
  };
}

function streamSink(out: NodeJS.WritableStream & { writableLength: number }): LogSink {
  out.on('error', () => {
    /* a closed log pipe must not take the service down */
  });
  return { write: (text) => void out.write(text), backlog: () => out.writableLength };
}

export class BatchedDestination {
  private lines: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private dropped = 0;

  constructor(private readonly out: LogSink) {
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

  /** Hands everything pending to the sink now; pino's logger.flush(cb) calls it. */
  flush(done?: (err?: Error) => void): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.lines.length > 0) this.writeBatch();
    done?.();
  }

  flushSync(): void {
    this.flush();
  }

  private writeBatch(): void {
    const batch = this.lines.join('');
    const lines = this.lines.length;
    this.lines = [];
    this.pendingBytes = 0;
    if (this.out.backlog() > MAX_BUFFERED_BYTES) {
      this.dropped += lines;
      return;
    }
    const report = this.dropped === 0 ? '' : `${JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, dropped: this.dropped, msg: 'log lines dropped: the log could not be written (a slow reader or a full disk)' })}\n`;
    try {
      this.out.write(report + batch);
      this.dropped = 0;
    } catch {
      // A full or failing disk must not take mail down with it; counted, reported when it writes again.
      this.dropped += lines;
    }
  }
}

/** Throws ConfigError when log.file cannot be opened for writing. */
export function createLogger(opts: LogOptions): Logger {
  const base = { level: opts.level, base: { pid: process.pid } };
  if (opts.file) return pino(base, new BatchedDestination(fileSink(opts.file)));
  if (opts.stdoutIsProtocol) return pino({ ...base, level: 'silent' });
  return pino(base, new BatchedDestination(streamSink(process.stdout)));
}
