/*
 * The file-system calls a local quota store makes on every lookup, in two kinds.
 *
 * - `threadPoolIo` (frontends): node:fs/promises, run on libuv's thread pool. A hung disk or NFS
 *   server then blocks a pool thread, never the event loop, so the latency budget still answers
 *   Postfix in time (on_error) instead of leaving an SMTP session hanging.
 * - `blockingIo` (the quota service): the same calls, synchronous. Each pool round trip costs
 *   the process two thread switches; on the quota service's lookup (realpath, lstat, open,
 *   fstat, read, close) that was most of its CPU and capped it at ~3,000 lookups/s on two cores
 *   (BENCHMARKS.md, peers). A stat of a cached inode takes a few microseconds. A hung store hangs
 *   this process, as it would once its four pool threads hung anyway, and frontends answer
 *   on_error within their budget.
 *
 * Directory scans (stores/maildir/scan.ts) stay on the pool in both: a 100k-message Maildir must not
 * stop the event loop for long.
 *
 * A store file is opened O_NONBLOCK and O_NOCTTY, and read only when fstat() says it is a regular
 * file. The mailbox owner controls these names: a FIFO called `maildirsize` made a blocking
 * open(2) wait for a writer that never came (the whole quota service with blockingIo; a pool
 * thread each time on a frontend, and after four every uncached lookup timed out), and a device
 * node was opened like a file. O_NONBLOCK makes the open of a FIFO or a device return at once;
 * O_NOCTTY keeps a terminal from becoming ours; O_NOFOLLOW refuses a symlink. Nothing here may
 * ever wait on a file the mailbox owner made.
 */
import fs, { constants, type BigIntStats, type Stats } from 'node:fs';
import { lstat, open, opendir, realpath } from 'node:fs/promises';
import { isMissing } from './errors.js';

export interface StoreIo {
  /** The canonical path, symlinks resolved (libc realpath); rejects as fs.realpath does. */
  realpath(p: string): Promise<string>;
  /** lstat (the link itself), with ns times; null when the path does not exist (ENOENT, ENOTDIR). */
  lstat(p: string): Promise<BigIntStats | null>;
  /**
   * A small file read without following a symlink at its last component: its first `maxBytes`
   * and its fstat. null when missing or a symlink (ENOENT, ELOOP). Anything but a regular file (a
   * directory, a FIFO, a device) is opened without waiting, never read, and gives its non-file stat.
   */
  readNoFollow(p: string, maxBytes: number): Promise<{ bytes: Buffer; stats: Stats } | null>;
}

/* See the header: opening must never wait, whatever kind of file the name turns out to be. */
const NO_FOLLOW = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;


export const threadPoolIo: StoreIo = {
  realpath: (p) => realpath(p),

  async lstat(p) {
    try {
      return await lstat(p, { bigint: true });
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
  },

  async readNoFollow(p, maxBytes) {
    let handle;
    try {
      handle = await open(p, NO_FOLLOW);
    } catch (err) {
      if (isMissing(err) || (err as NodeJS.ErrnoException).code === 'ELOOP') return null;
      throw err;
    }
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) return { bytes: Buffer.alloc(0), stats };
      const buf = Buffer.alloc(Math.min(stats.size, maxBytes));
      const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
      return { bytes: buf.subarray(0, bytesRead), stats };
    } finally {
      await handle.close();
    }
  },
};

export const blockingIo: StoreIo = {
  // .native: libc realpath(3), as fs.promises.realpath; the plain one walks the path in JS.
  realpath: async (p) => fs.realpathSync.native(p),

  async lstat(p) {
    try {
      // throwIfNoEntry: a missing path is common here (unknown users), and an Error is costly.
      return fs.lstatSync(p, { bigint: true, throwIfNoEntry: false }) ?? null;
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
  },

  async readNoFollow(p, maxBytes) {
    let fd: number;
    try {
      fd = fs.openSync(p, NO_FOLLOW);
    } catch (err) {
      if (isMissing(err) || (err as NodeJS.ErrnoException).code === 'ELOOP') return null;
      throw err;
    }
    try {
      const stats = fs.fstatSync(fd);
      if (!stats.isFile()) return { bytes: Buffer.alloc(0), stats };
      const buf = Buffer.allocUnsafe(Math.min(stats.size, maxBytes));
      const bytesRead = fs.readSync(fd, buf, 0, buf.length, 0);
      return { bytes: buf.subarray(0, bytesRead), stats };
    } finally {
      fs.closeSync(fd);
    }
  },
};

/**
 * Why the store root cannot be read (for the quota service's /health), or null. On the thread pool
 * whatever kind the lookups use: a hung mount must hold a pool thread, not the caller's event loop.
 * Reads one batch of entries: an open that works on a directory that cannot be listed is no answer.
 */
export async function storeRootProblem(root: string): Promise<string | null> {
  try {
    const dir = await opendir(root);
    try {
      await dir.read();
    } finally {
      await dir.close();
    }
    return null;
  } catch (err) {
    return `store root ${root} cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
}
