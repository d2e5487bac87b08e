#!/usr/bin/env node
/*
 * The `overquota` command: frontend, quota-service, check, invalidate, notify, status, config.
 *
 * Exit codes: 0 fine, 64 usage error, 78 invalid configuration (an unknown OVERQUOTA_ variable and
 * a log.file that cannot be opened included), 70 a bug (see exitOnBugs), 1 start-up failure
 * (sysexits EX_USAGE, EX_CONFIG, EX_SOFTWARE). A daemon that does not start says why in its log as
 * well as on stderr. In --stdio (spawn) mode nothing is ever written to stderr: smtpd reads it.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { ConfigError, loadSettings } from './config/load.js';
import { redactedSettings } from './config/redact.js';
import { type Settings } from './config/schema.js';
import { createLogger, reopenLogs } from './runtime/log.js';
import { exitOnBugs, reportFatal, warningsToLog } from './runtime/process.js';
import { flagIsOn, parseArgs, UsageError } from './commands/args.js';
import { COMMANDS, commandHelp, mainHelp } from './commands/help.js';
import { runFrontend } from './commands/frontend.js';
import { runQuotaService } from './commands/quota-service.js';
import { runCheck } from './commands/check.js';
import { runInvalidate, runNotify } from './commands/invalidate.js';
import { runStatus } from './commands/status.js';

const EX_USAGE = 64;
const EX_CONFIG = 78;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The commands that run as daemons, with a log of their own. */
const DAEMONS = ['frontend', 'quota-service'];

async function main(argv: string[]): Promise<number> {
  // Known before parsing: in spawn mode even a usage error must not reach stderr (smtpd reads it).
  const stdio = flagIsOn(argv, 'stdio');
  let logger: Logger | null = null;
  if (stdio) warningsToLog(() => logger);
  let daemon = false;
  const fail = (why: string, err: unknown, code: number) => {
    reportFatal(logger, !stdio, why, err);
    return code;
  };
  try {
    const args = parseArgs(argv, { boolean: ['help', 'version', 'stdio', 'json'], valued: ['config', 'size'] });
    const [command, ...rest] = args.positional;
    if (args.flags.has('version')) {
      console.log(version());
      return 0;
    }
    if (!command || !(command in COMMANDS)) {
      if (args.flags.has('help') || !command) {
        console.log(mainHelp());
        return command ? 0 : args.flags.has('help') ? 0 : EX_USAGE;
      }
      throw new UsageError(`unknown command "${command}" (commands: ${Object.keys(COMMANDS).join(', ')})`);
    }
    if (args.flags.has('help')) {
      console.log(commandHelp(command));
      return 0;
    }
    if (!['check', 'invalidate', 'notify'].includes(command) && rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
    daemon = DAEMONS.includes(command);
    const file = args.flags.get('config');
    const settings = loadSettings({ file: typeof file === 'string' ? file : undefined, args: args.settingArgs });
    const daemonLog = () => {
      logger = daemonLogger(settings.log, stdio);
      exitOnBugs(logger, !stdio);
      // logrotate's postrotate (packaging/logrotate): the renamed file keeps what was written, the
      // next line goes to a new log.file. A handler also keeps Node from opening its inspector.
      process.on('SIGUSR1', reopenLogs);
      return logger;
    };
    switch (command) {
      case 'frontend':
        return await runFrontend(settings, stdio, daemonLog());
      case 'quota-service':
        return await runQuotaService(settings, daemonLog());
      case 'check': {
        const size = args.flags.get('size');
        return await runCheck(settings, rest[0], typeof size === 'string' ? size : undefined, args.flags.has('json'));
      }
      case 'invalidate':
        return await runInvalidate(settings, rest[0]);
      case 'notify':
        return await runNotify(settings, rest);
      case 'status':
        return await runStatus(settings, args.flags.has('json'));
      case 'config':
        console.log(JSON.stringify(redactedSettings(settings), null, 2));
        return 0;
    }
    return EX_USAGE;
  } catch (err) {
    if (err instanceof UsageError) return fail(`${err.message}\n(see overquota --help)`, undefined, EX_USAGE);
    if (err instanceof ConfigError) {
      // Settings that failed validation may still say where the daemon logs: it logs there why.
      if (daemon && !logger && err.log?.file) logger = fallbackLogger(err.log, stdio);
      return fail(`invalid configuration:\n${err.message}`, undefined, EX_CONFIG);
    }
    return fail(`cannot start: ${(err as Error).message}`, err, 1);
  }
}

function daemonLogger(log: Pick<Settings['log'], 'level' | 'file'> & Partial<Settings['log']>, stdio: boolean): Logger {
  return createLogger({ level: log.level, file: log.file, stdoutIsProtocol: stdio, format: log.format });
}

/** A logger for the fatal line only, from settings that did not validate; null when it cannot be had. */
function fallbackLogger(log: { file: string; level: string }, stdio: boolean): Logger | null {
  try {
    return daemonLogger({ level: log.level === 'silent' ? 'silent' : 'fatal', file: log.file }, stdio);
  } catch {
    return null;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // A failure after some listeners opened (or Redis connected) would keep the process alive,
    // half started, holding its ports: end it, so a supervisor sees the failure and restarts it.
    if (code !== 0) process.exit(code);
  },
  () => process.exit(1),
);
