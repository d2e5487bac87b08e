/*
 * How a daemon stops and what it leaves in its log: a failed start says why in log.file and on
 * stderr (only in log.file in spawn mode), a log.file that cannot be opened stops start-up, a bug
 * is logged with its stack before the process exits 70, and in spawn mode Node's own warnings go
 * to log.file instead of smtpd's stderr. Bugs and warnings are planted through a --import module,
 * from outside the product: a signal makes it throw or warn inside the running process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runOverquota, runToEnd, type Running } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';

let tmp: TempDir;
let plantBug: string;
let plantWarning: string;
before(async () => {
  tmp = await tempDir('overquota-exit-');
  await fs.mkdir(path.join(tmp.path, 'mail'));
  await fs.writeFile(path.join(tmp.path, 'mail', 'full'), Buffer.alloc(5000));
  plantBug = path.join(tmp.path, 'plant-bug.mjs');
  await fs.writeFile(plantBug, "process.on('SIGUSR2', () => { throw new Error('planted bug'); });\n");
  plantWarning = path.join(tmp.path, 'plant-warning.mjs');
  await fs.writeFile(plantWarning, "process.on('SIGUSR2', () => process.emitWarning('planted warning'));\n");
});
after(() => tmp.cleanup());

/** Without the caller's OVERQUOTA_* variables (they would be settings, or refused). */
function env(extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OVERQUOTA_') && v !== undefined) out[k] = v;
  return { ...out, ...extra };
}

const store = () => ['--store.path', path.join(tmp.path, 'mail'), '--store.limit', '1000'];

async function logLines(file: string): Promise<Record<string, unknown>[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Polls log.file (lines are written at most 50 ms late) until a line matches or `give up` says so. */
async function waitForLine(file: string, match: (l: Record<string, unknown>) => boolean, giveUp: () => boolean = () => false): Promise<void> {
  for (let i = 0; i < 500 && !giveUp(); i++) {
    if ((await logLines(file)).some(match)) return;
    await sleep(20);
  }
}

test('a daemon that cannot start says why at fatal in log.file and on stderr', async () => {
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const port = (holder.address() as net.AddressInfo).port;
  try {
    const logFile = path.join(tmp.path, 'in-use.log');
    const r = await runToEnd(['frontend', ...store(), '--policy.listen', `inet:127.0.0.1:${port}`, '--log.file', logFile], env());
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot start: listen EADDRINUSE/);
    const fatal = (await logLines(logFile)).find((l) => l.level === 60);
    assert.match(String(fatal?.msg), /^cannot start: listen EADDRINUSE/);
  } finally {
    holder.close();
  }
});

test('in spawn mode a failed start is logged to log.file and nothing reaches stderr', async () => {
  const logFile = path.join(tmp.path, 'spawn-fail.log');
  const r = await runToEnd(['frontend', '--stdio', ...store(), '--aliases.file', path.join(tmp.path, 'no-such-map'), '--log.file', logFile], env());
  assert.equal(r.code, 1);
  assert.equal(r.stderr, '');
  assert.match(String((await logLines(logFile)).find((l) => l.level === 60)?.msg), /^cannot start: ENOENT.*no-such-map/);

  // An invalid setting too, when the settings name the log.file.
  const configLog = path.join(tmp.path, 'spawn-config.log');
  const bad = await runToEnd(['frontend', '--stdio', '--log.file', configLog, '--dry_run', 'maybe'], env());
  assert.equal(bad.code, 78);
  assert.equal(bad.stderr, '');
  assert.match(String((await logLines(configLog)).find((l) => l.level === 60)?.msg), /invalid configuration:\ndry_run: must be true or false/);
});

/** The exit code, or (a daemon still running after a bound) the one it stops with on SIGTERM. */
async function exitCode(run: Running, boundMs = 10_000): Promise<number | null> {
  if (run.proc.exitCode === null) await Promise.race([new Promise((resolve) => run.proc.once('exit', resolve)), sleep(boundMs)]);
  return run.stop();
}

test('a log.file that cannot be opened stops start-up with exit 78, naming it', async () => {
  for (const command of ['frontend', 'quota-service']) {
    const r = runOverquota([command, ...store(), '--policy.listen', 'inet:127.0.0.1:0', '--quota_service.listen', '127.0.0.1:0', '--log.file', tmp.path], env());
    assert.equal(await exitCode(r), 78, `${command}: ${r.stderr()}`);
    assert.match(r.stderr(), new RegExp(`log\\.file: cannot open ${tmp.path} for writing: EISDIR`));
  }
});

test('a bug (an uncaught exception) is logged at fatal with its stack, and the frontend exits 70', async () => {
  const logFile = path.join(tmp.path, 'bug.log');
  const fe = runOverquota(['frontend', ...store(), '--policy.listen', 'inet:127.0.0.1:0', '--log.file', logFile], env({ NODE_OPTIONS: `--import=${plantBug}` }));
  await waitForLine(logFile, (l) => l.msg === 'frontend ready', () => fe.proc.exitCode !== null);
  fe.proc.kill('SIGUSR2');
  await waitForLine(logFile, (l) => Number(l.level) >= 50, () => fe.proc.exitCode !== null);
  assert.equal(await exitCode(fe), 70);
  const fatal = (await logLines(logFile)).find((l) => l.level === 60);
  assert.match(String(fatal?.msg), /uncaught exception \(a bug\), exiting/);
  assert.match(String((fatal?.err as { stack?: string } | undefined)?.stack), /^Error: planted bug\n\s+at /);
  assert.match(fe.stderr(), /uncaught exception \(a bug\).*Error: planted bug/s);
});

test("in spawn mode Node's own warnings go to log.file, never to smtpd's stderr", async () => {
  const logFile = path.join(tmp.path, 'warning.log');
  const fe = runOverquota(['frontend', '--stdio', ...store(), '--log.file', logFile], env({ NODE_OPTIONS: `--import=${plantWarning}` }));
  let answers = '';
  fe.proc.stdout!.on('data', (d: string) => (answers += d));
  fe.proc.stdin!.write('protocol_state=RCPT\nrecipient=full@example.com\n\n');
  while (!answers.includes('\n\n') && fe.proc.exitCode === null) await sleep(20);
  fe.proc.kill('SIGUSR2');
  const warned = (l: Record<string, unknown>) => l.msg === 'Node.js warning' && l.detail === 'planted warning';
  await waitForLine(logFile, warned, () => fe.stderr() !== '');
  fe.proc.stdin!.end();
  const code = await exitCode(fe);
  assert.equal(answers, 'action=452 4.2.2 Mailbox full, try again later\n\n');
  assert.equal(fe.stderr(), '');
  assert.equal(code, 0);
  assert.ok((await logLines(logFile)).some(warned), 'the warning is in log.file');
});
