/*
 * Process-wide safety nets shared by the long-running commands: what a daemon does with a bug,
 * with Node's own warnings, with a stop signal, and how it says why it stops.
 * Never writes to stderr in spawn mode: there stderr goes to smtpd, the SMTP client's side.
 */
import type { Logger } from 'pino';

/** sysexits.h: an internal software error was detected. */
export const EX_SOFTWARE = 70;

/**
 * Why a daemon stops, at fatal in its log (on disk before the process ends: log.ts's exit hook
 * writes what is still queued synchronously) and on stderr unless stderr is smtpd's.
 */
export function reportFatal(logger: Logger | null, toStderr: boolean, why: string, err?: unknown, stderrText = why): void {
  logger?.fatal(err === undefined ? {} : { err }, why);
  logger?.flush();
  if (toStderr) process.stderr.write(`overquota: ${stderrText}\n`);
}

/**
 * Postfix's way with a bug: after an uncaught exception (or rejection) the process's state is
 * unknown (a cache entry half written, a single-flight lock never released, a client never
 * answered), so it is not trusted to go on serving. The bug is logged at fatal with its stack and
 * the process exits EX_SOFTWARE; its supervisor (systemd, or master(8) in spawn mode) starts a
 * clean one, and meanwhile the MTA applies the snippets' default_action (DUNNO / accept).
 * Per-request paths catch their own errors: only a bug reaches this.
 */
export function exitOnBugs(logger: Logger, toStderr: boolean): void {
  const exit = (kind: string, err: unknown) => {
    const why = `${kind} (a bug), exiting for a clean restart`;
    reportFatal(logger, toStderr, why, err, `${why}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(EX_SOFTWARE);
  };
  process.on('uncaughtException', (err) => exit('uncaught exception', err));
  process.on('unhandledRejection', (err) => exit('unhandled rejection', err));
}

/**
 * Node prints its own process warnings (deprecations, MaxListenersExceededWarning, ...) on stderr,
 * which in spawn mode is smtpd's channel: there they go to the log, once there is one, instead.
 * Node's printer is its own 'warning' listener (none with --no-warnings), so it is removed.
 */
export function warningsToLog(currentLogger: () => Logger | null): void {
  process.removeAllListeners('warning');
  process.on('warning', (warning) => currentLogger()?.warn({ warning: warning.name, detail: warning.message }, 'Node.js warning'));
}

/** Calls stop once on SIGTERM or SIGINT. */
export function onStopSignal(stop: () => void): void {
  let called = false;
  const once = () => {
    if (called) return;
    called = true;
    stop();
  };
  process.once('SIGTERM', once);
  process.once('SIGINT', once);
}
