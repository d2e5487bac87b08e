/*
 * Logs an operator can live with (issue 13): which decisions get a line (log.decisions), log.file
 * reopened on SIGUSR1 for logrotate, the text format beside Postfix's mail log, lifecycle lines
 * at the right level, and no "redis unavailable" warning for our own clean stop. A log.file that
 * stops taking lines (a hung disk, here a FIFO nobody reads) holds up no mail, and what it drops
 * is reported in the configured format.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BatchedDestination, fileSink } from '../src/runtime/log.js';
import { textLineOf } from '../src/runtime/text.js';
import { runOverquota, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { redisUnavailable, startRedis } from './helpers/redis.js';
import { tempDir, type TempDir } from './helpers/tmp.js';

let dir: TempDir;
let mail: string;
const cleanups: (() => Promise<unknown> | void)[] = [];

before(async () => {
  dir = await tempDir('oq-logs-');
  mail = path.join(dir.path, 'mail');
  await fs.mkdir(mail);
  await fs.writeFile(path.join(mail, 'full'), Buffer.alloc(5000));
  await fs.writeFile(path.join(mail, 'room'), Buffer.alloc(10));
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await dir.cleanup();
});

/** A frontend as an operator starts it: the defaults, but for the store and a free port. */
async function frontend(args: string[]): Promise<Running & { listener: string }> {
  const fe = runOverquota(['frontend', '--policy.listen', 'inet:127.0.0.1:0', '--store.path', mail, '--store.limit', '1000', ...args]);
  cleanups.push(() => fe.stop());
  return Object.assign(fe, { listener: '' });
}

/** The lines of a log file once it has `count` lines matching `match` (it is written in batches). */
async function linesOf(file: string, match: (line: string) => boolean, count = 1): Promise<string[]> {
  for (let i = 0; i < 100; i++) {
    const text = await fs.readFile(file, 'utf8').catch(() => '');
    const lines = text.split('\n').filter(Boolean);
    if (lines.filter(match).length >= count) return lines;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${file}: fewer than ${count} matching lines:\n${await fs.readFile(file, 'utf8').catch(() => '')}`);
}

const readyIn = async (file: string) => JSON.parse((await linesOf(file, (l) => l.includes('frontend ready'))).find((l) => l.includes('frontend ready'))!) as { policy: string[] };

async function askFullAndRoom(file: string): Promise<void> {
  const ready = await readyIn(file);
  const c = await PolicyClient.connect(ready.policy[0]!);
  cleanups.push(() => c.close());
  assert.equal(await c.ask(rcpt('room@example.com', { queue_id: 'ROOM1' })), 'DUNNO');
  assert.equal(await c.ask(rcpt('full@example.com', { queue_id: 'FULL1' })), '452 4.2.2 Mailbox full, try again later');
}

test('by default only refusals get a decision line (an accepted recipient costs none); all and none as asked', async () => {
  const files: Record<string, string> = {};
  for (const which of ['default', 'all', 'none']) {
    files[which] = path.join(dir.path, `decisions-${which}.log`);
    await frontend(['--log.file', files[which]!, ...(which === 'default' ? [] : ['--log.decisions', which])]);
    await askFullAndRoom(files[which]!);
  }
  const decisions = async (file: string, wait: boolean) => {
    if (wait) await linesOf(file, (l) => l.includes('"queue_id":"FULL1"'));
    else await new Promise((r) => setTimeout(r, 200));
    return (await fs.readFile(file, 'utf8')).split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l).queue_id);
  };
  assert.deepEqual(await decisions(files.default!, true), ['FULL1']);
  assert.deepEqual(await decisions(files.all!, true), ['ROOM1', 'FULL1']);
  assert.deepEqual(await decisions(files.none!, false), []);
});

test('SIGUSR1 reopens log.file: after logrotate renames it, new lines go to a new file and none are lost', async () => {
  const file = path.join(dir.path, 'rotated.log');
  const fe = await frontend(['--log.file', file, '--log.decisions', 'all']);
  await askFullAndRoom(file);
  await linesOf(file, (l) => l.includes('"queue_id":"FULL1"'));
  await fs.rename(file, `${file}.1`);
  fe.proc.kill('SIGUSR1');
  // The rename and the signal race the batch timer: whatever was written before the signal is in
  // the old file, everything after in the new one.
  await new Promise((r) => setTimeout(r, 100));
  const c = await PolicyClient.connect((JSON.parse((await fs.readFile(`${file}.1`, 'utf8')).split('\n').find((l) => l.includes('frontend ready'))!) as { policy: string[] }).policy[0]!);
  cleanups.push(() => c.close());
  assert.equal(await c.ask(rcpt('full@example.com', { queue_id: 'AFTER' })), '452 4.2.2 Mailbox full, try again later');
  const fresh = await linesOf(file, (l) => l.includes('"queue_id":"AFTER"'));
  assert.ok(fresh.every((l) => !l.includes('"queue_id":"FULL1"')), 'the new file holds only what came after');
  const old = (await fs.readFile(`${file}.1`, 'utf8')).split('\n');
  assert.ok(old.some((l) => l.includes('"queue_id":"FULL1"')), 'the rotated file keeps what was written before');
  assert.equal(fe.proc.exitCode, null, 'SIGUSR1 does not stop the daemon (nor opens Node\'s inspector)');
});

test('log.format text: one line per event in the style of Postfix\'s mail log', async () => {
  const file = path.join(dir.path, 'text.log');
  const fe = await frontend(['--log.file', file, '--log.format', 'text', '--log.decisions', 'all']);
  const readyLine = (await linesOf(file, (l) => l.includes('frontend ready'))).find((l) => l.includes('frontend ready'))!;
  assert.match(readyLine, /^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ overquota\[\d+\]: frontend ready \(policy=/);
  const port = /inet:127\.0\.0\.1:(\d+)/.exec(readyLine)![1];
  const c = await PolicyClient.connect(`inet:127.0.0.1:${port}`);
  cleanups.push(() => c.close());
  await c.ask(rcpt('full@example.com', { queue_id: '4F2A1B3C' }));
  await c.ask(rcpt('room@example.com'));
  const lines = await linesOf(file, (l) => / (defer|pass): RCPT/.test(l), 2);
  const defer = lines.find((l) => l.includes('defer:'))!;
  assert.match(defer, /overquota\[\d+\]: 4F2A1B3C: defer: RCPT from 192\.0\.2\.10 to=<full@example\.com>: 452 4\.2\.2 Mailbox full, try again later \(usage 4\.9K of 1000, source mbox:\S+, cache (miss|hit), [\d.]+ ms\)$/);
  assert.match(lines.find((l) => l.includes('pass:'))!, /: NOQUEUE: pass: RCPT from 192\.0\.2\.10 to=<room@example\.com>: DUNNO \(usage 10 of 1000,/);
  await fe.stop();
  const all = await fs.readFile(file, 'utf8');
  assert.match(all, /overquota\[\d+\]: stopping: no new connections/);
  assert.match(all, /overquota\[\d+\]: stopped\n/);
});

test('lifecycle lines: started with its listeners, sources and Redis mode; stopping and stopped; all at info', async () => {
  const file = path.join(dir.path, 'lifecycle.log');
  const fe = await frontend(['--log.file', file]);
  const ready = JSON.parse((await linesOf(file, (l) => l.includes('frontend ready'))).find((l) => l.includes('frontend ready'))!);
  assert.equal(ready.level, 30);
  assert.deepEqual([ready.redis, ready.reservations, ready.decisions], ['off', true, 'refusals']);
  assert.match(ready.sources[0], /^mbox:/);
  await fe.stop();
  const lines = (await fs.readFile(file, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.deepEqual(lines.filter((l) => /^stop/.test(l.msg)).map((l) => [l.level, l.msg.split(':')[0]]), [[30, 'stopping'], [30, 'stopped']]);
});

test('a clean stop with Redis logs no "redis unavailable" warning; Redis coming back is info', async () => {
  const why = redisUnavailable();
  if (why) throw new Error(why);
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const file = path.join(dir.path, 'redis.log');
  const fe = await frontend(['--log.file', file, '--redis.url', redis.url]);
  await linesOf(file, (l) => l.includes('redis connected'), 2);
  await redis.kill();
  await linesOf(file, (l) => l.includes('redis unavailable'));
  await redis.restart();
  const back = (await linesOf(file, (l) => l.includes('redis is back'))).map((l) => JSON.parse(l)).find((l) => l.msg.startsWith('redis is back'));
  assert.equal(back.level, 30, 'good news is info');
  const before = (await fs.readFile(file, 'utf8')).split('\n').filter((l) => l.includes('redis unavailable')).length;
  await fe.stop();
  const after = (await fs.readFile(file, 'utf8')).split('\n').filter((l) => l.includes('redis unavailable')).length;
  assert.equal(after, before, 'our own stop is no outage');
});

test('a reply configured in lower case ("warn ...") is a warning: logged under log.decisions refusals, as warn', async () => {
  const file = path.join(dir.path, 'warn.log');
  await frontend(['--log.file', file, '--log.format', 'text', '--replies.over_quota', 'warn mailbox full']);
  const readyLine = (await linesOf(file, (l) => l.includes('frontend ready'))).find((l) => l.includes('frontend ready'))!;
  const c = await PolicyClient.connect(`inet:127.0.0.1:${/inet:127\.0\.0\.1:(\d+)/.exec(readyLine)![1]}`);
  cleanups.push(() => c.close());
  assert.equal(await c.ask(rcpt('room@example.com', { queue_id: 'ROOM2' })), 'DUNNO');
  assert.equal(await c.ask(rcpt('full@example.com', { queue_id: 'WARN1' })), 'warn mailbox full');
  const lines = await linesOf(file, (l) => l.includes('WARN1'));
  assert.match(lines.find((l) => l.includes('WARN1'))!, /overquota\[\d+\]: WARN1: warn: RCPT from 192\.0\.2\.10 to=<full@example\.com>: warn mailbox full \(usage 4\.9K of 1000,/);
  assert.ok(!lines.some((l) => l.includes('ROOM2')), 'an accepted recipient gets no line by default');
});

test('a HOLD reply sends the mail to the hold queue: logged under log.decisions refusals, as hold', async () => {
  const file = path.join(dir.path, 'hold.log');
  await frontend(['--log.file', file, '--log.format', 'text', '--replies.over_quota', 'HOLD mailbox full']);
  const readyLine = (await linesOf(file, (l) => l.includes('frontend ready'))).find((l) => l.includes('frontend ready'))!;
  const c = await PolicyClient.connect(`inet:127.0.0.1:${/inet:127\.0\.0\.1:(\d+)/.exec(readyLine)![1]}`);
  cleanups.push(() => c.close());
  assert.equal(await c.ask(rcpt('full@example.com', { queue_id: 'HOLD1' })), 'HOLD mailbox full');
  const lines = await linesOf(file, (l) => l.includes('HOLD1'));
  assert.match(lines.find((l) => l.includes('HOLD1'))!, /overquota\[\d+\]: HOLD1: hold: RCPT from 192\.0\.2\.10 to=<full@example\.com>: HOLD mailbox full/);
});

/** Reads a FIFO to its end (or until `until` is in what was read), in the background. */
function drain(handle: fs.FileHandle, until?: string): Promise<string> {
  return (async () => {
    const chunks: Buffer[] = [];
    const buf = Buffer.alloc(1024 * 1024);
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(Buffer.from(buf.subarray(0, bytesRead)));
      // The last chunks together: `until` may straddle two reads.
      if (until !== undefined && Buffer.concat(chunks.slice(-2)).includes(until)) break;
    }
    return Buffer.concat(chunks).toString('utf8');
  })();
}

/** A frontend whose log.file is a FIFO read here: read up to its ready line, then left to the test. */
async function frontendLoggingToFifo(name: string) {
  const fifo = path.join(dir.path, name);
  execFileSync('mkfifo', [fifo]);
  // Opened before the frontend opens it for writing: both opens wait for the other.
  const reader = fs.open(fifo, 'r');
  const fe = await frontend(['--log.file', fifo, '--log.decisions', 'all']);
  const handle = await reader;
  cleanups.push(() => handle.close());
  const start = await drain(handle, 'frontend ready');
  const c = await PolicyClient.connect((JSON.parse(start.split('\n').find((l) => l.includes('frontend ready'))!) as { policy: string[] }).policy[0]!);
  return { fe, handle, c };
}

test('a log.file nobody takes lines from (a FIFO, as a hung disk would) holds up no recipient; what waited is written once it moves', async () => {
  const { fe, handle, c } = await frontendLoggingToFifo('stalled-frontend.fifo');
  cleanups.push(() => c.close());
  // Nobody reads now: the pipe holds 64 KiB, ~3.5 KB a decision line with this sender. Each answer
  // must still come; with the event loop stuck in a write none would (the deadline says so).
  const sender = `${'s'.repeat(3000)}@example.net`;
  for (let i = 0; i < 100; i++) {
    const answer = await Promise.race([
      c.ask(rcpt('full@example.com', { queue_id: `STALL${i}`, sender })),
      new Promise<string>((resolve) => setTimeout(() => resolve('no answer within 20 s'), 20_000).unref()),
    ]);
    assert.equal(answer, '452 4.2.2 Mailbox full, try again later', `request ${i}, the log stalled`);
  }
  const rest = await drain(handle, '"queue_id":"STALL99"');
  for (const id of ['STALL0', 'STALL50', 'STALL99']) assert.ok(rest.includes(`"queue_id":"${id}"`), `${id}'s line is written once the reader is back`);
  void drain(handle);
  await fe.stop();
});

test('a frontend whose log.file has stalled still stops when told: SIGTERM, exit 0, lines it cannot write given up', async () => {
  const { fe, handle, c } = await frontendLoggingToFifo('stalled-stop.fifo');
  // More than the pipe holds, nobody reading: the exit's last lines cannot go out.
  const sender = `${'s'.repeat(3000)}@example.net`;
  for (let i = 0; i < 40; i++) await c.ask(rcpt('full@example.com', { queue_id: `STOP${i}`, sender }));
  await c.close();
  const code = await Promise.race([fe.stop(), new Promise<string>((resolve) => setTimeout(() => resolve('still running 20 s after SIGTERM'), 20_000).unref())]);
  assert.equal(code, 0, 'a write that cannot go out must not hold the exit (systemd would kill it after TimeoutStopSec)');
});

test('past the cap a stalled log.file drops lines, and says how many in log.format (text here), once it writes again', async () => {
  const fifo = path.join(dir.path, 'stalled.fifo');
  execFileSync('mkfifo', [fifo]);
  const reader = fs.open(fifo, 'r');
  const sink = fileSink(fifo);
  const handle = await reader;
  cleanups.push(() => handle.close());
  const out = new BatchedDestination(sink, textLineOf(false));
  const MiB = 1024 * 1024;
  const line = (what: string) => `${JSON.stringify({ level: 30, time: Date.now(), pid: 7, msg: what })}\n`;
  // 20 lines of 1 MiB while nobody reads: the sink holds 16 MiB waiting (MAX_BUFFERED_BYTES), and
  // the 17th batch on finds it past that: those are dropped. The test itself goes on meanwhile.
  for (let i = 0; i < 20; i++) {
    out.write(line(`big ${i} ${'x'.repeat(MiB)}`));
    out.flush();
  }
  assert.ok(sink.backlog() > 16 * MiB, `backlog ${sink.backlog()}`);
  const read = drain(handle, 'after the stall');
  while (sink.backlog() > 0) await new Promise((r) => setTimeout(r, 20));
  out.write(line('after the stall'));
  out.flush();
  const lines = (await read).split('\n').filter(Boolean);
  const written = lines.slice(0, -2).map((l) => /^overquota\[7\]: big (\d+) x+$/.exec(l)?.[1]);
  const dropped = 20 - written.length;
  assert.ok(dropped > 0 && written.length >= 15, `${written.length} of 20 written`);
  assert.deepEqual(written, Array.from({ length: written.length }, (_, i) => String(i)), 'the first ones, whole, in order');
  assert.deepEqual(lines.slice(-2), [
    `overquota[${process.pid}]: warning: log lines dropped: the log could not be written (a slow reader or a full disk) (dropped=${dropped})`,
    'overquota[7]: after the stall',
  ]);
});
