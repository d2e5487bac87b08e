/*
 * `overquota quota-service` as a process: limits file reload on SIGHUP, loopback by default;
 * and the same reload in a frontend that reads a local store itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startFrontend, startQuotaServiceProcess, runToEnd } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { startBackend } from './helpers/http-backend.js';
import { tempDir } from './helpers/tmp.js';

test('the limits file is re-read on SIGHUP; a broken edit keeps the previous limits', async () => {
  const tmp = await tempDir('overquota-qs-hup-');
  const mail = path.join(tmp.path, 'mail');
  await fs.mkdir(mail);
  await fs.writeFile(path.join(mail, 'alice'), Buffer.alloc(5000));
  const limits = path.join(tmp.path, 'limits');
  await fs.writeFile(limits, 'alice 1K\n');
  const qs = await startQuotaServiceProcess(['--store.path', mail, '--store.limits_file', limits]);
  try {
    const get = async () => (await fetch(`${qs.baseUrl}/quota?u=alice`)).text();
    assert.equal(await get(), 'OVERQUOTA alice 5000 1024\n');
    await fs.writeFile(limits, 'alice 1M\n');
    qs.proc.kill('SIGHUP');
    await qs.waitForLog((l) => l.msg === 'limits file reloaded');
    assert.equal(await get(), 'OK alice 5000 1048576\n');
    await fs.writeFile(limits, 'alice lots\n');
    qs.proc.kill('SIGHUP');
    await qs.waitForLog((l) => l.msg === 'limits file not reloaded: the previous limits stay in use');
    assert.equal(await get(), 'OK alice 5000 1048576\n');
  } finally {
    await qs.stop();
    await tmp.cleanup();
  }
});

test('a frontend on a local store re-reads its limits file on SIGHUP too; a broken edit keeps the previous limits', async () => {
  const tmp = await tempDir('overquota-fe-hup-');
  const mail = path.join(tmp.path, 'mail');
  await fs.mkdir(mail);
  for (const user of ['alice', 'bob', 'carol']) await fs.writeFile(path.join(mail, user), Buffer.alloc(5000));
  const limits = path.join(tmp.path, 'limits');
  await fs.writeFile(limits, 'alice 1K\n');
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--store.path', mail, '--store.limit', '1M', '--store.limits_file', limits]);
  try {
    const client = await PolicyClient.connect(fe.listeners[0]!);
    assert.equal(await client.ask(rcpt('alice@example.com')), '452 4.2.2 Mailbox full, try again later');
    await fs.writeFile(limits, 'alice 1K\nbob 1K\n');
    fe.proc.kill('SIGHUP');
    await fe.waitForLog((l) => l.msg === 'limits file reloaded');
    assert.equal(await client.ask(rcpt('bob@example.com')), '452 4.2.2 Mailbox full, try again later', 'the new line is in force');
    await fs.writeFile(limits, 'carol lots\n');
    fe.proc.kill('SIGHUP');
    await fe.waitForLog((l) => l.msg === 'limits file not reloaded: the previous limits stay in use');
    assert.equal(await client.ask(rcpt('carol@example.com')), 'DUNNO', 'the default limit, as before the broken edit');
    client.close();
  } finally {
    await fe.stop();
    await tmp.cleanup();
  }
});

test('SIGTERM lets a lookup in flight finish: its answer goes out, then the service exits 0', async () => {
  // A doveadm backend that takes 700 ms: the lookup is surely in flight when SIGTERM comes.
  let arrived!: () => void;
  const atBackend = new Promise<void>((resolve) => (arrived = resolve));
  const dovecot = await startBackend((_url, req, res) => {
    req.resume();
    arrived();
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('[["doveadmResponse",[{"root":"User quota","type":"STORAGE","value":"10","limit":"1024","percent":"0"}],"alice"]]');
    }, 700);
  });
  const qs = await startQuotaServiceProcess(['--store.type', 'doveadm', '--doveadm.url', dovecot.url('/doveadm/v1'), '--doveadm.password', 'pw']);
  try {
    const exited = new Promise<number | null>((resolve) => qs.proc.once('exit', resolve));
    const answer = fetch(`${qs.baseUrl}/quota?u=alice`).then(async (r) => [r.status, await r.text()]);
    await atBackend;
    qs.proc.kill('SIGTERM');
    assert.deepEqual(await answer, [200, 'OK alice 10240 1048576\n']);
    assert.equal(await exited, 0);
  } finally {
    await qs.stop();
    await dovecot.close();
  }
});

test('the quota service listens on loopback unless told otherwise', async () => {
  const r = await runToEnd(['config']);
  assert.match((JSON.parse(r.stdout) as { quota_service: { listen: string } }).quota_service.listen, /^127\.0\.0\.1:/);
});
