/*
 * pino, configured once. JSON lines to stdout by default, or to log.file; or (log.format text)
 * one line per event in the style of Postfix's own mail log, for sites whose logs go to syslog
 * `mail` beside Postfix's (text.ts).
 *
 * In spawn (--stdio) mode stdout carries the policy protocol and stderr goes to the SMTP client's
 * smtpd: logs then go to log.file or nowhere. Never log to stderr from a face.
 *
 * Lines are batched: they go out in one write FLUSH_AFTER_MS after the first of them, or once
 * FLUSH_AT_BYTES are pending, and at exit. Hand-written rather than pino's own pino.destination
 * (sonic-boom), measured with a decision line of ~400 bytes written 500,000 times to /dev/null,
 * a turn every 1,000: here 0.37-0.55 µs a line; sonic-boom 4.2.1 asynchronous 3.2-4.2 µs at
 * minLength 4096 and 16-31 µs at 64 KiB (it measures its whole pending buffer on every write).
 * At low rates batching saves a write(2) and an event-loop turn per request (~9 µs of CPU of ~50,
 * one policy client asking in turn). log.file is reopened on SIGUSR1 (reopenLogs(): logrotate's
 * postrotate), as sonic-boom's reopen() would. A stalled reader (a full pipe) must not stall mail:
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
import { textLineOf } from './text.js';

export interface LogOptions {
  level: string;
  file: string;
  /** stdout is a protocol channel: never write logs to it. */
  stdoutIsProtocol: boolean;
  /** json (pino's lines, the default) or text (Postfix's mail log style, text.ts). */
  format?: 'json' | 'text';
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
  /** Opens the file again by its name (it was rotated); absent for stdout. */
  reopen?(): void;
}

/** log.file, opened now; every batch written before write() returns. */
export function fileSink(file: string): LogSink {
  const open = () => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    return fs.openSync(file, 'a');
  };
  let fd: number;
  try {
    fd = open();
  } catch (err) {
    throw new ConfigError(`log.file: cannot open ${file} for writing: ${(err as Error).message}`);
  }
  return {
    write(text) {
      const bytes = Buffer.from(text);
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done);
    },
    backlog: () => 0,
    reopen() {
      // The old file (renamed by logrotate) keeps every line written so far; new ones go to the new
      // file. Cannot open it: go on writing to the old one rather than lose lines.
      let next: number;
      try {
        next = open();
      } catch {
        return;
      }
      fs.closeSync(fd);
      fd = next;
    },
  };
}

function streamSink(out: NodeJS.WritableStream & { writableLength: number }): LogSink {
  out.on('error', () => {
    /* a closed log pipe must not take the service down */
  });
  return { write: (text) => void out.write(text), backlog: () => out.writableLength };
}

/** Every batched destination of this process, for reopenLogs(). */
const destinations = new Set<BatchedDestination>();

/** SIGUSR1: what is pending goes to the old file, then log.file is opened again by its name. */
export function reopenLogs(): void {
  for (const d of destinations) d.reopen();
}

export class BatchedDestination {
  private lines: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private dropped = 0;

  /** @param convert a line as pino wrote it -> the line to write (log.format text), or none. */
  constructor(
    private readonly out: LogSink,
    private readonly convert: ((line: string) => string) | null = null,
  ) {
    // Whatever way the process ends (process.exit included), pending lines go out first.
    process.once('exit', () => this.flush());
    destinations.add(this);
  }

  reopen(): void {
    this.flush();
    this.out.reopen?.();
  }

  write(line: string): boolean {
    if (this.convert !== null) line = this.convert(line);
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
  if (!opts.file && opts.stdoutIsProtocol) return pino({ ...base, level: 'silent' });
  // In a file each text line carries its time and host, as Postfix's maillog_file writes them;
  // on stdout syslog or the journal adds them.
  const convert = opts.format === 'text' ? textLineOf(opts.file !== '') : null;
  const sink = opts.file ? fileSink(opts.file) : streamSink(process.stdout);
  return pino(base, new BatchedDestination(sink, convert));
}
