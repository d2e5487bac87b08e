/*
 * Who may connect to a unix-domain listener: mode 0660 by default, the group from
 * policy.socket_group / milter.socket_group, both set without following a symlink; and a real
 * Postfix smtpd (user postfix) reaching such a socket with the group set as the README says.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { listen } from '../src/runtime/listeners.js';
import { runToEnd, startFrontend, type Running } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { startPostfix, postfixUnavailable } from './helpers/postfix.js';
import { sendEnvelope } from './helpers/smtp.js';

const unavailable = postfixUnavailable();
if (unavailable) throw new Error(`cannot run a private Postfix: ${unavailable}`);

const NODE_FOR_NOBODY = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath;
const NOBODY = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }));
const NOGROUP = Number(execFileSync('id', ['-g', 'nobody'], { encoding: 'utf8' }));

let tmp: TempDir;
const running: Running[] = [];
before(async () => {
  tmp = await tempDir('overquota-sockets-');
  // Other users must reach the sockets' directory: only the sockets' own modes keep them out.
  await fs.chmod(tmp.path, 0o755);
  await fs.mkdir(path.join(tmp.path, 'mail'));
  await fs.writeFile(path.join(tmp.path, 'mail', 'full'), Buffer.alloc(5000));
});
after(async () => {
  for (const r of running) await r.stop();
  await tmp.cleanup();
});

const store = () => ['--store.path', path.join(tmp.path, 'mail'), '--store.limit', '1000'];

async function frontendOn(socket: string, extra: string[] = []) {
  const fe = await startFrontend(['--policy.listen', `unix:${socket}`, ...store(), ...extra]);
  running.push(fe);
  return fe;
}

/** Connects as user nobody (group nogroup): "connected" or the error code. */
function connectAsNobody(socket: string): Promise<string> {
  const script = `const s = require('net').connect(${JSON.stringify(socket)});
s.on('connect', () => { console.log('connected'); s.destroy(); });
s.on('error', (e) => console.log(e.code));`;
  return new Promise((resolve, reject) => {
    const child = spawn(NODE_FOR_NOBODY, ['-e', script], { uid: NOBODY, gid: NOGROUP, cwd: '/' });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', () => resolve(out.trim()));
  });
}

test('a unix socket is 0660 by default: another local user cannot connect to it', async () => {
  const socket = path.join(tmp.path, 'default.sock');
  await frontendOn(socket);
  const st = await fs.stat(socket);
  assert.equal(st.mode & 0o777, 0o660);
  assert.equal(await connectAsNobody(socket), 'EACCES');
});

test('socket_group gives the socket to a group whose members can connect', async () => {
  const socket = path.join(tmp.path, 'grouped.sock');
  await frontendOn(socket, ['--policy.socket_group', 'nogroup']);
  const st = await fs.stat(socket);
  assert.equal(st.gid, NOGROUP);
  assert.equal(st.mode & 0o777, 0o660);
  assert.equal(await connectAsNobody(socket), 'connected');
});

test('a socket_group that names no group stops start-up, naming the setting', async () => {
  const r = await runToEnd(['frontend', '--milter.listen', `unix:${path.join(tmp.path, 'm.sock')}`, '--milter.socket_group', 'no-such-group']);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /milter\.socket_group: .*there is no group "no-such-group"/);
});

test('a symlink swapped in for the socket as it opens keeps its target\'s mode and group', async () => {
  const target = path.join(tmp.path, 'precious');
  await fs.writeFile(target, 'keep me');
  await fs.chmod(target, 0o600);
  const socket = path.join(tmp.path, 'swapped.sock');
  const server = net.createServer();
  // Runs before listen() goes on after the bind: the moment a chmod-after-listen would follow the link.
  server.once('listening', () => {
    execFileSync('mv', [socket, `${socket}.moved`]);
    execFileSync('ln', ['-s', target, socket]);
  });
  try {
    await listen(server, { kind: 'unix', path: socket, text: `unix:${socket}`, group: 'nogroup' }, 0o666);
  } finally {
    server.close();
  }
  const st = await fs.stat(target);
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.gid, 0);
  // The socket got its mode as bind(2) created it.
  assert.equal((await fs.lstat(`${socket}.moved`)).mode & 0o777, 0o666);
});

test('Postfix smtpd (user postfix) reaches a 0660 policy socket whose group is postfix, and not one without', async () => {
  // The README's unix set-up: a relative path is read from Postfix's queue directory.
  const restrictions = 'check_policy_service { unix:overquota/policy, timeout=10s, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination';
  const pf = await startPostfix({ smtpdRecipientRestrictions: restrictions });
  try {
    const dir = path.join(pf.queueDir, 'overquota');
    await fs.mkdir(dir, { mode: 0o755 });
    const socket = path.join(dir, 'policy');
    const fe = await frontendOn(socket, ['--policy.socket_group', 'postfix']);
    const ok = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com'] });
    assert.equal(ok.rcpt[0]!.code, 452, ok.transcript);
    await fe.stop();

    // The same socket in root's group: smtpd is refused, and default_action lets the mail pass.
    await frontendOn(socket);
    const refused = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com'] });
    assert.equal(refused.rcpt[0]!.code, 250, refused.transcript);
    await pf.waitForLog(/connect to .*overquota\/policy: Permission denied/);
  } finally {
    await pf.stop();
  }
});
