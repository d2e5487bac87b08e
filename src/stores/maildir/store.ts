/*
 * Maildir++ mailboxes as a quota source: figures from `maildirsize`, recalculated by scanning
 * the mailbox when Courier's rules say the file cannot be trusted (README.maildirquota).
 *
 * Limits: the maildirsize limits line first, then the limits file, then the default.
 * A mailbox directory that does not exist is "unknown" (unlike mbox, Maildirs are created
 * with the account, so a missing one means no such user on this store).
 *
 * A mailbox without a usable maildirsize is scanned (at most `maxConcurrentScans` at once, the
 * others waiting for a slot within their caller's deadline: scan-slots.ts), and the scan's
 * per-directory counts are kept (scan-cache.ts, at most `scanCacheMailboxes` mailboxes): the
 * next lookup stats the mailbox's directories and reads only those whose mtime changed. A trusted
 * maildirsize is read every time (one small file) and never cached here: the delivery agent
 * appends to it.
 *
 * A maildirsize is usable only as a regular file with one link: delivery agents write it in tmp/
 * and rename it, so it never has two. A hard link to a file elsewhere (the mailbox owner can make
 * one) would report that file's figures; it is treated as missing and the mailbox recounted.
 * A failed rewrite is logged (at most once per WRITE_ERROR_LOG_INTERVAL_MS) and the answer stands.
 *
 * Ownership: Dovecot (and Courier's deliverquota) run as the mailbox's user and reopen maildirsize
 * read-write at every delivery; a file left owned by another user, or with another mode, would
 * cost them their quota file. So a recount is written back only when the new file keeps the old
 * one's owner, group and mode: when this process runs as root (and may chown) or as the file's
 * owner (and, for its group, a member of it). Otherwise it is not written at all (the packaged
 * quota service runs as `overquota`, without CAP_CHOWN): the answer comes from the recount, the
 * file is left to its owner, who recounts by the same Courier rules (Dovecot's quota-maildir does),
 * and that is logged once per store. A rename happens only after the temporary file has the right
 * owner; a chown that fails (no CAP_CHOWN, a seccomp filter) means no rewrite, never a foreign file.
 * Either way the next lookup's recount costs the stats of the mailbox's directories, not a rescan:
 * the scan cache keeps the counts of directories whose mtime did not change (scan-cache.ts).
 *
 * This module must never follow a symlink out of the root, never block the event loop for
 * long (directory reads on the thread pool, a turn every SCAN_SLICE_MS of scanning; the few
 * calls of each lookup are made as `io` says, io.ts), and never write
 * anything unless `writeMaildirsize` is set: a frontend reading a mail store over NFS must
 * not rewrite files it does not own. `maildirsize` is read in maildirsize.ts; scans are scan.ts's.
 * Over 300 lines: it is the one place that decides between the file and a scan, and writes the
 * result back; split, the safety rules above would be spread over files that each hold half.
 */

import type { Stats } from 'node:fs';
import type { Logger } from 'pino';
import { lstat, open, rename, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import {
  checkMailboxTemplate,
  isStrictlyInside,
  mailboxPathFor,
  resolveInside,
} from '../paths.js';
import { limitFromFile, type LimitsFile } from '../limits.js';
import {
  DEFAULT_TRASH_FOLDERS,
  parseMaildirsize,
  prefetchTargets,
  recalculationReason,
  scanMaildir,
  trashKeyOf,
  type MaildirScan,
  type PrefetchedStats,
  type MaildirSnapshot,
  type Maildirsize,
} from './scan.js';
import {
  DEFAULT_SCAN_CACHE_MAILBOXES,
  MaildirScanCache,
  RACY_MARGIN_MS,
  rootUnchanged,
  type DirectoryStamp,
  type StopFlag,
} from './scan-cache.js';
import { atLimit, checkPlausibleLimit, found, SourceError, type QuotaSource, type QuotaState } from '../../quota.js';
import { ioError, isMissing, throwIfAborted } from '../errors.js';
import { storeRootProblem, threadPoolIo, type StoreIo } from '../io.js';
import { DEFAULT_MAX_CONCURRENT_SCANS, ScanSlots } from './scan-slots.js';
import type { Timing } from '../../runtime/metrics.js';

export {
  DEFAULT_TRASH_FOLDERS,
  RACY_MARGIN_MS,
  RECALC_FILE_SIZE,
  RECALC_STALE_MS,
  SCAN_MAX_ATTEMPTS,
  SCAN_SLICE_MS,
  SCAN_YIELD_EVERY,
  parseMaildirsize,
  recalculationReason,
  scanMaildir,
  sizeFromFileName,
  type Maildirsize,
  type MaildirScan,
  type MaildirScanOptions,
  type MaildirSnapshot,
  type MaildirsizeFile,
} from './scan.js';
export { DEFAULT_SCAN_CACHE_MAILBOXES, MaildirScanCache } from './scan-cache.js';

/* Enough for the limits line and any file under the recalculation threshold; larger is rescanned anyway. */
const MAILDIRSIZE_READ_LIMIT = 64 * 1024;
/** At most one log line this often about failed rewrites: a mailbox whose rewrite fails fails at every recount. */
export const WRITE_ERROR_LOG_INTERVAL_MS = 60_000;

export interface MaildirStoreOptions {
  /** Directory under which every mailbox lives, e.g. /var/vmail. */
  root: string;
  /** Mailbox path relative to root, e.g. '{user}/Maildir' or '{domain}/{local}/Maildir'. */
  mailbox: string;
  /** Bytes; null: unlimited. Used when neither maildirsize nor the limits file names a limit. */
  defaultLimitBytes: number | null;
  limits?: LimitsFile;
  /** Folders left out of the count, with or without the leading dot. Default ['.Trash']. */
  trashFolders?: string[];
  /** Rewrite maildirsize after a recalculation, where its owner can be kept (see the header). Default false (read-only). */
  writeMaildirsize?: boolean;
  /** Mailboxes whose scan results are kept for the next lookup (least recently used out first, ~5 KB each); 0: none. Default 5,000. */
  scanCacheMailboxes?: number;
  /** How each lookup's file-system calls are made (io.ts). Default: on the thread pool. */
  io?: StoreIo;
  /** Scans running at once; more wait for a slot within their caller's deadline. Default 8. */
  maxConcurrentScans?: number;
  /** Where a failed maildirsize rewrite is reported. */
  logger?: Pick<Logger, 'warn'>;
  /** Each scan's duration, for the metrics (the quota service's). */
  scanTimes?: Timing;
}

/** What the scans of one store cost so far (for tests, benchmarks and diagnostics). */
export interface MaildirScanStats {
  /** Scans run (lookups that joined a running scan of the same mailbox not counted). */
  scans: number;
  /** `new/` and `cur/` directories read, and reused from the cache without reading. */
  directoriesRead: number;
  directoriesReused: number;
  /** Mailbox roots listed for their folders. */
  rootListings: number;
  /** Directory entries read. */
  entries: number;
}

interface Located {
  /** The Maildir root (real path). */
  dir: string;
  current: CurrentFile | null;
  /** Its stat, when taken on the way. */
  root?: DirectoryStamp;
  prefetched?: PrefetchedStats;
}

interface CurrentFile {
  parsed: Maildirsize;
  stats: Stats;
}

export class MaildirStore implements QuotaSource {
  readonly name: string;
  private readonly root: string;
  private readonly template: string;
  private readonly defaultLimitBytes: number | null;
  private readonly limits: LimitsFile | undefined;
  private readonly trashFolders: string[];
  private readonly writeMaildirsize: boolean;
  private readonly trashKey: string;
  private readonly scanCache: MaildirScanCache;
  private readonly io: StoreIo;
  private readonly scanSlots: ScanSlots;
  private readonly logger: Pick<Logger, 'warn'> | undefined;
  private readonly scanTimes: Timing | undefined;
  /** Failed rewrites since the last one logged, and when that was. */
  private readonly writeErrors = { loggedAtMs: -Infinity, unlogged: 0 };
  /** Whether "not written back: owned by another user" was logged (once per store). */
  private notOwnerLogged = false;
  /** Totals over every scan this store ran. */
  readonly scanStats: MaildirScanStats = { scans: 0, directoriesRead: 0, directoriesReused: 0, rootListings: 0, entries: 0 };
  /** The last failure to rewrite maildirsize (the answer was still given); for diagnostics. */
  lastWriteError: Error | null = null;

  constructor(options: MaildirStoreOptions) {
    this.root = options.root;
    this.template = options.mailbox;
    const bad = checkMailboxTemplate(this.template);
    if (bad) throw new Error(`maildir mailbox template "${this.template}": ${bad}`);
    this.defaultLimitBytes = options.defaultLimitBytes;
    this.limits = options.limits;
    this.trashFolders = options.trashFolders ?? [...DEFAULT_TRASH_FOLDERS];
    this.writeMaildirsize = options.writeMaildirsize ?? false;
    this.trashKey = trashKeyOf(this.trashFolders);
    this.scanCache = new MaildirScanCache(options.scanCacheMailboxes ?? DEFAULT_SCAN_CACHE_MAILBOXES);
    this.io = options.io ?? threadPoolIo;
    this.scanSlots = new ScanSlots(options.maxConcurrentScans ?? DEFAULT_MAX_CONCURRENT_SCANS);
    this.logger = options.logger;
    this.scanTimes = options.scanTimes;
    this.name = `maildir:${options.root}`;
  }

  async lookup(key: string, signal: AbortSignal): Promise<QuotaState> {
    throwIfAborted(signal, 'maildir lookup');
    const relative = mailboxPathFor(this.template, key);
    if (relative === null) return { kind: 'unknown' };

    const located = await this.locate(relative);
    throwIfAborted(signal, 'maildir lookup');
    if (located === null) return { kind: 'unknown' };
    const { dir, current, root, prefetched } = located;
    let usageBytes = current?.parsed.usageBytes ?? 0;
    let usageMessages = current?.parsed.usageMessages ?? 0;
    const reason = recalculationReason(
      current && { parsed: current.parsed, size: current.stats.size, mtimeMs: current.stats.mtimeMs },
      Date.now(),
    );
    if (reason !== null) {
      let scan;
      try {
        scan = await this.scanCache.shared(dir, this.trashKey, signal, (snapshot, stop) =>
          // After a wait for a slot, the stats taken on the way in are stale: the scan takes its own.
          this.scanSlots.run(stop, (waited) => this.scan(dir, snapshot, stop, waited ? undefined : root, waited ? undefined : prefetched)),
        );
      } catch (err) {
        if (err instanceof SourceError) throw err;
        throw ioError('cannot scan the Maildir', err);
      }
      usageBytes = scan.bytes;
      usageMessages = scan.messages;
      // Only a file that exists and names its limits is rewritten: creating one would freeze
      // today's limits-file value into the mailbox, where it would outrank later edits.
      if (this.writeMaildirsize && scan.stable && current?.parsed.limitsLine) {
        await this.rewrite(dir, current, scan.bytes, scan.messages);
      }
    }

    const own = current?.parsed;
    const limit = own?.limitsLine
      ? { bytes: own.limitBytes, messages: own.limitMessages }
      : limitFromFile(this.limits, key, this.defaultLimitBytes);
    checkPlausibleLimit(limit.bytes, own?.limitsLine ? 'maildirsize' : 'the limits file or store.limit');
    return found(usageBytes, limit.bytes, {
      usageMessages,
      limitMessages: limit.messages,
      overQuota: atLimit(usageBytes, limit.bytes, usageMessages, limit.messages),
    });
  }

  /** Mailboxes whose scan results are cached now. */
  get cachedMailboxes(): number {
    return this.scanCache.size;
  }

  /** Forgets every cached scan result (the next lookup of each mailbox reads all its directories). */
  forgetScans(): void {
    this.scanCache.clear();
  }

  health(): Promise<string | null> {
    return storeRootProblem(this.root);
  }

  async close(): Promise<void> {
    // Holds no descriptors between lookups.
    this.scanCache.clear();
  }

  private async scan(
    dir: string,
    snapshot: MaildirSnapshot,
    stop: StopFlag,
    root: DirectoryStamp | undefined,
    prefetched: PrefetchedStats | undefined,
  ): Promise<MaildirScan> {
    const began = performance.now();
    const scan = await scanMaildir(dir, { trashFolders: this.trashFolders, signal: stop, snapshot, root, prefetched });
    this.scanTimes?.observe((performance.now() - began) / 1000);
    const s = this.scanStats;
    s.scans++;
    s.directoriesRead += scan.directoriesRead;
    s.directoriesReused += scan.directoriesReused;
    s.rootListings += scan.rootListings;
    s.entries += scan.entries;
    return scan;
  }

  /*
   * The real Maildir root for a key, its maildirsize and its stat, or null when it does not exist
   * inside the store root. When the cached listing of the root is still true (same mtime) and it
   * held neither maildirsize nor maildirfolder, neither is looked for: creating one would have
   * changed the root's mtime. Otherwise both are looked at together. On a warm lookup every file
   * system call saved counts: each costs this thread some 10-15 µs (bench/stores.ts).
   */
  private async locate(relative: string): Promise<Located | null> {
    let dir: string | null;
    let current: Settled<CurrentFile | null>;
    let root: DirectoryStamp;
    let prefetched: PrefetchedStats | undefined;
    try {
      dir = await resolveInside(this.root, relative, this.io);
      if (dir === null) return null;
      // A known mailbox: its directories are stated together with the root (one round trip).
      const known = this.scanCache.peek(dir, this.trashKey);
      prefetched = known?.root ? prefetchTargets(known) : undefined;
      const readAtMs = Date.now();
      const st = await this.io.lstat(dir);
      if (st === null || !st.isDirectory()) return null;
      root = { ino: st.ino, mtimeNs: st.mtimeNs, readAtMs };
      if (known && !known.rootHas.maildirsize && !known.rootHas.maildirfolder && rootUnchanged(known, root, RACY_MARGIN_MS)) {
        return { dir, current: null, root, prefetched };
      }
      let subfolder: boolean;
      [subfolder, current] = await Promise.all([
        this.io.lstat(path.join(dir, 'maildirfolder')).then((s) => s !== null),
        settle(this.readMaildirsize(dir)),
      ]);
      // A path that names a Maildir++ subfolder (.Sent) counts against the whole mailbox.
      if (subfolder) {
        const parent = path.dirname(dir);
        if (!isStrictlyInside(await this.io.realpath(this.root), parent)) return null;
        return { dir: parent, current: await this.readMaildirsize(parent) };
      }
    } catch (err) {
      if (err instanceof SourceError) throw err;
      throw ioError(`cannot resolve the Maildir under ${this.root}`, err);
    }
    if ('error' in current) throw current.error;
    return { dir, current: current.value, root, prefetched };
  }

  /*
   * maildirsize read without following a symlink; null when missing, or not to be trusted: a
   * symlink, anything but a regular file (never read: io.ts), a file with more than one link.
   */
  private async readMaildirsize(dir: string): Promise<CurrentFile | null> {
    let file;
    try {
      file = await this.io.readNoFollow(path.join(dir, 'maildirsize'), MAILDIRSIZE_READ_LIMIT);
    } catch (err) {
      throw ioError('cannot read maildirsize', err);
    }
    if (file === null || !file.stats.isFile() || file.stats.nlink > 1) return null;
    return { parsed: parseMaildirsize(file.bytes.toString('latin1')), stats: file.stats };
  }

  private async rewrite(dir: string, current: CurrentFile, bytes: number, messages: number): Promise<void> {
    const { uid, gid } = current.stats;
    if (!mayKeepOwner(uid, gid)) {
      this.logNotOwner(dir, uid);
      return;
    }
    const tmpDir = path.join(dir, 'tmp');
    const tmpFile = path.join(
      tmpDir,
      `${Math.floor(Date.now() / 1000)}.P${process.pid}R${randomBytes(6).toString('hex')}.overquota-maildirsize`,
    );
    try {
      if (!(await isDirectory(tmpDir))) throw new Error('tmp/ is missing or not a directory');
      // 'wx': O_EXCL, so an existing name (or a planted symlink) is never written through. Mode
      // and owner are set on the open file (fchmod, fchown), never by path: tmp/ is writable by the
      // mailbox's owner, who could swap the name for a symlink to another file meanwhile.
      const fh = await open(tmpFile, 'wx', 0o600);
      try {
        await fh.writeFile(`${current.parsed.limitsLine}\n${bytes} ${messages}\n`);
        // Keep the owner and mode the delivery agent gave the file, or it may no longer open it.
        // chown only when needed (a seccomp filter may refuse it); if it fails, no rename.
        await fh.chmod(current.stats.mode & 0o7777);
        const made = await fh.stat();
        if (made.uid !== uid || made.gid !== gid) await fh.chown(uid, gid);
      } finally {
        await fh.close();
      }
      await rename(tmpFile, path.join(dir, 'maildirsize'));
      this.lastWriteError = null;
    } catch (err) {
      // The answer stays valid without the rewrite; the next lookup recalculates again.
      this.lastWriteError = err instanceof Error ? err : new Error(String(err));
      this.logWriteError(dir, this.lastWriteError);
      await unlink(tmpFile).catch(() => undefined);
    }
  }

  private logNotOwner(dir: string, owner: number): void {
    if (this.notOwnerLogged) return;
    this.notOwnerLogged = true;
    this.logger?.warn(
      { mailbox: dir, file_uid: owner, our_uid: process.geteuid?.(), logged: 'once' },
      'maildirsize files of other users are not rewritten after a recount (their owner, Dovecot or Courier, recounts them): the answers use the recount',
    );
  }

  private logWriteError(dir: string, err: Error): void {
    const now = Date.now();
    const w = this.writeErrors;
    if (now - w.loggedAtMs < WRITE_ERROR_LOG_INTERVAL_MS) {
      w.unlogged++;
      return;
    }
    this.logger?.warn(
      { mailbox: dir, error: err.message, code: (err as NodeJS.ErrnoException).code, not_logged_since_last: w.unlogged },
      'maildirsize not rewritten after a recount: the answer stands, the next lookup recounts again',
    );
    w.loggedAtMs = now;
    w.unlogged = 0;
  }
}


type Settled<T> = { value: T } | { error: unknown };

/* A promise that does not reject: its failure is looked at only if its value turns out to matter. */
function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
}

/*
 * Whether a file this process writes can be given this owner and group: as root (chown, unless
 * CAP_CHOWN was dropped: then the chown fails and nothing is renamed), or as the owner itself when
 * the group is its own or one it belongs to (chown(2) lets an owner choose among those).
 */
function mayKeepOwner(uid: number, gid: number): boolean {
  const euid = process.geteuid?.();
  if (euid === undefined) return false;
  if (euid === 0) return true;
  return euid === uid && (process.getegid?.() === gid || (process.getgroups?.() ?? []).includes(gid));
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await lstat(p)).isDirectory();
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}


