/*
 * How a server ends, the same for every face (policy, milter, quota service): stop accepting, let
 * what is in flight be answered for at most a grace time, then cut whatever is left. Never waits
 * for a client to close first: Postfix keeps idle policy connections for minutes, frontends keep
 * HTTP connections alive, MTAs keep a milter connection for a whole SMTP session.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** How often the in-flight count is looked at while draining. */
const POLL_MS = 20;

export interface Draining {
  /** Stop taking new connections; resolves once the listeners are closed. */
  stopAccepting(): Promise<void>;
  /** Ask every connection to end once it owes nothing (idle ones at once). */
  finishIdle(): void;
  /** Whether anything is still being answered (or a connection still open, where that is the test). */
  busy(): boolean;
  /** The grace time is over: close what is left without another byte. */
  cut(): void;
}

export async function drainThenCut(server: Draining, graceMs: number): Promise<void> {
  const stopped = server.stopAccepting();
  server.finishIdle();
  const deadline = Date.now() + graceMs;
  while (server.busy() && Date.now() < deadline) await sleep(POLL_MS);
  server.cut();
  await stopped;
}
