/*
 * Shared by the helpers that run real daemons under a perl supervisor (postfix.ts, sendmail.ts):
 * the set of live supervisors, told to stop everything (SIGUSR1) if the test process exits
 * without stop(); plus signalling and bounded waiting on a child.
 */
import type { ChildProcess } from 'node:child_process';

export interface Supervised {
  supervisor: ChildProcess;
  dir: string;
}

export const live = new Set<Supervised>();
let exitHookInstalled = false;

/** Registers a supervisor; the exit hook makes sure it is told to stop even without stop(). */
export function track(entry: Supervised): void {
  live.add(entry);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Belt and braces: the supervisors also get a signal from the kernel when we die (PDEATHSIG).
  process.on('exit', () => {
    // SIGUSR1 = "the test process is going away": stop everything and remove the directory.
    for (const l of live) signal(l.supervisor, 'SIGUSR1');
  });
}

export function signal(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  try {
    child.kill(sig);
  } catch {
    /* already gone */
  }
}

/** Resolve true when `child` has exited, false after `ms` (the timer does not outlive the wait). */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(true);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    child.once('exit', onExit);
  });
}
