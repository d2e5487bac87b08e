// Test helper: run a private, throw-away Haraka (npm `Haraka`, pinned) on a free loopback port with
// this repository's packages/haraka-plugin-overquota loaded as an installed plugin, every recipient
// at example.com taken (rcpt_to.in_host_list) and every message discarded (queue/discard).
//
// Haraka and its dependencies are installed once per machine and version into a cache outside the
// repository ($OVERQUOTA_HARAKA_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/overquota/haraka/VERSION)
// with `npm install --prefix`, install scripts off (none is needed for SMTP: one builds the
// optional syslog module). A half-finished install is never used: npm works in a scratch folder
// that is renamed into place when complete.
//
// Layout of an instance DIR (Haraka's -c folder, its HARAKA): config/ (smtp.ini with the port,
// plugins, host_list, me, log.ini, connection.ini, and the test's overquota.ini), plugins/no_rdns.js
// (names every client, so Haraka never asks DNS), node_modules/
// haraka-plugin-overquota (a symlink to the repository's package folder: the code under test, as
// an operator's `npm install` would place it), output.log (Haraka's log: it logs to stdout).
// Haraka is one Node process here (no cluster), run under the perl supervisor of supervised.ts:
// stop() sends SIGTERM (then SIGKILL) and removes DIR, as does the test process dying without it.
import { execFile } from 'node:child_process';
import { copyFile, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';
import { tempDir } from './tmp.js';
import { probeGreeting, startSupervised, stopSupervised, supervisedStop, waitReady, withPortRetry, type Supervised } from './supervised.js';

/** The Haraka the tests run: pinned, so a new release cannot change a test's meaning unseen. */
export const HARAKA_VERSION = '3.3.4';
/** The plugin under test: this repository's package folder. */
export const PLUGIN_DIR = fileURLToPath(new URL('../../packages/haraka-plugin-overquota/', import.meta.url));

/** Bounds, in ms. */
const INSTALL_TIMEOUT_MS = 300_000;
const READY_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 5_000;

/** Where Haraka HARAKA_VERSION is installed (CACHE/node_modules/Haraka). */
export function harakaCacheDir(): string {
  const base = process.env.OVERQUOTA_HARAKA_CACHE || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'overquota', 'haraka');
  return join(base, HARAKA_VERSION);
}

const harakaBin = (cache: string): string => join(cache, 'node_modules', 'Haraka', 'bin', 'haraka');

let ensured: Promise<string> | undefined;

/** Install Haraka into the cache unless there; resolves to the cache folder. Once per process. */
export function ensureHaraka(): Promise<string> {
  ensured ??= (async () => {
    const cache = harakaCacheDir();
    if (existsSync(harakaBin(cache))) return cache;
    const scratch = `${cache}.partial-${process.pid}`;
    await rm(scratch, { recursive: true, force: true });
    await mkdir(scratch, { recursive: true });
    await new Promise<void>((resolve, reject) => {
      const args = ['install', '--prefix', scratch, '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--no-package-lock', `Haraka@${HARAKA_VERSION}`];
      execFile('npm', args, { timeout: INSTALL_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
        if (err) reject(new Error(`ensureHaraka: npm ${args.join(' ')} failed (it needs the npm registry once): ${(stderr || stdout || err.message).trim()}`));
        else resolve();
      });
    });
    if (!existsSync(harakaBin(scratch))) throw new Error(`ensureHaraka: npm installed no ${harakaBin(scratch)}`);
    // Another test process may have finished first: keep its copy.
    await rename(scratch, cache).catch(async (err: NodeJS.ErrnoException) => {
      await rm(scratch, { recursive: true, force: true });
      if (!existsSync(harakaBin(cache))) throw err;
    });
    return cache;
  })();
  ensured.catch(() => (ensured = undefined));
  return ensured;
}

export interface HarakaInstance {
  smtpPort: number;
  dir: string;
  /** Haraka's log so far (its stdout and stderr). */
  log(): Promise<string>;
  /** SIGTERM (then SIGKILL) and remove DIR. Idempotent. */
  stop(): Promise<void>;
}

export interface StartHarakaOptions {
  /** Text of config/overquota.ini in the instance: where the policy service listens. */
  overquotaIni: string;
}

class PortInUse extends Error {}

const tail = (text: string, lines = 40): string => text.split('\n').slice(-lines).join('\n');

/** Start a private Haraka; the plugin asks the policy service that `overquotaIni` names. */
export async function startHaraka(opts: StartHarakaOptions): Promise<HarakaInstance> {
  const cache = await ensureHaraka();
  // The free port can be taken between freePort() and Haraka's listen(): start over on another.
  return withPortRetry(
    () => startOnce(cache, opts),
    (err) => err instanceof PortInUse,
  );
}

async function startOnce(cache: string, opts: StartHarakaOptions): Promise<HarakaInstance> {
  const tmp = await tempDir('overquota-haraka-');
  const dir = tmp.path;
  let entry: Supervised | undefined;
  try {
    const smtpPort = await freePort();
    const config = join(dir, 'config');
    await mkdir(config);
    await mkdir(join(dir, 'node_modules'));
    await symlink(PLUGIN_DIR, join(dir, 'node_modules', 'haraka-plugin-overquota'));
    // overquota before the recipient check on purpose: it runs on rcpt_ok, so order must not matter.
    await writeFile(join(config, 'plugins'), 'no_rdns\noverquota\nrcpt_to.in_host_list\nqueue/discard\n');
    // Haraka asks DNS for the client's name unless a lookup_rdns hook answers: no DNS in tests.
    await mkdir(join(dir, 'plugins'));
    await writeFile(join(dir, 'plugins', 'no_rdns.js'), "exports.hook_lookup_rdns = (next) => next(OK, 'client.example.org')\n");
    // What `haraka -i` copies: the greeting and limits have no defaults in the code.
    await copyFile(join(cache, 'node_modules', 'Haraka', 'config', 'connection.ini'), join(config, 'connection.ini'));
    await writeFile(join(config, 'smtp.ini'), `[main]\nlisten=127.0.0.1:${smtpPort}\n`);
    await writeFile(join(config, 'host_list'), 'example.com\n');
    await writeFile(join(config, 'me'), 'mta.example.com\n');
    await writeFile(join(config, 'log.ini'), '[main]\nlevel=info\ntimestamps=false\n');
    await writeFile(join(config, 'overquota.ini'), opts.overquotaIni);

    const outputPath = join(dir, 'output.log');
    // queue/discard discards only when told to, so that no test can lose real mail by accident.
    const command = ['/usr/bin/env', 'YES_REALLY_DO_DISCARD=1', process.execPath, harakaBin(cache), '-c', dir];
    entry = await startSupervised({ name: 'haraka', dir, command, outputFile: outputPath });
    const log = (): Promise<string> => readFile(outputPath, 'utf8').catch(() => '');
    await waitReady(entry.supervisor, {
      timeoutMs: READY_TIMEOUT_MS,
      intervalMs: 50,
      probe: () => probeGreeting(smtpPort, /^220 /),
      onExit: async (status) => {
        const text = await log();
        if (/EADDRINUSE/.test(text)) return new PortInUse(`startHaraka: 127.0.0.1:${smtpPort} already in use`);
        return new Error(`startHaraka: haraka exited (${status}) during startup\n${tail(text)}`);
      },
      onTimeout: async () => new Error(`startHaraka: no SMTP greeting on 127.0.0.1:${smtpPort} within ${READY_TIMEOUT_MS} ms\n${tail(await log())}`),
    });
    const stop = supervisedStop(entry, { label: 'startHaraka', graceMs: STOP_GRACE_MS, cleanup: tmp.cleanup });
    return { smtpPort, dir, log, stop };
  } catch (err) {
    if (entry) await stopSupervised(entry, { graceMs: STOP_GRACE_MS });
    await tmp.cleanup();
    throw err;
  }
}
