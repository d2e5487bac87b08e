// Test helper: a private temporary directory under os.tmpdir() with an idempotent cleanup().
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TempDir {
  /** Absolute path of the new directory (mode 0700, owned by the current user). */
  path: string;
  /** Remove the directory and everything in it; safe to call more than once. */
  cleanup(): Promise<void>;
}

/** Create `os.tmpdir()/<prefix>XXXXXX`. `prefix` must not contain a path separator. */
export async function tempDir(prefix: string): Promise<TempDir> {
  if (prefix.includes('/')) throw new Error(`tempDir: prefix must not contain '/': ${prefix}`);
  const path = await mkdtemp(join(tmpdir(), prefix));
  return {
    path,
    cleanup: () => rm(path, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 }),
  };
}
