/*
 * pino, configured once. JSON lines to stdout by default, or to log.file; or (log.format text)
 * one line per event in the style of Postfix's own mail log, for sites whose logs go to syslog
 * `mail` beside Postfix's (text.ts).
 *
 * In spawn (--stdio) mode stdout carries the policy protocol and stderr goes to the SMTP client's
 * smtpd: logs then go to log.file or nowhere. Never log to stderr from a face.
 *
 * Lines are batched: they go out in one write FLUSH_AFTER_MS after the first of them, when the
 * next line might not fit in the batch's FLUSH_AT_BYTES, and at exit (a line that alone might not
 * fit goes out on its own). Hand-written rather than pino's own pino.destination (sonic-boom),
 * measured with a decision line of ~400 bytes written 500,000 times to /dev/null, a turn every
 * 1,000 (lines then joined as strings; since encoded as they come, see BatchedDestination):
 * here 0.37-0.55 µs a line; sonic-boom 4.2.1 asynchronous 3.2-4.2 µs at
 * minLength 4096 and 16-31 µs at 64 KiB (it measures its whole pending buffer on every write).
 * At low rates batching saves a write(2) and an event-loop turn per request (~9 µs of CPU of ~50,
 * one policy client asking in turn). log.file is reopened on SIGUSR1 (reopenLogs(): logrotate's
 * postrotate), as sonic-boom's reopen() would. A stalled reader (a full pipe) or a hung disk must
 * not stall mail: log.file is written in Node's thread pool (fileSink), and past MAX_BUFFERED_BYTES
 * waiting lines are dropped, counted, and the count logged (in log.format) once it writes again.
 *
 * Nothing logged may be lost at exit, process.exit() included: log.file is opened before the
 * logger exists (a file that cannot be opened stops start-up), and the exit hook writes what is
 * still queued synchronously. stdout, a file or pipe, is written synchronously by Node on Linux.
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
/** Chunks (batches) in one writev(2) of log.file: Linux's IOV_MAX. */
const MAX_CHUNKS_A_WRITE = 1024;

/** Where batches go. */
export interface LogSink {
  /** Writes or queues the bytes (`lines`: how many it stands for); throws when it cannot (a full disk): they are then counted as dropped. */
  write(bytes: Buffer, lines: number): void;
  /** Bytes taken but not yet written (a stalled pipe reader, a hung disk). */
  backlog(): number;
  /** Lines taken and then not written (a queued write failed) since last asked; absent: it throws instead. */
  lost?(): number;
  /** At exit: what is queued, written before the process ends. */
  flushSync?(): void;
  /** Opens the file again by its name (it was rotated); absent for stdout. */
  reopen?(): void;
}

/** A batch queued for log.file, and the file it goes to (after a reopen, the old one until written). */
interface Chunk {
  bytes: Buffer;
  lines: number;
  fd: number;
}

/**
 * log.file, opened now. Batches are written in Node's thread pool, one write at a time and in
 * order: a disk that hangs (a hard NFS mount, a FIFO nobody reads) holds one pool thread, never the
 * event loop, and what waits counts in backlog() against MAX_BUFFERED_BYTES like a stalled pipe.
 * Also cheaper on the loop: 500,000 decision lines, a turn every 1,000, cost 0.26-0.56 us a line
 * against 0.69-0.77 us written with writeSync (same machine, load 9-10). The price: a burst faster
 * than the disk takes it is dropped past the cap instead of slowing mail down (those 210 MB in
 * ~0.15 s, ~1.4 GB/s: 2 runs of 8 lost 20-32% of the lines, and said so; 50,000 decisions a
 * second, each logged, are ~20 MB/s). At exit the queue is written synchronously (flushSync); the
 * write already in the pool is finished by Node before the process ends (libuv drains its queue:
 * checked with a 64 MiB write and process.exit()), so nothing is lost, but that write may land
 * after the last lines.
 */
export function fileSink(file: string): LogSink {
  const open = () => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // O_NONBLOCK: a FIFO whose reader stalls gives EAGAIN (tried again later) instead of holding
    // a thread for good, or the whole process at exit (flushSync). No effect on a regular file.
    const { O_WRONLY, O_RDWR, O_CREAT, O_APPEND, O_NONBLOCK } = fs.constants;
    try {
      return fs.openSync(file, O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, 0o666);
    } catch (err) {
      // ENXIO: a FIFO nobody reads yet. Opened read-write, as daemons do, it never blocks and a
      // reader may come later (lines wait in the pipe, then in the backlog, within its cap).
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
      return fs.openSync(file, O_RDWR | O_APPEND | O_NONBLOCK);
    }
  };
  let fd: number;
  try {
    fd = open();
  } catch (err) {
    throw new ConfigError(`log.file: cannot open ${file} for writing: ${(err as Error).message}`);
  }
  const queue: Chunk[] = [];
  let waiting = 0;
  /** How many chunks at the head of the queue are in the thread pool now (0: none). */
  let inFlight = 0;
  let lost = 0;
  /** Set while a pipe said EAGAIN: nothing is written until it fires. */
  let retrying: NodeJS.Timeout | null = null;
  /** A file left by reopen() is closed once nothing queued still goes to it. */
  const closeIfLeft = (old: number) => {
    if (old !== fd && !queue.some((c) => c.fd === old)) fs.close(old, () => {});
  };
  /*
   * Everything queued for one file goes in one writev(2): one chunk a turn could not keep up with
   * a burst (measured: 500,000 lines at full speed lost three quarters of them past the cap).
   */
  const writeNext = (): void => {
    const target = queue[0]?.fd;
    if (target === undefined) return;
    let n = 0;
    while (n < queue.length && n < MAX_CHUNKS_A_WRITE && queue[n]!.fd === target) n++;
    inFlight = n;
    fs.writev(target, queue.slice(0, n).map((c) => c.bytes), (err, written) => {
      inFlight = 0;
      if (err?.code === 'EAGAIN') {
        // A pipe whose reader is behind: the same chunks again a little later (the cap still holds).
        retrying = setTimeout(() => {
          retrying = null;
          writeNext();
        }, FLUSH_AFTER_MS).unref();
        return;
      }
      if (err) {
        // A full or failing disk must not take mail down with it: counted, reported when it writes again.
        for (const c of queue.splice(0, n)) {
          lost += c.lines;
          waiting -= c.bytes.length;
        }
      } else {
        waiting -= written;
        // The chunks written whole go; one written in part keeps its rest.
        for (let left = written; left > 0; ) {
          const head = queue[0]!;
          if (left < head.bytes.length) {
            head.bytes = head.bytes.subarray(left);
            break;
          }
          left -= head.bytes.length;
          queue.shift();
        }
      }
      closeIfLeft(target);
      writeNext();
    });
  };
  return {
    write(bytes, lines) {
      if (bytes.length === 0) return;
      queue.push({ bytes, lines, fd });
      waiting += bytes.length;
      if (inFlight === 0 && retrying === null) writeNext();
    },
    backlog: () => waiting,
    lost() {
      const n = lost;
      lost = 0;
      return n;
    },
    flushSync() {
      for (const chunk of queue.splice(inFlight)) {
        try {
          for (let done = 0; done < chunk.bytes.length; ) done += fs.writeSync(chunk.fd, chunk.bytes, done);
        } catch {
          // EAGAIN (a stalled reader) or a failing disk: at exit no one is left to tell, and
          // waiting would hold the exit for good.
          return;
        }
      }
    },
    reopen() {
      // The old file (renamed by logrotate) gets every line taken so far; new ones go to the new
      // file. Cannot open it: go on writing to the old one rather than lose lines.
      let next: number;
      try {
        next = open();
      } catch {
        return;
      }
      const old = fd;
      fd = next;
      closeIfLeft(old);
    },
  };
}

function streamSink(out: NodeJS.WritableStream & { writableLength: number }): LogSink {
  out.on('error', () => {
    /* a closed log pipe must not take the service down */
  });
  return { write: (bytes) => void out.write(bytes), backlog: () => out.writableLength };
}

/** Every batched destination of this process, for reopenLogs(). */
const destinations = new Set<BatchedDestination>();

/** SIGUSR1: what is pending goes to the old file, then log.file is opened again by its name. */
export function reopenLogs(): void {
  for (const d of destinations) d.reopen();
}

export class BatchedDestination {
  /*
   * The batch is encoded as lines come, into one reused buffer (outside V8's heap): a line kept
   * as a string until its batch went out survived the young generation's collections, which then
   * copied it, every time. Measured on the policy bench's requests at the defaults (a line for each
   * of the 23% refused; 2026-12-01, Node 20): in one process 2.3 -> 2.1 us a request, and with the
   * package's node flags (--optimize-for-size: a young generation of ~1 MB, collected every 1-2 ms)
   * 4.6 -> 3.0 us, collections having taken 43% of it; a frontend with those flags went from 0.46x
   * to 0.60x the fixed server's requests/s (BENCHMARKS.md, policy).
   */
  private batch: Buffer | null = null;
  private used = 0;
  private lines = 0;
  private timer: NodeJS.Timeout | null = null;
  private dropped = 0;

  /** @param convert a line as pino wrote it -> the line to write (log.format text), or none. */
  constructor(
    private readonly out: LogSink,
    private readonly convert: ((line: string) => string) | null = null,
  ) {
    // Whatever way the process ends (process.exit included), pending lines go out first.
    process.once('exit', () => this.flushSync());
    destinations.add(this);
  }

  reopen(): void {
    this.flush();
    this.out.reopen?.();
  }

  write(line: string): boolean {
    if (this.convert !== null) line = this.convert(line);
    // At most 3 bytes a UTF-16 unit in UTF-8: a line that may not fit sends the batch first.
    if (this.used + 3 * line.length > FLUSH_AT_BYTES) {
      this.flush();
      if (3 * line.length > FLUSH_AT_BYTES) {
        this.send(Buffer.from(line), 1);
        return true;
      }
    }
    this.batch ??= Buffer.allocUnsafeSlow(FLUSH_AT_BYTES);
    this.used += this.batch.write(line, this.used);
    this.lines++;
    if (this.timer === null) {
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
    if (this.lines > 0) {
      // A copy of just the lines: the sink may hold it a while (a stalled reader), the batch buffer is reused.
      const [bytes, lines] = [Buffer.from(this.batch!.subarray(0, this.used)), this.lines];
      this.used = 0;
      this.lines = 0;
      this.send(bytes, lines);
    }
    done?.();
  }

  /** At exit: everything pending, and what the sink still has queued, written before the process ends. */
  flushSync(): void {
    this.flush();
    this.out.flushSync?.();
  }

  private send(batch: Buffer, lines: number): void {
    this.dropped += this.out.lost?.() ?? 0;
    if (this.out.backlog() > MAX_BUFFERED_BYTES) {
      this.dropped += lines;
      return;
    }
    const bytes = this.dropped === 0 ? batch : Buffer.concat([Buffer.from(this.droppedNotice()), batch]);
    try {
      // Should this write fail later (a queued one), the lines reported as dropped are counted again.
      this.out.write(bytes, lines + this.dropped);
      this.dropped = 0;
    } catch {
      // A full or failing disk must not take mail down with it; counted, reported when it writes again.
      this.dropped += lines;
    }
  }

  /** How many lines were lost, as a warning line in the configured format (json or text). */
  private droppedNotice(): string {
    const json = `${JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, dropped: this.dropped, msg: 'log lines dropped: the log could not be written (a slow reader or a full disk)' })}\n`;
    return this.convert === null ? json : this.convert(json);
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
