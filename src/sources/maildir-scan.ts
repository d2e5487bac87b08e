/*
 * Maildir++ quota arithmetic: parsing `maildirsize`, deciding when it cannot be trusted, and
 * counting a mailbox by scanning it (Courier's README.maildirquota rules).
 *
 * The scan must never follow a symlink (a message or folder that is a link may point anywhere),
 * never block the event loop for long (async opendir, a setImmediate turn every
 * SCAN_YIELD_EVERY entries), and never write: writing is the store's decision (maildir.ts).
 */

import type { Dirent } from 'node:fs';
import { lstat, opendir } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import path from 'node:path';
import { SourceError } from './types.js';

/** Courier: a maildirsize this large has collected too many deltas; recount. */
export const RECALC_FILE_SIZE = 5120;
/** Courier: an over-quota file this old may be stale (messages deleted by hand); recount. */
export const RECALC_STALE_MS = 15 * 60 * 1000;
/** Entries read between two event-loop turns; keeps one scan from stalling other requests. */
export const SCAN_YIELD_EVERY = 256;
/** Full rescans when a directory changes while being counted; after that, the last count is used. */
export const SCAN_MAX_ATTEMPTS = 3;
/** Courier leaves Trash out of the quota so users can always delete. */
export const DEFAULT_TRASH_FOLDERS: readonly string[] = ['.Trash'];

export interface Maildirsize {
  /** Line 1 as found, when it is a valid, non-empty limits line; kept when the file is rewritten. */
  limitsLine: string | null;
  /** null: no S limit (unlimited). */
  limitBytes: number | null;
  /** null: no C limit (unlimited). */
  limitMessages: number | null;
  usageBytes: number;
  usageMessages: number;
  dataLines: number;
  /** Why the figures cannot be trusted (garbage, negative totals), or null. */
  corruption: string | null;
}

const LIMIT_ITEM = /^(\d{1,18})([SC])$/;
const DATA_LINE = /^(-?\d{1,18})[ \t]+(-?\d{1,18})$/;

/** Reads the text of a maildirsize file; reports corruption instead of throwing. */
export function parseMaildirsize(text: string): Maildirsize {
  const lines = text.split('\n');
  const result: Maildirsize = {
    limitsLine: null,
    limitBytes: null,
    limitMessages: null,
    usageBytes: 0,
    usageMessages: 0,
    dataLines: 0,
    corruption: null,
  };
  const first = (lines[0] ?? '').trim();
  if (first.length > 0) {
    let valid = true;
    for (const item of first.split(',')) {
      const m = LIMIT_ITEM.exec(item.trim());
      if (!m) {
        valid = false;
        result.corruption = `bad limits line "${first.slice(0, 80)}"`;
        break;
      }
      // 0 means "no limit" in Maildir++ (as Dovecot reads it).
      const value = Number(m[1]) === 0 ? null : Number(m[1]);
      if (m[2] === 'S') result.limitBytes = value;
      else result.limitMessages = value;
    }
    if (valid) result.limitsLine = first;
    else {
      result.limitBytes = null;
      result.limitMessages = null;
    }
  }
  for (let i = 1; i < lines.length; i++) {
    // Courier pads lines with spaces; the final newline leaves one empty string.
    const line = lines[i]!.trim();
    if (line.length === 0) continue;
    const m = DATA_LINE.exec(line);
    if (!m) {
      result.corruption ??= `line ${i + 1} is not "<bytes> <count>"`;
      continue;
    }
    result.usageBytes += Number(m[1]);
    result.usageMessages += Number(m[2]);
    result.dataLines++;
  }
  if (result.usageBytes < 0 || result.usageMessages < 0) {
    result.corruption ??= `negative totals (${result.usageBytes} bytes, ${result.usageMessages} messages)`;
  }
  if (!Number.isSafeInteger(result.usageBytes) || !Number.isSafeInteger(result.usageMessages)) {
    result.corruption ??= 'totals overflow';
  }
  return result;
}

export interface MaildirsizeFile {
  parsed: Maildirsize;
  size: number;
  mtimeMs: number;
}

/** Why maildirsize must be recounted (Courier's rules), or null when its sums can be used. */
export function recalculationReason(file: MaildirsizeFile | null, nowMs: number): string | null {
  if (file === null) return 'maildirsize is missing';
  if (file.size >= RECALC_FILE_SIZE) return `maildirsize is ${file.size} bytes (>= ${RECALC_FILE_SIZE})`;
  const p = file.parsed;
  if (p.corruption !== null) return `maildirsize is corrupt: ${p.corruption}`;
  const over =
    (p.limitBytes !== null && p.usageBytes >= p.limitBytes) ||
    (p.limitMessages !== null && p.usageMessages >= p.limitMessages);
  if (!over) return null;
  // Deltas from several deliveries, or an old file: an "over quota" may already be untrue.
  if (p.dataLines > 1) return 'maildirsize says over quota and has several data lines';
  if (nowMs - file.mtimeMs >= RECALC_STALE_MS) return 'maildirsize says over quota and is 15 minutes old or more';
  return null;
}

/** The size Maildir++ delivery agents put in the name (`...,S=1234:2,S`), or null. */
export function sizeFromFileName(name: string): number | null {
  const m = /,S=(\d{1,18})(?=[,:]|$)/.exec(name);
  return m ? Number(m[1]) : null;
}

export interface MaildirScanOptions {
  /** Folder names to leave out, with or without the leading dot. */
  trashFolders?: readonly string[];
  signal?: AbortSignal;
  yieldEvery?: number;
  maxAttempts?: number;
  /** Called after each directory is counted, before the change check (tests simulate deliveries here). */
  afterDirectory?: (dir: string, attempt: number) => Promise<void> | void;
}

export interface MaildirScan {
  bytes: number;
  messages: number;
  attempts: number;
  /** false when directories kept changing through every attempt: good as an answer, not to save. */
  stable: boolean;
}

interface Counter {
  bytes: number;
  messages: number;
  seen: number;
}

/** Counts the messages of a Maildir++ (root plus its .Folders), retrying when it changes meanwhile. */
export async function scanMaildir(dir: string, options: MaildirScanOptions = {}): Promise<MaildirScan> {
  const trash = new Set((options.trashFolders ?? DEFAULT_TRASH_FOLDERS).map((f) => (f.startsWith('.') ? f : `.${f}`)));
  const yieldEvery = options.yieldEvery ?? SCAN_YIELD_EVERY;
  const maxAttempts = options.maxAttempts ?? SCAN_MAX_ATTEMPTS;
  let last: Counter = { bytes: 0, messages: 0, seen: 0 };
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const counter: Counter = { bytes: 0, messages: 0, seen: 0 };
    const folders = await listFolders(dir, trash, counter, options.signal, yieldEvery);
    const mtimes = new Map<string, number>();
    for (const folder of [dir, ...folders]) {
      for (const sub of ['new', 'cur']) {
        const d = path.join(folder, sub);
        const mtime = await dirMtime(d);
        if (mtime === null) continue;
        mtimes.set(d, mtime);
        await countDirectory(d, counter, options.signal, yieldEvery);
        await options.afterDirectory?.(d, attempt);
      }
    }
    last = counter;
    let changed = false;
    for (const [d, before] of mtimes) {
      if ((await dirMtime(d)) !== before) changed = true;
    }
    if (!changed) return { bytes: counter.bytes, messages: counter.messages, attempts: attempt, stable: true };
  }
  return { bytes: last.bytes, messages: last.messages, attempts: maxAttempts, stable: false };
}

async function listFolders(
  dir: string,
  trash: Set<string>,
  counter: Counter,
  signal: AbortSignal | undefined,
  yieldEvery: number,
): Promise<string[]> {
  const folders: string[] = [];
  const handle = await opendir(dir);
  for await (const entry of handle) {
    await pace(counter, signal, yieldEvery);
    // Dirent types come from readdir: a symlink to a directory is not a directory here.
    if (!entry.name.startsWith('.') || entry.name === '.' || entry.name === '..' || trash.has(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (hasType(entry) ? entry.isDirectory() : (await dirMtime(full)) !== null) folders.push(full);
  }
  return folders;
}

async function countDirectory(d: string, counter: Counter, signal: AbortSignal | undefined, yieldEvery: number) {
  let handle;
  try {
    handle = await opendir(d);
  } catch (err) {
    if (isVanished(err)) return;
    throw err;
  }
  for await (const entry of handle) {
    await pace(counter, signal, yieldEvery);
    if (entry.name.startsWith('.')) continue;
    // Some file systems (older XFS, some NFS) report no type: then lstat decides.
    const typed = hasType(entry);
    if (typed && !entry.isFile()) continue;
    let size = sizeFromFileName(entry.name);
    if (size === null || !typed) {
      try {
        const st = await lstat(path.join(d, entry.name));
        if (!st.isFile()) continue;
        size ??= st.size;
      } catch (err) {
        // Expunged or moved to cur/ while we were counting: the other copy (if any) is counted there.
        if (isVanished(err)) continue;
        throw err;
      }
    }
    counter.bytes += size;
    counter.messages++;
  }
}

async function pace(counter: Counter, signal: AbortSignal | undefined, yieldEvery: number): Promise<void> {
  counter.seen++;
  if (counter.seen % yieldEvery === 0) {
    await nextTurn();
  }
  if (signal?.aborted) throw new SourceError('SOURCE_TIMEOUT', 'maildir scan aborted (latency budget spent)');
}

async function dirMtime(d: string): Promise<number | null> {
  try {
    const st = await lstat(d);
    return st.isDirectory() ? st.mtimeMs : null;
  } catch (err) {
    if (isVanished(err)) return null;
    throw err;
  }
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

function isVanished(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
