/*
 * A local mbox spool (`/var/mail/<user>`) as a quota source: usage is the size of the one file,
 * the limit comes from the limits file or the default (mbox records no quota of its own).
 *
 * Like the seed's quota.cgi, a missing mbox is an empty mailbox (the file is created at first
 * delivery), so mbox never answers "unknown" for a well-formed key whose file could exist.
 * It must never report the size of anything outside the root: keys go through the safety gate,
 * the path through resolveInside(), and the final stat does not follow a symlink.
 *
 * An mbox with more than one hard link is an error (on_error), not a figure: its size may be that
 * of a file outside the spool that the mailbox owner linked in. Postfix's local(8) will not deliver
 * to such a mailbox either (its safe_open() demands one link: "file has N hard links").
 */

import { checkMailboxTemplate, mailboxPathFor, resolveInside } from './paths.js';
import { limitFromFile, type LimitsFile } from './limits.js';
import { atLimit, checkPlausibleLimit, found, SourceError, type QuotaSource, type QuotaState } from '../quota.js';
import { ioError, throwIfAborted } from './errors.js';
import { storeRootProblem, threadPoolIo, type StoreIo } from './io.js';

export interface MboxStoreOptions {
  /** The spool directory, e.g. /var/mail. */
  root: string;
  /** Path of one mbox relative to root; placeholders {user} {local} {domain}. Default '{user}'. */
  mailbox?: string;
  /** Bytes; null: unlimited unless the limits file says otherwise. */
  defaultLimitBytes: number | null;
  limits?: LimitsFile;
  /** How each lookup's file-system calls are made (io.ts). Default: on the thread pool. */
  io?: StoreIo;
}

export class MboxStore implements QuotaSource {
  readonly name: string;
  private readonly root: string;
  private readonly template: string;
  private readonly defaultLimitBytes: number | null;
  private readonly limits: LimitsFile | undefined;
  private readonly io: StoreIo;

  constructor(options: MboxStoreOptions) {
    this.root = options.root;
    this.template = options.mailbox ?? '{user}';
    const bad = checkMailboxTemplate(this.template);
    if (bad) throw new Error(`mbox mailbox template "${this.template}": ${bad}`);
    this.defaultLimitBytes = options.defaultLimitBytes;
    this.limits = options.limits;
    this.io = options.io ?? threadPoolIo;
    this.name = `mbox:${options.root}`;
  }

  async lookup(key: string, signal: AbortSignal): Promise<QuotaState> {
    throwIfAborted(signal, 'mbox lookup');
    const relative = mailboxPathFor(this.template, key);
    if (relative === null) return { kind: 'unknown' };

    let file: string | null;
    try {
      file = await resolveInside(this.root, relative, this.io);
    } catch (err) {
      throw ioError(`cannot resolve the mbox under ${this.root}`, err);
    }
    throwIfAborted(signal, 'mbox lookup');
    // Outside the root (a symlink out, or a parent directory that leads elsewhere or is missing).
    if (file === null) return { kind: 'unknown' };

    let usageBytes: number;
    try {
      // lstat: if the name was swapped for a symlink since resolveInside(), do not follow it.
      const st = await this.io.lstat(file);
      if (st === null) usageBytes = 0;
      else if (st.isSymbolicLink()) return { kind: 'unknown' };
      else if (!st.isFile()) throw new SourceError('SOURCE_IO', `mbox for this user is not a regular file (check the mailbox template)`);
      else if (st.nlink > 1n) throw new SourceError('SOURCE_IO', `mbox for this user has ${st.nlink} hard links: its size may be another file's (Postfix refuses to deliver to it as well)`);
      else usageBytes = Number(st.size);
    } catch (err) {
      if (err instanceof SourceError) throw err;
      throw ioError('cannot stat the mbox', err);
    }
    throwIfAborted(signal, 'mbox lookup');

    // mbox has no cheap message count (it would mean reading the whole file), so a message
    // limit from the limits file cannot be enforced here and is not reported.
    const limit = limitFromFile(this.limits, key, this.defaultLimitBytes);
    checkPlausibleLimit(limit.bytes, 'the limits file or store.limit');
    return found(usageBytes, limit.bytes, {
      overQuota: atLimit(usageBytes, limit.bytes, null, null),
    });
  }

  health(): Promise<string | null> {
    return storeRootProblem(this.root);
  }

  async close(): Promise<void> {
    // Holds no descriptors between lookups.
  }
}


