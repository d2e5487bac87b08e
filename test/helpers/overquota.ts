/*
 * Runs the built `overquota` command (dist/cli.js) as a real process, as Postfix would see it.
 * `npm test` builds first; run `npm run build` before running one test file by hand.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/cli.js');

export interface Running {
  proc: ChildProcess;
  /** Parsed JSON log lines so far. */
  logs: Record<string, unknown>[];
  stderr(): string;
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/**
 * A frontend's admin endpoint listens on 127.0.0.1:10036 by default: tests start many frontends at
 * once and never rely on a standard port, so it is off unless a test asks for it (--admin.listen
 * or OVERQUOTA_ADMIN_LISTEN).
 */
function adminOffUnlessAsked(args: string[], env: Record<string, string>): Record<string, string> {
  if (args[0] !== 'frontend' || args.includes('--admin.listen') || 'OVERQUOTA_ADMIN_LISTEN' in env) return env;
  return { ...env, OVERQUOTA_ADMIN_LISTEN: '' };
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

/** command: how to start overquota (default: this node on dist/cli.js; the package tests run an installed one). */
export function runOverquota(args: string[], env: Record<string, string> = {}, command: string[] = [process.execPath, CLI]): Running {
  const proc = spawn(command[0]!, [...command.slice(1), ...args], { env: { ...process.env, ...adminOffUnlessAsked(args, env) }, stdio: ['pipe', 'pipe', 'pipe'] });
  running.add(proc);
  const logs: Record<string, unknown>[] = [];
  let err = '';
  let partial = '';
  const waiters: { match: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = [];
  proc.stdout!.setEncoding('utf8').on('data', (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      const parsed = JSON.parse(line) as Record<string, unknown>;
      logs.push(parsed);
      for (const w of [...waiters]) {
        if (w.match(parsed)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  });
  proc.stderr!.setEncoding('utf8').on('data', (t: string) => (err += t));
  const exited = new Promise<number | null>((resolve) =>
    proc.on('exit', (code) => {
      running.delete(proc);
      resolve(code);
    }),
  );
  return {
    proc,
    logs,
    stderr: () => err,
    waitForLog(match, timeoutMs = 10_000) {
      const seen = logs.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${err}; logs: ${JSON.stringify(logs)}`)), timeoutMs);
        waiters.push({
          match,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
        void exited.then((code) => reject(new Error(`overquota exited with ${code} before the log line; stderr: ${err}`)));
      });
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

/** Starts `overquota frontend` and waits until it listens; `listeners` are its bound policy addresses. */
export async function startFrontend(args: string[], env: Record<string, string> = {}): Promise<Running & { listeners: string[]; milterListeners: string[] }> {
  const fe = runOverquota(['frontend', '--log.level', 'debug', '--log.decisions', 'all', ...args], env);
  const ready = await fe.waitForLog((l) => l.msg === 'frontend ready');
  return Object.assign(fe, { listeners: ready.policy as string[], milterListeners: ready.milter as string[] });
}

/** Starts `overquota quota-service` on an ephemeral port and returns its base URL. */
export async function startQuotaServiceProcess(args: string[], env: Record<string, string> = {}): Promise<Running & { baseUrl: string }> {
  const qs = runOverquota(['quota-service', '--quota_service.listen', '127.0.0.1:0', ...args], env);
  const ready = await qs.waitForLog((l) => l.msg === 'quota service ready');
  return Object.assign(qs, { baseUrl: `http://${String(ready.listen)}` });
}

/** Runs a short command (check, config) to completion. */
export function runToEnd(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...adminOffUnlessAsked(args, env) } });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => (stdout += d));
    proc.stderr.on('data', (d) => (stderr += d));
    proc.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const DEV_ONLY = new Set(['typescript', 'tsx', 'esbuild', '@esbuild', '@types']);

/**
 * A copy of the built command that user nobody can run: Postfix spawn(8) refuses root, and the
 * checkout may sit under a directory nobody cannot enter. Returns the path of the copied cli.js.
 */
export async function spawnableInstall(dir: string): Promise<string> {
  const { cp, chmod } = await import('node:fs/promises');
  const root = path.resolve(path.dirname(CLI), '..');
  await cp(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
  await cp(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  await cp(path.join(root, 'node_modules'), path.join(dir, 'node_modules'), {
    recursive: true,
    filter: (src) => !DEV_ONLY.has(path.relative(path.join(root, 'node_modules'), src).split(path.sep)[0]!),
  });
  await chmod(dir, 0o755);
  return path.join(dir, 'dist', 'cli.js');
}
