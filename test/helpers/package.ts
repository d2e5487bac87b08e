/*
 * Shared by the packaging tests (package-npm, package-deb, systemd-units): running a command to
 * its end, copying the repository as a fresh clone has it, reading systemd unit files, and an
 * overlay over the cached clean Debian root (scripts/debian-root.sh) that a test may change freely.
 * Never changes the working tree nor the cached root.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Building the .deb compresses ~110 MB (about a minute here); making the Debian root ~30 s. */
export const SLOW_COMMAND_MS = 600_000;

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (never throws on a non-zero exit: the caller asserts). */
export function run(command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Finished> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: opts.cwd, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr: stderr + (err && code === null ? `\n${err.message}` : '') });
    });
  });
}

/** Like run(), but a non-zero exit is an error naming the command and its output. */
export async function runOk(command: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(command, args, opts);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * The repository's files as a fresh clone has them (tracked and new files, nothing git ignores:
 * no dist/, no node_modules/), copied into dir, with node_modules linked to the repository's so
 * the build tools are there as after `npm ci`.
 */
export async function cloneLikeCopy(dir: string): Promise<void> {
  const listed = await runOk('git', ['-C', REPO, 'ls-files', '-z', '--cached', '--others', '--exclude-standard']);
  for (const file of listed.split('\0').filter(Boolean)) {
    const from = path.join(REPO, file);
    // A file deleted in the working tree but still in the index is not in a clone of this tree.
    const st = await fs.lstat(from).catch(() => null);
    if (!st || st.isDirectory()) continue;
    await fs.mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await fs.cp(from, path.join(dir, file), { verbatimSymlinks: true });
  }
  await fs.symlink(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
}

/** A unit file's directives: name -> every value it is given, in order (comments dropped). */
export function unitDirectives(text: string): Map<string, string[]> {
  const directives = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    directives.set(m[1]!, [...(directives.get(m[1]!) ?? []), m[2]!.trim()]);
  }
  return directives;
}

/** The one value of a directive given once; throws when it is missing or repeated. */
export function single(directives: Map<string, string[]>, name: string): string {
  const values = directives.get(name) ?? [];
  if (values.length !== 1) throw new Error(`${name}= is given ${values.length} times, expected once`);
  return values[0]!;
}

export const UNIT_DIR = path.join(REPO, 'packaging', 'systemd');
export const UNITS = ['overquota-frontend.service', 'overquota-quota-service.service'];

/** An overlay over the cached clean Debian root: changes land in a scratch folder, never in the cache. */
export interface ScratchRoot {
  /** The merged tree: chroot here. */
  root: string;
  /** The cached clean root underneath (read only). */
  clean: string;
  /** Only what changed relative to the clean root (overlayfs's upper layer). */
  changes: string;
  remove(): Promise<void>;
}

export async function scratchDebianRoot(scratch: string, suite = 'bookworm'): Promise<ScratchRoot> {
  const clean = (await runOk('bash', [path.join(REPO, 'scripts', 'debian-root.sh'), suite], { timeoutMs: SLOW_COMMAND_MS })).trim();
  const [changes, work, root] = ['upper', 'work', 'merged'].map((d) => path.join(scratch, d)) as [string, string, string];
  for (const d of [changes, work, root]) await fs.mkdir(d, { recursive: true });
  await runOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${clean},upperdir=${changes},workdir=${work}`, root]);
  let mounted = true;
  return {
    root,
    clean,
    changes,
    async remove() {
      if (mounted) await runOk('umount', ['--lazy', root]);
      mounted = false;
    },
  };
}
