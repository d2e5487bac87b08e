/*
 * The errors local mail stores share: a lookup cut short by its caller, and a file system failure.
 * Both become SourceErrors, so the core answers on_error and never a fake "room".
 */
import { SourceError } from '../quota.js';

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new SourceError('SOURCE_TIMEOUT', `${what} aborted (latency budget spent)`);
}

export function ioError(what: string, cause: unknown): SourceError {
  const code = (cause as NodeJS.ErrnoException | null)?.code ?? 'error';
  return new SourceError('SOURCE_IO', `${what}: ${code}`, { cause });
}
