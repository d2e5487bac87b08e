/*
 * A bound on Maildir recounts running at once: the expensive part of a lookup (a scan reads whole
 * directories), as opposed to reading one maildirsize or stating one mbox.
 *
 * A scan that finds every slot taken waits for one, first come first served, and only as long as
 * its caller still wants the answer: when its signal aborts, it leaves the queue with
 * SOURCE_TIMEOUT. It is never refused for being busy: under a burst the lookups are answered late
 * (within their caller's deadline), not turned into errors that frontends would answer with on_error.
 * The queue holds at most one entry per lookup in flight; the quota service bounds those.
 */
import { SourceError } from '../../quota.js';

/** Maildir recounts at once unless configured (quota_service.max_concurrent_scans). */
export const DEFAULT_MAX_CONCURRENT_SCANS = 8;

interface Waiter {
  grant: () => void;
}

export class ScanSlots {
  private running = 0;
  private readonly queue: Waiter[] = [];

  constructor(readonly max: number = DEFAULT_MAX_CONCURRENT_SCANS) {
    if (!Number.isInteger(max) || max < 1) throw new Error(`concurrent scans ${max}: expected a whole number >= 1`);
  }

  /** Scans running now, and waiting for a slot. */
  get busy(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.queue.length };
  }

  /**
   * Runs `work` in a slot, waiting for one while `signal` allows. `work` is told whether it waited:
   * what its caller looked at before (a directory's stat) may have changed meanwhile.
   */
  async run<T>(signal: AbortSignal, work: (waited: boolean) => Promise<T>): Promise<T> {
    const waited = await this.acquire(signal);
    try {
      return await work(waited);
    } finally {
      this.release();
    }
  }

  /* Resolves true after a wait, false when a slot was free at once. */
  private acquire(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.reject(gaveUp());
    if (this.running < this.max) {
      this.running++;
      return Promise.resolve(false);
    }
    return new Promise<boolean>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(true);
        },
      };
      const onAbort = () => {
        const i = this.queue.indexOf(waiter);
        if (i !== -1) this.queue.splice(i, 1);
        reject(gaveUp());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  /* The slot passes straight to the next waiter (running stays the same), or is freed. */
  private release(): void {
    const next = this.queue.shift();
    if (next) next.grant();
    else this.running--;
  }
}

function gaveUp(): SourceError {
  return new SourceError('SOURCE_TIMEOUT', 'maildir scan waited for a free slot until its caller gave up');
}
