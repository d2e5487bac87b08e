/*
 * Process-wide safety nets shared by the long-running commands.
 */
import type { Logger } from 'pino';

/**
 * A bug must not take the frontend down: every SMTP session behind it would get Postfix's
 * default_action. Log it loudly and keep serving; the per-request paths already catch their own.
 */
export function keepRunningOnBugs(logger: Logger): void {
  process.on('uncaughtException', (err) => logger.error({ err }, 'uncaught exception (bug); still serving'));
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection (bug); still serving'));
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
