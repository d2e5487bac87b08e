/*
 * Counting a Maildir++ mailbox by scanning it: root, new/ and cur/ of every .Folder but the trash,
 * sizes from ,S= in the names (Courier's README.maildirquota rules). Reading `maildirsize` and
 * deciding when it cannot be trusted is maildirsize.ts's.
 *
 * A scan can be given the snapshot of an earlier one (scan-cache.ts keeps them): a `new/` or
 * `cur/` whose inode and mtime (nanoseconds) are unchanged since it was read, and whose mtime was
 * already RACY_MARGIN_MS old when it was read, is not read again; the root is listed again only
 * when its own mtime changed (a folder created, removed or renamed). The snapshot is updated in
 * place directory by directory, so a scan cut short keeps what it finished.
 *
 * Hard links: a message's size is the ,S= in its name (Courier's rule; Dovecot and Courier always
 * write one), so a link changes nothing there. A name without ,S= costs an lstat and the file's own
 * size, and a mailbox owner could hard-link any file of the same file system into cur/ to learn
 * its size: a file with more than one link counts only when it has the owner of the directory it
 * is in (Dovecot's maildir_copy_with_hardlinks links a copied message into another folder, with
 * the mailbox's owner), otherwise it is not a message of this mailbox and is left out.
 *
 * It depends on scan-cache.ts (the snapshot and result types), never the other way round.
 * The scan must never follow a symlink (a message or folder that is a link may point anywhere),
 * never block the event loop for long (async opendir, a setImmediate turn at least every
 * SCAN_SLICE_MS of work or SCAN_YIELD_EVERY entries), and never write: writing is the store's
 * decision (store.ts). Over 300 lines: one algorithm (list, stat what changed, count, check that
 * nothing moved meanwhile, retry), read best whole.
 */

import { lstat as lstatCallback, type BigIntStats, type Dirent } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { setImmediate as nextTurn } from 'node:timers/promises';
import path from 'node:path';
import { SourceError } from '../../quota.js';
import { isMissing } from '../errors.js';
import {
  RACY_MARGIN_MS,
  emptySnapshot,
  rootUnchanged,
  sameDirectory,
  settled,
  type DirectoryStamp,
  type MaildirSnapshot,
  type StopFlag,
  type MaildirScan,
} from './scan-cache.js';

export type { MaildirScan };

export { RACY_MARGIN_MS, type DirectoryStamp, type MaildirSnapshot, type StopFlag } from './scan-cache.js';
export { RECALC_FILE_SIZE, RECALC_STALE_MS, parseMaildirsize, recalculationReason, type Maildirsize, type MaildirsizeFile } from './maildirsize.js';

/** Most entries read between two event-loop turns, whatever the clock says (about 1 µs each). */
export const SCAN_YIELD_EVERY = 4096;
/** Work between two event-loop turns: the longest a scan holds up other requests (checked every 64 entries). */
export const SCAN_SLICE_MS = 2;
/** Directory entries fetched per readdir call in the thread pool (Node's default is 32). */
export const SCAN_DIR_BUFFER = 256;
/** Stats of names without ,S= in flight at once (each one a thread-pool round trip). */
export const SCAN_STAT_CONCURRENCY = 16;
/** Full rescans when a directory changes while being counted; after that, the last count is used. */
export const SCAN_MAX_ATTEMPTS = 3;
/** Courier leaves Trash out of the quota so users can always delete. */
export const DEFAULT_TRASH_FOLDERS: readonly string[] = ['.Trash'];

/** The size Maildir++ delivery agents put in the name (`...,S=1234:2,S`), or null. */
export function sizeFromFileName(name: string): number | null {
  const m = /,S=(\d{1,18})(?=[,:]|$)/.exec(name);
  return m ? Number(m[1]) : null;
}

export interface MaildirScanOptions {
  /** Folder names to leave out, with or without the leading dot. */
  trashFolders?: readonly string[];
  /** Stops the scan (SOURCE_TIMEOUT) once aborted: an AbortSignal, or any { aborted } flag. */
  signal?: StopFlag;
  /** An earlier scan of this mailbox; reused where unchanged, updated in place. */
  snapshot?: MaildirSnapshot;
  /** The caller's stat of the root, taken at readAtMs: spares the first attempt one stat. */
  root?: DirectoryStamp;
  /** The caller's prefetchTargets() of this snapshot, used by the first attempt if the listing held. */
  prefetched?: PrefetchedStats;
  yieldEvery?: number;
  sliceMs?: number;
  maxAttempts?: number;
  racyMarginMs?: number;
  /** Called after each directory is counted or reused, before the change check (tests simulate deliveries here). */
  afterDirectory?: (dir: string, attempt: number) => Promise<void> | void;
}


type Work = Pick<MaildirScan, 'directoriesRead' | 'directoriesReused' | 'rootListings' | 'entries'>;

/** Counts the messages of a Maildir++ (root plus its .Folders), retrying when it changes meanwhile. */
export async function scanMaildir(dir: string, options: MaildirScanOptions = {}): Promise<MaildirScan> {
  const trash = trashSet(options.trashFolders ?? DEFAULT_TRASH_FOLDERS);
  const key = trashKeyOf(trash);
  const snapshot = options.snapshot ?? emptySnapshot(key);
  if (snapshot.trashKey !== key) Object.assign(snapshot, emptySnapshot(key));
  const maxAttempts = options.maxAttempts ?? SCAN_MAX_ATTEMPTS;
  const margin = options.racyMarginMs ?? RACY_MARGIN_MS;
  const pacer = new Pacer(options.signal, options.yieldEvery ?? SCAN_YIELD_EVERY, options.sliceMs ?? SCAN_SLICE_MS);
  const work: Work = { directoriesRead: 0, directoriesReused: 0, rootListings: 0, entries: 0 };
  let bytes = 0;
  let messages = 0;
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    // All stamps at once, and together with the root's: on a warm lookup this is the whole cost.
    // Taken again only if the root's folder list changed.
    const given = attempt === 1 ? options.prefetched : undefined;
    const guess = given?.targets === snapshot.targets ? given : snapshot.root ? prefetchTargets(snapshot) : null;
    const root = (attempt === 1 ? options.root : undefined) ?? stampOf(await lstat(dir, { bigint: true }), Date.now());
    const relisted = await refreshFolders(dir, root, trash, snapshot, margin, pacer, work);
    const targets = snapshot.targets;
    const readAtMs = guess && !relisted ? guess.readAtMs : Date.now();
    const before = guess && !relisted ? await guess.stats : await Promise.all(targets.map(dirStat));
    const wanted = new Set(targets);
    for (const d of snapshot.dirs.keys()) if (!wanted.has(d)) snapshot.dirs.delete(d);
    bytes = 0;
    messages = 0;
    let readAny = false;
    for (const [i, d] of targets.entries()) {
      pacer.check();
      const st = before[i]!;
      if (st === null) {
        snapshot.dirs.delete(d);
        continue;
      }
      let count = snapshot.dirs.get(d);
      if (count && sameDirectory(count, st) && settled(count, margin)) {
        work.directoriesReused++;
      } else {
        const counted = await countDirectory(d, st.uid, pacer, work);
        work.directoriesRead++;
        readAny = true;
        // Stamped with the stat taken before the read: a change during the read shows next time.
        count = { ino: st.ino, mtimeNs: st.mtimeNs, readAtMs, ...counted };
        snapshot.dirs.set(d, count);
      }
      bytes += count.bytes;
      messages += count.messages;
      await options.afterDirectory?.(d, attempt);
    }
    // Nothing read: every count is as of one moment (the stats above), nothing to cross-check.
    if (!readAny) return { bytes, messages, attempts: attempt, stable: true, ...work };
    // A message moved from new/ to cur/ (or between folders) during the read may be counted twice
    // or not at all: Courier's rule is to start over when any scanned directory changed meanwhile.
    const after = await Promise.all(targets.map(dirStat));
    const changed = targets.some((_, i) => {
      const a = before[i]!;
      const b = after[i]!;
      return a === null ? b !== null : b === null || !sameDirectory(a, b);
    });
    if (!changed) return { bytes, messages, attempts: attempt, stable: true, ...work };
  }
  return { bytes, messages, attempts: maxAttempts, stable: false, ...work };
}

/** `new/` and `cur/` of the root and of each folder, in the order they are read. */
function targetsOf(dir: string, folders: readonly string[]): string[] {
  return [dir, ...folders].flatMap((f) => [path.join(f, 'new'), path.join(f, 'cur')]);
}

/** The stats of a snapshot's directories, taken before it is known whether the listing still holds. */
export interface PrefetchedStats {
  /** The snapshot's `targets` array they were taken for (the same array, not a copy). */
  targets: readonly string[];
  readAtMs: number;
  stats: Promise<(BigIntStats | null)[]>;
}

/**
 * Starts the stats of every `new/` and `cur/` the snapshot knows of, so that they run together with
 * the root's stat; unused (and harmless) if the root turns out to have changed.
 */
export function prefetchTargets(snapshot: MaildirSnapshot): PrefetchedStats {
  const readAtMs = Date.now();
  const stats = Promise.all(snapshot.targets.map(dirStat));
  stats.catch(() => undefined);
  return { targets: snapshot.targets, readAtMs, stats };
}

function stampOf(st: { ino: bigint; mtimeNs: bigint }, readAtMs: number): DirectoryStamp {
  return { ino: st.ino, mtimeNs: st.mtimeNs, readAtMs };
}

function trashSet(folders: readonly string[]): Set<string> {
  return new Set(folders.map((f) => (f.startsWith('.') ? f : `.${f}`)));
}

/** The identity of a set of excluded folders, as snapshots record it. */
export function trashKeyOf(folders: Iterable<string>): string {
  return [...trashSet([...folders])].sort().join('/');
}

/** Lists the root again unless the snapshot's listing is still true; says whether it did. */
async function refreshFolders(
  dir: string,
  root: DirectoryStamp,
  trash: Set<string>,
  snapshot: MaildirSnapshot,
  margin: number,
  pacer: Pacer,
  work: Work,
): Promise<boolean> {
  if (rootUnchanged(snapshot, root, margin)) return false;
  const rootHas = { maildirsize: false, maildirfolder: false };
  const folders: string[] = [];
  const handle = await opendir(dir);
  for await (const entry of handle) {
    const turn = pacer.tick();
    if (turn) await turn;
    if (entry.name === 'maildirsize' || entry.name === 'maildirfolder') rootHas[entry.name] = true;
    // Dirent types come from readdir: a symlink to a directory is not a directory here.
    if (!entry.name.startsWith('.') || entry.name === '.' || entry.name === '..' || trash.has(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (hasType(entry) ? entry.isDirectory() : (await dirStat(full)) !== null) folders.push(full);
  }
  work.rootListings++;
  Object.assign(snapshot, { root, folders, targets: targetsOf(dir, folders), rootHas });
  return true;
}

/*
 * One directory's messages. Sizes come from ,S= in the name; only names without it (and entries
 * whose type readdir does not report) cost an lstat, SCAN_STAT_CONCURRENCY of them in flight.
 */
async function countDirectory(d: string, owner: bigint, pacer: Pacer, work: Work): Promise<{ bytes: number; messages: number }> {
  const result = { bytes: 0, messages: 0 };
  let handle;
  try {
    handle = await opendir(d, { bufferSize: SCAN_DIR_BUFFER });
  } catch (err) {
    if (isVanished(err)) return result;
    throw err;
  }
  let pending: Promise<void>[] = [];
  try {
    for (;;) {
      const entry = await handle.read();
      if (entry === null) break;
      work.entries++;
      const turn = pacer.tick();
      if (turn) await turn;
      if (entry.name.startsWith('.')) continue;
      // Some file systems (older XFS, some NFS) report no type: then lstat decides.
      const typed = hasType(entry);
      if (typed && !entry.isFile()) continue;
      const size = sizeFromFileName(entry.name);
      if (size !== null && typed) {
        result.bytes += size;
        result.messages++;
        continue;
      }
      pending.push(statMessage(path.join(d, entry.name), size, owner, result));
      if (pending.length >= SCAN_STAT_CONCURRENCY) {
        await Promise.all(pending);
        pending = [];
      }
    }
    await Promise.all(pending);
  } finally {
    await Promise.allSettled(pending);
    await handle.close().catch(() => undefined);
  }
  return result;
}

async function statMessage(file: string, sizeFromName: number | null, owner: bigint, into: { bytes: number; messages: number }): Promise<void> {
  let st;
  try {
    st = await lstat(file, { bigint: true });
  } catch (err) {
    // Expunged or moved to cur/ while we were counting: the other copy (if any) is counted there.
    if (isVanished(err)) return;
    throw err;
  }
  if (!st.isFile()) return;
  // A link to a file someone else owns (see the header): its size is not this mailbox's to report.
  if (sizeFromName === null && st.nlink > 1n && st.uid !== owner) return;
  into.bytes += sizeFromName ?? Number(st.size);
  into.messages++;
}

/*
 * Hands the event loop back at least every `sliceMs` of work or `yieldEvery` entries, and stops
 * the scan once its caller gave up. tick() returns a promise only when it is time to yield, so the
 * common case costs no await.
 */
class Pacer {
  private sinceTurn = 0;
  private turnAt = performance.now();

  constructor(
    private readonly signal: StopFlag | undefined,
    private readonly yieldEvery: number,
    private readonly sliceMs: number,
  ) {}

  /** Throws SOURCE_TIMEOUT once the caller gave up. */
  check(): void {
    if (this.signal?.aborted) throw new SourceError('SOURCE_TIMEOUT', 'maildir scan aborted (latency budget spent)');
  }

  tick(): Promise<void> | undefined {
    this.check();
    this.sinceTurn++;
    if (this.sinceTurn >= this.yieldEvery || ((this.sinceTurn & 63) === 0 && performance.now() - this.turnAt >= this.sliceMs)) {
      return this.turn();
    }
    return undefined;
  }

  private async turn(): Promise<void> {
    await nextTurn();
    this.sinceTurn = 0;
    this.turnAt = performance.now();
    this.check();
  }
}

/*
 * The directory's stat without following a symlink; null when it is missing or not a directory.
 * The callback API: measured, half the garbage of fs/promises' lstat per call (no FileHandle
 * machinery), which matters at 9 calls per warm lookup.
 */
function dirStat(d: string): Promise<BigIntStats | null> {
  return new Promise((resolve, reject) => {
    lstatCallback(d, { bigint: true }, (err, st) => {
      if (err) {
        if (isVanished(err)) resolve(null);
        else reject(err);
      } else resolve(st.isDirectory() ? st : null);
    });
  });
}

function hasType(entry: Dirent): boolean {
  return (
    entry.isFile() ||
    entry.isDirectory() ||
    entry.isSymbolicLink() ||
    entry.isFIFO() ||
    entry.isSocket() ||
    entry.isBlockDevice() ||
    entry.isCharacterDevice()
  );
}

/** A message moved or deleted while the scan ran (a delivery, a read, an expunge). */
const isVanished = isMissing;
