// Test helper: a tiny SMTP client of our own (node:net) for asserting what an MTA answers at
// MAIL / RCPT / DATA. No swaks needed. `sendEnvelope()` runs one whole transaction;
// `SmtpConnection` is the lower-level piece for tests that need other command sequences.
import { connect, type Socket } from 'node:net';

export interface Reply {
  /** The 3-digit reply code, e.g. 452. */
  code: number;
  /**
   * Reply text after the code (including any enhanced status code such as `4.2.2`);
   * the lines of a multi-line reply are joined with `\n`.
   */
  text: string;
  /** Milliseconds from sending the command (or connecting, for the greeting) to the full reply. */
  ms: number;
}

export interface SendEnvelopeOptions {
  port: number;
  host?: string;
  /** Envelope sender, without angle brackets ('' for the null sender). */
  from: string;
  /** Extra MAIL FROM parameters, e.g. `SIZE=1234` or `SIZE=1234 BODY=8BITMIME`. */
  mailArgs?: string;
  /** Envelope recipients, without angle brackets. */
  rcpts: string[];
  /** If given, send DATA with this message (line endings normalised to CRLF, dot-stuffed). */
  data?: string;
  /** EHLO name (default `client.example.org`). */
  ehlo?: string;
  /** Deadline for the whole session (default 15000 ms). */
  timeoutMs?: number;
}

export interface EnvelopeResult {
  greeting: string;
  ehlo: Reply;
  mail: Reply;
  /**
   * One reply per recipient, in order. Shorter than `rcpts` only when the server ended the
   * session early (a 421 reply); RCPT is not sent at all when MAIL FROM was refused.
   */
  rcpt: Reply[];
  /** The reply after the message body (or to DATA itself when DATA was refused). */
  data?: Reply;
  /** Whole session, connect to QUIT reply. */
  elapsedMs: number;
  /** `S: ` / `C: ` lines of the whole conversation (message body elided). */
  transcript: string;
}

export class SmtpError extends Error {
  constructor(
    message: string,
    readonly transcript: string,
  ) {
    super(`${message}\n--- SMTP transcript ---\n${transcript || '(empty)'}`);
    this.name = 'SmtpError';
  }
}

/** A line-oriented SMTP client connection with a session-wide deadline. */
export class SmtpConnection {
  private readonly socket: Socket;
  private buffer = '';
  private pendingLines: string[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private failure: Error | undefined;
  private readonly lines: string[] = [];
  private readonly deadline: NodeJS.Timeout;
  private readonly started = Date.now();

  private constructor(
    socket: Socket,
    readonly host: string,
    readonly port: number,
    timeoutMs: number,
  ) {
    this.socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).replace(/\r$/, '');
        this.buffer = this.buffer.slice(nl + 1);
        this.lines.push(`S: ${line}`);
        this.pendingLines.push(line);
      }
      this.wake();
    });
    socket.on('error', (err) => {
      this.failure ??= err;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    this.deadline = setTimeout(() => {
      this.failure ??= new Error(`timed out after ${timeoutMs} ms`);
      socket.destroy();
      this.wake();
    }, timeoutMs);
  }

  /** Connect and wait for the TCP connection (not the greeting: call `readReply()` for that). */
  static open(port: number, host = '127.0.0.1', timeoutMs = 15000): Promise<SmtpConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host });
      const conn = new SmtpConnection(socket, host, port, timeoutMs);
      const onError = (err: Error): void => {
        conn.dispose();
        reject(new SmtpError(`SMTP connect to ${host}:${port} failed: ${err.message}`, conn.transcript));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(conn);
      });
    });
  }

  get transcript(): string {
    return this.lines.join('\n');
  }

  get elapsedMs(): number {
    return Date.now() - this.started;
  }

  /** Send raw text (no CRLF added). `display` replaces it in the transcript. */
  write(text: string, display?: string): void {
    if (this.closed) throw new SmtpError(`SMTP connection to ${this.host}:${this.port} is closed`, this.transcript);
    this.lines.push(`C: ${display ?? text.replace(/\r\n$/, '')}`);
    this.socket.write(text);
  }

  /** Read one complete (possibly multi-line) reply. */
  async readReply(what = 'reply', since = Date.now()): Promise<Reply> {
    const texts: string[] = [];
    for (;;) {
      const line = this.pendingLines.shift();
      if (line === undefined) {
        if (this.failure || this.closed) {
          const why = this.failure ? this.failure.message : 'connection closed by server';
          throw new SmtpError(`SMTP ${this.host}:${this.port}: ${why} while waiting for ${what}`, this.transcript);
        }
        await new Promise<void>((resolve) => (this.waiter = resolve));
        continue;
      }
      const m = /^(\d{3})([ -]?)(.*)$/.exec(line);
      if (!m) throw new SmtpError(`SMTP ${this.host}:${this.port}: malformed reply line ${JSON.stringify(line)}`, this.transcript);
      texts.push(m[3] ?? '');
      if (m[2] !== '-') return { code: Number(m[1]), text: texts.join('\n'), ms: Date.now() - since };
    }
  }

  /** Send one command line and read its reply. */
  async command(line: string): Promise<Reply> {
    const since = Date.now();
    this.write(`${line}\r\n`);
    return this.readReply(`the reply to ${JSON.stringify(line)}`, since);
  }

  /** Send a message body (after a 354): CRLF line endings, dot-stuffing, final `.`. */
  async sendBody(data: string): Promise<Reply> {
    const since = Date.now();
    let body = data.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..');
    if (!body.endsWith('\r\n')) body += '\r\n';
    this.write(`${body}.\r\n`, `<${Buffer.byteLength(body)} bytes of message>\nC: .`);
    return this.readReply('the reply to the end of DATA', since);
  }

  /** QUIT politely (best effort), then close the socket. */
  async quit(): Promise<Reply | undefined> {
    let reply: Reply | undefined;
    if (!this.closed && !this.failure) {
      try {
        reply = await this.command('QUIT');
      } catch {
        /* the server may close first; that is fine */
      }
    }
    this.dispose();
    return reply;
  }

  /** Tear down the socket and the deadline timer without QUIT. */
  dispose(): void {
    clearTimeout(this.deadline);
    this.socket.destroy();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}

/**
 * One SMTP transaction: greeting, EHLO, MAIL FROM, one RCPT TO per recipient, optionally DATA,
 * then QUIT. Refusals are returned, not thrown; connection problems and timeouts throw an
 * `SmtpError` whose message includes the transcript.
 */
export async function sendEnvelope(opts: SendEnvelopeOptions): Promise<EnvelopeResult> {
  const host = opts.host ?? '127.0.0.1';
  const started = Date.now();
  const conn = await SmtpConnection.open(opts.port, host, opts.timeoutMs ?? 15000);
  try {
    const greetingReply = await conn.readReply('the greeting', started);
    const greeting = `${greetingReply.code} ${greetingReply.text}`;
    if (greetingReply.code !== 220) throw new SmtpError(`SMTP ${host}:${opts.port}: unexpected greeting`, conn.transcript);
    const ehlo = await conn.command(`EHLO ${opts.ehlo ?? 'client.example.org'}`);
    if (ehlo.code !== 250) throw new SmtpError(`SMTP ${host}:${opts.port}: EHLO refused`, conn.transcript);

    const done = (rest: Partial<EnvelopeResult> & { mail: Reply; rcpt: Reply[] }, quit: boolean) =>
      (quit ? conn.quit() : Promise.resolve(conn.dispose())).then(() => ({
        greeting,
        ehlo,
        ...rest,
        elapsedMs: Date.now() - started,
        transcript: conn.transcript,
      }));

    const mail = await conn.command(`MAIL FROM:<${opts.from}>${opts.mailArgs ? ` ${opts.mailArgs}` : ''}`);
    const rcpt: Reply[] = [];
    if (mail.code === 421) return await done({ mail, rcpt }, false);
    if (mail.code !== 250) return await done({ mail, rcpt }, true);

    for (const r of opts.rcpts) {
      const reply = await conn.command(`RCPT TO:<${r}>`);
      rcpt.push(reply);
      if (reply.code === 421) return await done({ mail, rcpt }, false);
    }

    let data: Reply | undefined;
    if (opts.data !== undefined) {
      data = await conn.command('DATA');
      if (data.code === 354) data = await conn.sendBody(opts.data);
      if (data.code === 421) return await done({ mail, rcpt, data }, false);
    }
    return await done(data ? { mail, rcpt, data } : { mail, rcpt }, true);
  } catch (err) {
    conn.dispose();
    throw err;
  }
}

/** A minimal RFC 5322 message for `sendEnvelope({ data })`. */
export function simpleMessage(from: string, to: string, subject = 'test', body = 'Hello.'): string {
  return [`From: <${from}>`, `To: <${to}>`, `Subject: ${subject}`, `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@client.example.org>`, `Date: ${new Date().toUTCString()}`, '', body, ''].join('\r\n');
}
