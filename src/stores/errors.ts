/*
 * The errors local mail stores share: a lookup cut short by its caller, a file system failure, and
 * "no such file" (the one test of it, for every store file).
 * Both become SourceErrors, so the core answers on_error and never a fake "room".
 */
import { SourceError } from '../quota.js';

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new SourceError('SOURCE_TIMEOUT', `${what} aborted (latency budget spent)`);
}

/** The path (or a folder on it) does not exist: a mailbox not created yet, a message just moved. */
export function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export function ioError(what: string, cause: unknown): SourceError {
  const code = (cause as NodeJS.ErrnoException | null)?.code ?? 'error';
  return new SourceError('SOURCE_IO', `${what}: ${code}`, { cause });
}
