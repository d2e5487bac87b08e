#!/usr/bin/env node
/*
 * The `overquota` command: frontend, quota-service, check, config.
 *
 * Exit codes: 0 fine, 64 usage error, 78 invalid configuration (sysexits EX_USAGE, EX_CONFIG),
 * 1 start-up failure. In --stdio (spawn) mode nothing is ever written to stderr: smtpd reads it.
 */
import { readFileSync } from 'node:fs';
import { ConfigError, loadSettings, redactedSettings } from './config.js';
import { flagIsOn, parseArgs, UsageError } from './commands/args.js';
import { COMMANDS, commandHelp, mainHelp } from './commands/help.js';
import { runFrontend } from './commands/frontend.js';
import { runQuotaService } from './commands/quota-service.js';
import { runCheck } from './commands/check.js';
import { runInvalidate, runNotify } from './commands/invalidate.js';

const EX_USAGE = 64;
const EX_CONFIG = 78;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  // Known before parsing: in spawn mode even a usage error must not reach stderr (smtpd reads it).
  const stdio = flagIsOn(argv, 'stdio');
  const complain = (text: string) => {
    if (!stdio) process.stderr.write(`overquota: ${text}\n`);
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
    const file = args.flags.get('config');
    const settings = loadSettings({ file: typeof file === 'string' ? file : undefined, args: args.settingArgs });
    switch (command) {
      case 'frontend':
        return await runFrontend(settings, stdio);
      case 'quota-service':
        return await runQuotaService(settings);
      case 'check': {
        const size = args.flags.get('size');
        return await runCheck(settings, rest[0], typeof size === 'string' ? size : undefined, args.flags.has('json'));
      }
      case 'invalidate':
        return await runInvalidate(settings, rest[0]);
      case 'notify':
        return await runNotify(settings, rest);
      case 'config':
        console.log(JSON.stringify(redactedSettings(settings), null, 2));
        return 0;
    }
    return EX_USAGE;
  } catch (err) {
    if (err instanceof UsageError) {
      complain(`${err.message}\n(see overquota --help)`);
      return EX_USAGE;
    }
    if (err instanceof ConfigError) {
      complain(`invalid configuration:\n${err.message}`);
      return EX_CONFIG;
    }
    complain(`cannot start: ${(err as Error).message}`);
    return 1;
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
