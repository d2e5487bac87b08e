/*
 * The per-user limits file: one mailbox per line, for stores (mbox, Maildir without a limits
 * line) that do not record their own quota.
 *
 *     # user        size   [messages]
 *     alice         200M
 *     bob@example   1G     5000
 *     carol         -              # unlimited
 *
 * Sizes are binary (1M = 1048576); "0" or "-" means unlimited. Integers only: "1.5G" is refused
 * rather than rounded, so the operator sees exactly what is enforced.
 *
 * This module must never half-apply a file: a file with a bad line changes nothing, and each bad
 * line is reported as `file:line: reason: text` so the operator can fix it.
 */

import type { Logger } from 'pino';
import { readFile } from 'node:fs/promises';
import { parseBytes } from '../config/formats.js';

/** A limit for one mailbox; null means unlimited. */
export interface UserLimit {
  bytes: number | null;
  messages: number | null;
}

export interface LimitsLineError {
  line: number;
  text: string;
  reason: string;
}

/* A limits file is hand-written; anything this large is a mistake (a mailbox dump, a log). */
export const MAX_LIMITS_FILE_BYTES = 16 * 1024 * 1024;
/* Shown in error messages; a longer bad line is cut so the message stays one readable line. */
const MAX_ERROR_TEXT = 120;


function parseMessages(text: string): number | null | undefined {
  if (text === '-') return null;
  if (!/^\d{1,15}$/.test(text)) return undefined;
  const n = Number(text);
  return n === 0 ? null : n;
}

export interface ParsedLimits {
  limits: Map<string, UserLimit>;
  errors: LimitsLineError[];
}

/** Parses the text of a limits file; never throws on content. */
export function parseLimits(text: string): ParsedLimits {
  const limits = new Map<string, UserLimit>();
  const firstSeen = new Map<string, number>();
  const errors: LimitsLineError[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const lineNo = i + 1;
    const hash = raw.indexOf('#');
    const content = (hash === -1 ? raw : raw.slice(0, hash)).trim();
    if (content.length === 0) return;
    const fail = (reason: string) => errors.push({ line: lineNo, text: raw.slice(0, MAX_ERROR_TEXT), reason });
    const fields = content.split(/\s+/);
    if (fields.length < 2) return fail('expected "<user> <size> [<messages>]"');
    if (fields.length > 3) return fail('too many fields, expected "<user> <size> [<messages>]"');
    const [user, sizeText, messagesText] = fields as [string, string, string | undefined];
    let bytes: number | null;
    if (sizeText === '-') bytes = null;
    else {
      const parsed = parseBytes(sizeText);
      if (parsed === null) return fail(`bad size "${sizeText}" (integer with optional K, M, G or T; 0 or - for unlimited)`);
      bytes = parsed === 0 ? null : parsed;
    }
    let messages: number | null = null;
    if (messagesText !== undefined) {
      const parsed = parseMessages(messagesText);
      if (parsed === undefined) return fail(`bad message count "${messagesText}" (integer; 0 or - for unlimited)`);
      messages = parsed;
    }
    const earlier = firstSeen.get(user);
    // Two lines for one user: whichever we picked, the operator meant the other one somewhere.
    if (earlier !== undefined) return fail(`duplicate user "${user}" (first at line ${earlier})`);
    firstSeen.set(user, lineNo);
    limits.set(user, { bytes, messages });
  });
  return { limits, errors };
}

/** A limits file on disk: load once, reload on SIGHUP, answer per-user limits. */
export class LimitsFile {
  private table = new Map<string, UserLimit>();
  private filePath: string | null = null;
  /** Bad lines from the last load or reload; empty when the last one succeeded. */
  errors: LimitsLineError[] = [];

  get path(): string | null {
    return this.filePath;
  }

  get size(): number {
    return this.table.size;
  }

  /**
   * Reads `path`. On bad lines the current table is kept and the errors are returned (and kept
   * in `errors`); a start-up caller should refuse to run. An unreadable file throws.
   */
  async load(path: string): Promise<LimitsLineError[]> {
    this.filePath = path;
    const buf = await readFile(path);
    if (buf.length > MAX_LIMITS_FILE_BYTES) {
      this.errors = [{ line: 0, text: '', reason: `file is larger than ${MAX_LIMITS_FILE_BYTES} bytes` }];
      return this.errors;
    }
    const { limits, errors } = parseLimits(buf.toString('utf8'));
    this.errors = errors;
    if (errors.length === 0) this.table = limits;
    return errors;
  }

  /** Reads the same file again; same rules as load(). */
  async reload(): Promise<LimitsLineError[]> {
    if (this.filePath === null) throw new Error('LimitsFile.reload() before load()');
    return this.load(this.filePath);
  }

  /** The limit for this exact key, or undefined when the file does not name it. */
  limitFor(user: string): UserLimit | undefined {
    return this.table.get(user);
  }

  /** One message per bad line: `file:line: reason: text`. */
  describeErrors(): string[] {
    return this.errors.map((e) => `${this.filePath ?? '(limits)'}:${e.line}: ${e.reason}${e.text ? `: ${e.text}` : ''}`);
  }
}

/** The limit a store applies when the mailbox itself records none: the file's entry, else the default. */
export function limitFromFile(limits: LimitsFile | undefined, user: string, defaultLimitBytes: number | null): UserLimit {
  return limits?.limitFor(user) ?? { bytes: defaultLimitBytes, messages: null };
}

/** SIGHUP: re-reads a limits file and says how it went; a file with bad lines keeps the previous limits. */
export async function reloadLimits(limits: LimitsFile, logger: Logger): Promise<boolean> {
  try {
    const errors = await limits.reload();
    if (errors.length === 0) logger.info({ file: limits.path, users: limits.size }, 'limits file reloaded');
    else logger.error({ file: limits.path, errors: limits.describeErrors() }, 'limits file not reloaded: the previous limits stay in use');
    return errors.length === 0;
  } catch (err) {
    logger.error({ file: limits.path, error: (err as Error).message }, 'limits file not reloaded: the previous limits stay in use');
    return false;
  }
}
