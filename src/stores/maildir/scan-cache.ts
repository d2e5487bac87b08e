/*
 * What a Maildir scan leaves behind for the next one: per mailbox, the folder list and the count
 * of every `new/` and `cur/` with the inode and mtime (nanoseconds) it had when it was read, so
 * that the next lookup stats the directories and reads only those that changed (scan.ts).
 *
 * Bounded: at most `maxMailboxes` snapshots, the least recently used dropped first.
 * Concurrent lookups of one mailbox share one scan; it is stopped only when every caller waiting
 * for it gave up, and what it finished stays in the snapshot either way.
 *
 * Reuse rests on the directory mtime: a delivery, an expunge or a flag change (a rename in cur/)
 * changes it. A directory whose mtime was younger than RACY_MARGIN_MS when it was read is read
 * again, since a change within the same clock tick would leave that mtime as it was (the margin
 * compares the file system's clock with ours: a file server whose clock runs behind by more than
 * that defeats it). Over NFS the client's attribute cache (acdirmin/acdirmax) can hide a change
 * for as long as it keeps attributes: mount with `actimeo` short enough, or count on maildirsize.
 */

import { SourceError } from '../../quota.js';

/**
 * Mailboxes whose scan results are kept. Measured: about 5 KB of heap for a mailbox of INBOX and
 * 4 folders (paths, counts, stamps), so 25 MB at most. Only mailboxes that were scanned (no
 * usable maildirsize) take a place.
 */
export const DEFAULT_SCAN_CACHE_MAILBOXES = 5_000;
/** See the header: younger mtimes are not trusted to show the next change. */
export const RACY_MARGIN_MS = 2000;

/** The inode and mtime of a directory, and when (wall clock, ms) it was about to be read. */
export interface DirectoryStamp {
  ino: bigint;
  mtimeNs: bigint;
  readAtMs: number;
}

/** What one `new/` or `cur/` held when it was read. */
export interface DirectoryCount extends DirectoryStamp {
  bytes: number;
  messages: number;
}

/** What the scans learnt about one mailbox; updated in place by each scan. */
export interface MaildirSnapshot {
  /** The excluded folders it was taken with; another set makes it useless. */
  trashKey: string;
  /** The root when its folder list was read; null: never listed. */
  root: DirectoryStamp | null;
  /** Full paths of the counted folders, as of `root`. */
  folders: string[];
  /** `new/` and `cur/` of the root and of each folder, in the order they are read. */
  targets: string[];
  /** Whether the root held a `maildirsize` or a `maildirfolder` file, as of `root`. */
  rootHas: { maildirsize: boolean; maildirfolder: boolean };
  /** Full path of each `new/` and `cur/` counted -> its count. */
  dirs: Map<string, DirectoryCount>;
}

export function emptySnapshot(trashKey: string): MaildirSnapshot {
  return { trashKey, root: null, folders: [], targets: [], rootHas: { maildirsize: false, maildirfolder: false }, dirs: new Map() };
}

/** What a scan looks at to know whether to stop: an AbortSignal does, and so does a plain flag. */
export interface StopFlag {
  readonly aborted: boolean;
}

/** The root's listing is still true: same inode and mtime, and that mtime was settled when listed. */
export function rootUnchanged(snapshot: MaildirSnapshot, root: { ino: bigint; mtimeNs: bigint }, marginMs: number): boolean {
  return snapshot.root !== null && sameDirectory(snapshot.root, root) && settled(snapshot.root, marginMs);
}

export function sameDirectory(a: { ino: bigint; mtimeNs: bigint }, b: { ino: bigint; mtimeNs: bigint }): boolean {
  return a.ino === b.ino && a.mtimeNs === b.mtimeNs;
}

/** What one scan found (scan.ts); kept here, with the snapshots, so that scan.ts depends on this file and not the reverse. */
export interface MaildirScan {
  bytes: number;
  messages: number;
  attempts: number;
  /** false when directories kept changing through every attempt: good as an answer, not to save. */
  stable: boolean;
  /** `new/` and `cur/` directories opened and read (over all attempts). */
  directoriesRead: number;
  /** `new/` and `cur/` directories whose count came from the snapshot. */
  directoriesReused: number;
  /** Times the root was listed for folders (0: the folder list came from the snapshot). */
  rootListings: number;
  /** Directory entries read. */
  entries: number;
}

/** The mtime was old enough when the directory was read that no later change can share it. */
export function settled(stamp: DirectoryStamp, marginMs: number): boolean {
  return Number(stamp.mtimeNs / 1_000_000n) <= stamp.readAtMs - marginMs;
}

interface Running {
  promise: Promise<MaildirScan>;
  /* An AbortController rather than a flag: a scan waiting for a slot (scan-slots.ts) must wake. */
  stop: AbortController;
  settled: boolean;
  waiters: number;
}

export class MaildirScanCache {
  private readonly snapshots = new Map<string, MaildirSnapshot>();
  private readonly running = new Map<string, Running>();

  /** @param maxMailboxes snapshots kept; 0 keeps none (every scan starts from nothing). */
  constructor(readonly maxMailboxes: number = DEFAULT_SCAN_CACHE_MAILBOXES) {
    if (!Number.isInteger(maxMailboxes) || maxMailboxes < 0) throw new Error(`scan cache size ${maxMailboxes}: expected a whole number >= 0`);
  }

  /** Mailboxes with a snapshot now. */
  get size(): number {
    return this.snapshots.size;
  }

  clear(): void {
    this.snapshots.clear();
  }

  /** The mailbox's snapshot, if there is one taken with these trash folders (no change to its rank). */
  peek(dir: string, trashKey: string): MaildirSnapshot | undefined {
    const snap = this.snapshots.get(dir);
    return snap?.trashKey === trashKey ? snap : undefined;
  }

  /** The mailbox's snapshot (a fresh one when none, or taken with other trash folders), now the most recent. */
  snapshotFor(dir: string, trashKey: string): MaildirSnapshot {
    let snap = this.snapshots.get(dir);
    if (snap) this.snapshots.delete(dir);
    if (!snap || snap.trashKey !== trashKey) snap = emptySnapshot(trashKey);
    if (this.maxMailboxes === 0) return snap;
    this.snapshots.set(dir, snap);
    if (this.snapshots.size > this.maxMailboxes) {
      const oldest = this.snapshots.keys().next().value as string;
      this.snapshots.delete(oldest);
    }
    return snap;
  }

  /**
   * Runs `scan` for the mailbox, or joins the one already running. The caller's `signal` ends only
   * its own wait (SOURCE_TIMEOUT); the scan is told to stop when no caller is left waiting.
   */
  async shared(
    dir: string,
    trashKey: string,
    signal: AbortSignal,
    scan: (snapshot: MaildirSnapshot, stop: AbortSignal) => Promise<MaildirScan>,
  ): Promise<MaildirScan> {
    if (signal.aborted) throw aborted();
    let run = this.running.get(dir);
    if (!run || run.stop.signal.aborted) {
      const started: Running = { stop: new AbortController(), settled: false, waiters: 0, promise: Promise.resolve(null as never) };
      started.promise = scan(this.snapshotFor(dir, trashKey), started.stop.signal).finally(() => {
        started.settled = true;
        if (this.running.get(dir) === started) this.running.delete(dir);
      });
      // Nobody may be waiting when it fails (all gave up): not an unhandled rejection.
      started.promise.catch(() => undefined);
      this.running.set(dir, started);
      run = started;
    }
    run.waiters++;
    try {
      return await untilAborted(run.promise, signal);
    } finally {
      run.waiters--;
      if (run.waiters === 0 && !run.settled) run.stop.abort();
    }
  }
}

function aborted(): SourceError {
  return new SourceError('SOURCE_TIMEOUT', 'maildir scan aborted (latency budget spent)');
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(aborted());
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
