import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { startFrontend, runOverquota, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend, cgiAnswer } from './helpers/http-backend.js';

let dir: string;
let mail: string;
const cleanups: (() => Promise<unknown> | void)[] = [];

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'oq-policy-'));
  mail = path.join(dir, 'mail');
  await fs.mkdir(mail);
  await fs.writeFile(path.join(mail, 'full'), Buffer.alloc(2000));
  await fs.writeFile(path.join(mail, 'room'), Buffer.alloc(300));
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await fs.rm(dir, { recursive: true, force: true });
});

const store = () => ['--store.path', mail, '--store.limit', '1000'];

async function frontend(args: string[], env: Record<string, string> = {}) {
  const fe = await startFrontend([...store(), ...args], env);
  cleanups.push(() => fe.stop());
  return fe;
}

async function client(address: string) {
  const c = await PolicyClient.connect(address);
  cleanups.push(() => c.close());
  return c;
}

test('over inet, a full mailbox gets 452 4.2.2 and a mailbox with room gets DUNNO, on one persistent connection', async () => {
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0']);
  const c = await client(fe.listeners[0]!);
  assert.equal(await c.ask(rcpt('full@example.com')), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await c.ask(rcpt('room@example.com')), 'DUNNO');
  assert.equal(await c.ask(rcpt('room@example.com', { size: 800 })), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await c.ask(rcpt('room@example.com', { size: 5000 })), '552 5.2.3 Message is larger than the mailbox quota');
  assert.equal(await c.ask({ ...rcpt('full@example.com'), protocol_state: 'DATA' }), 'DUNNO');
  assert.equal(await c.ask({ protocol_state: 'RCPT' }), 'DUNNO');
});

test('one log line per decision names queue id, client, sender, recipient, mailbox, verdict, source, cache and time', async () => {
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0']);
  const c = await client(fe.listeners[0]!);
  await c.ask(rcpt('Full+tag@Example.com', { queue_id: 'ABC123' }));
  const line = await fe.waitForLog((l) => l.msg === 'decision' && l.queue_id === 'ABC123');
  assert.equal(line.client_address, '192.0.2.10');
  assert.equal(line.sender, 'sender@example.net');
  assert.equal(line.recipient, 'Full+tag@Example.com');
  assert.equal(line.mailbox, 'full');
  assert.equal(line.verdict, 'over_quota');
  assert.equal(line.cache, 'miss');
  assert.match(String(line.source), /^mbox:/);
  assert.equal(typeof line.ms, 'number');
});

test('END-OF-MESSAGE with a recipient is checked with the real size only when enabled', async () => {
  const eom = { ...rcpt('room@example.com'), protocol_state: 'END-OF-MESSAGE', size: 900 };
  const off = await frontend(['--policy.listen', 'inet:127.0.0.1:0']);
  assert.equal(await (await client(off.listeners[0]!)).ask(eom), 'DUNNO');
  const on = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--policy.check_end_of_message', 'true']);
  assert.equal(await (await client(on.listeners[0]!)).ask(eom), '452 4.2.2 Mailbox full, try again later');
});

test('unix and IPv6 listeners serve beside inet, and the unix socket gets the configured mode', async () => {
  const sock = path.join(dir, 'policy.sock');
  const fe = await frontend(['--policy.listen', `inet:127.0.0.1:0,inet:[::1]:0,unix:${sock}`, '--policy.socket_mode', '0660']);
  assert.equal(fe.listeners.length, 3);
  assert.match(fe.listeners[1]!, /^inet:\[::1\]:\d+$/);
  for (const l of fe.listeners) assert.equal(await (await client(l)).ask(rcpt('full@example.com')), '452 4.2.2 Mailbox full, try again later', l);
  assert.equal((await fs.stat(sock)).mode & 0o777, 0o660);
});

test('a stale unix socket left by a killed server is replaced; a regular file there is refused', async () => {
  const sock = path.join(dir, 'stale.sock');
  const holder = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => console.log('up'))`]);
  await new Promise((resolve) => holder.stdout.once('data', resolve));
  holder.kill('SIGKILL');
  await new Promise((resolve) => holder.once('exit', resolve));
  assert.ok((await fs.lstat(sock)).isSocket());
  const fe = await frontend(['--policy.listen', `unix:${sock}`]);
  assert.equal(await (await client(fe.listeners[0]!)).ask(rcpt('room@example.com')), 'DUNNO');

  const plain = path.join(dir, 'not-a-socket');
  await fs.writeFile(plain, 'keep me');
  const refused = runOverquota(['frontend', ...store(), '--policy.listen', `unix:${plain}`]);
  assert.equal(await new Promise((resolve) => refused.proc.on('exit', resolve)), 1);
  assert.match(refused.stderr(), /not a socket/);
  assert.equal(await fs.readFile(plain, 'utf8'), 'keep me');
});

test('a client over a bound is logged and dropped without a reply; other connections go on', async () => {
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--policy.max_line_length', '100']);
  const good = await client(fe.listeners[0]!);
  const bad = await client(fe.listeners[0]!);
  await assert.rejects(bad.send(`recipient=${'x'.repeat(200)}\n\n`), /closed the connection without a reply/);
  const warn = await fe.waitForLog((l) => l.code === 'LINE_TOO_LONG');
  assert.equal(warn.level, 40);
  assert.equal(await good.ask(rcpt('full@example.com')), '452 4.2.2 Mailbox full, try again later');
});

test('junk on the policy port (an HTTP request) is dropped without a reply', async () => {
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0']);
  const junk = await client(fe.listeners[0]!);
  await assert.rejects(junk.send('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), /without a reply/);
  await fe.waitForLog((l) => l.code === 'MALFORMED_LINE');
  assert.equal(await (await client(fe.listeners[0]!)).ask(rcpt('room@example.com')), 'DUNNO');
});

test('an idle connection is closed by the server only after idle_timeout', async () => {
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--policy.idle_timeout', '1500ms']);
  const c = await client(fe.listeners[0]!);
  assert.equal(await c.ask(rcpt('room@example.com')), 'DUNNO');
  let closedAt = 0;
  const opened = Date.now();
  void c.closed.then(() => (closedAt = Date.now()));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(closedAt, 0, 'closed before idle_timeout');
  assert.equal(await c.ask(rcpt('room@example.com')), 'DUNNO');
  await c.closed;
  assert.ok(closedAt - opened >= 1500);
});

test('the default idle timeout outlasts Postfix smtpd_policy_service_max_idle (300s)', async () => {
  const out = await import('./helpers/overquota.js').then((m) => m.runToEnd(['config']));
  const settings = JSON.parse(out.stdout) as { policy: { idle_timeout: number } };
  assert.ok(settings.policy.idle_timeout > 300_000);
});

test('on SIGTERM the frontend stops accepting, answers the request in flight, then exits 0', async () => {
  const backend = await startBackend((url, req, res) => setTimeout(() => cgiAnswer({ slow: 2000 }, 1000)(url, req, res), 700));
  cleanups.push(() => backend.close());
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', backend.url()]);
  const c = await client(fe.listeners[0]!);
  const answer = c.ask(rcpt('slow@example.com'));
  await new Promise((r) => setTimeout(r, 200));
  const exit = fe.stop();
  assert.equal(await answer, '452 4.2.2 Mailbox full, try again later');
  assert.equal(await exit, 0);
  const port = Number(fe.listeners[0]!.split(':').pop());
  await assert.rejects(
    new Promise((resolve, reject) => net.connect(port, '127.0.0.1').once('connect', resolve).once('error', reject)),
    /ECONNREFUSED/,
  );
});

test('the frontend asks a backend that answers in the seed CGI text, unchanged', async () => {
  const backend = await startBackend(cgiAnswer({ alice: 10, bob: 300 * 1024 * 1024 }, 200 * 1024 * 1024));
  cleanups.push(() => backend.close());
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', backend.url()]);
  const c = await client(fe.listeners[0]!);
  assert.equal(await c.ask(rcpt('bob@example.com')), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await c.ask(rcpt('alice@example.com')), 'DUNNO');
  assert.deepEqual(backend.requests.map((r) => new URL(r.url, 'http://x').searchParams.get('u')), ['bob', 'alice']);
});

test('a backend that is down gets the on_error reply, logged as a warning with its code', async () => {
  const backend = await startBackend(cgiAnswer({}, 1));
  await backend.close();
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', backend.url(), '--replies.on_error', '451 4.3.0 Quota check unavailable']);
  assert.equal(await (await client(fe.listeners[0]!)).ask(rcpt('a@example.com')), '451 4.3.0 Quota check unavailable');
  const line = await fe.waitForLog((l) => l.msg === 'decision');
  assert.equal(line.verdict, 'error');
  assert.equal(line.error, 'SOURCE_UNREACHABLE');
});

async function stdioSession(args: string[], input: string, flag = '--stdio'): Promise<{ stdout: string; stderr: string; code: number | null; proc: Running['proc'] }> {
  const run = runOverquota(['frontend', flag, ...args]);
  let stdout = '';
  run.proc.stdout!.removeAllListeners('data');
  run.proc.stdout!.on('data', (d: string) => (stdout += d));
  run.proc.stdin!.end(input);
  const code = await new Promise<number | null>((resolve) => run.proc.on('exit', resolve));
  return { stdout, stderr: run.stderr(), code, proc: run.proc };
}

test('spawn mode answers on stdout and never writes to stderr', async () => {
  const r = await stdioSession(store(), 'protocol_state=RCPT\nrecipient=full@example.com\n\nprotocol_state=RCPT\nrecipient=room@example.com\n\n');
  assert.equal(r.stdout, 'action=452 4.2.2 Mailbox full, try again later\n\naction=DUNNO\n\n');
  assert.equal(r.stderr, '');
  assert.equal(r.code, 0);
});

test('--stdio=true is spawn mode too (no log line on the protocol channel), --stdio=maybe a usage error', async () => {
  const r = await stdioSession(store(), 'protocol_state=RCPT\nrecipient=full@example.com\n\n', '--stdio=true');
  assert.equal(r.stdout, 'action=452 4.2.2 Mailbox full, try again later\n\n');
  assert.equal(r.stderr, '');
  const bad = await stdioSession(store(), '', '--stdio=maybe');
  assert.equal(bad.code, 64);
  assert.match(bad.stderr, /--stdio=maybe: expected true or false/);
});

test('spawn mode stays silent on stderr for bad input and for a bad configuration', async () => {
  const junk = await stdioSession(store(), 'GET / HTTP/1.0\n\n');
  assert.equal(junk.stdout, '');
  assert.equal(junk.stderr, '');
  const badConfig = await stdioSession(['--replies.over_quota', '452'], 'protocol_state=RCPT\nrecipient=a@x\n\n');
  assert.equal(badConfig.stderr, '');
  assert.equal(badConfig.code, 78);
});

test('spawn mode can log to a file', async () => {
  const logFile = path.join(dir, 'spawn.log');
  await stdioSession([...store(), '--log.file', logFile], 'protocol_state=RCPT\nrecipient=full@example.com\n\n');
  const lines = (await fs.readFile(logFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(lines.some((l) => l.msg === 'decision' && l.verdict === 'over_quota'));
});

test('each served domain is asked at its own backend; a domain not served gets DUNNO without a lookup', async () => {
  const one = await startBackend(cgiAnswer({ full: 5000 }, 1000));
  const two = await startBackend(cgiAnswer({}, 1000));
  cleanups.push(() => one.close(), () => two.close());
  const backends = JSON.stringify([
    { domains: ['one.example'], type: 'http', url: one.url() },
    { domains: ['.two.example'], type: 'http', url: two.url() },
  ]);
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0'], { OVERQUOTA_BACKENDS: backends });
  const c = await client(fe.listeners[0]!);
  assert.equal(await c.ask(rcpt('full@one.example')), '452 4.2.2 Mailbox full, try again later');
  assert.equal(await c.ask(rcpt('full@mx.two.example')), 'DUNNO');
  assert.equal(await c.ask(rcpt('full@elsewhere.example')), 'DUNNO');
  assert.equal(one.requests.length, 1);
  assert.equal(two.requests.length, 1);
});

/** A backend that answers in the seed CGI text after `ms`: every lookup is a slow cache miss. */
async function slowBackend(ms: number) {
  const backend = await startBackend((url, req, res) => setTimeout(() => cgiAnswer({ full: 2000 }, 1000)(url, req, res), ms));
  cleanups.push(() => backend.close());
  return backend;
}

const requestText = (recipient: string) =>
  Object.entries(rcpt(recipient))
    .map(([k, v]) => `${k}=${v}\n`)
    .join('') + '\n';

test('a client that half-closes after its requests (nc -N) gets every answer on a cache miss, then the server closes', async () => {
  const backend = await slowBackend(200);
  const fe = await frontend(['--policy.listen', 'inet:127.0.0.1:0', '--source.type', 'http', '--source.url', backend.url()]);
  const port = Number(fe.listeners[0]!.split(':').pop());
  const socket = net.connect(port, '127.0.0.1');
  cleanups.push(() => void socket.destroy());
  await new Promise((resolve) => socket.once('connect', resolve));
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => (received += d));
  const serverEnded = new Promise((resolve) => socket.once('end', resolve));
  socket.end(requestText('full@example.com') + requestText('room@example.com'));
  await serverEnded;
  assert.equal(received, 'action=452 4.2.2 Mailbox full, try again later\n\naction=DUNNO\n\n');
  assert.equal(backend.requests.length, 2);
});

test('spawn mode answers a lookup still pending when stdin ends', async () => {
  const backend = await slowBackend(200);
  const r = await stdioSession(['--source.type', 'http', '--source.url', backend.url()], requestText('full@example.com'));
  assert.equal(r.stdout, 'action=452 4.2.2 Mailbox full, try again later\n\n');
  assert.equal(r.code, 0);
});
