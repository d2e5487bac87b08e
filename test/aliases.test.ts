import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import os from 'node:os';
import { AliasMap, parseVirtual } from '../src/core/aliases.js';
import { startFrontend, runToEnd } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'oq-aliases-'));
});
after(() => fs.rm(dir, { recursive: true, force: true }));

async function mapOf(text: string): Promise<AliasMap> {
  const file = path.join(dir, `virtual-${Math.random().toString(36).slice(2)}`);
  await fs.writeFile(file, text);
  const map = new AliasMap(file);
  await map.load();
  return map;
}

test('virtual(5) lines: comments, continuation lines, commas and spaces, domain declarations', () => {
  const table = parseVirtual(['# aliases', 'example.com anything', 'Sales@Example.com  bob@example.com,', '    carol@example.com  dave@example.com', '@example.org catchall@example.com', ''].join('\n'));
  assert.deepEqual(table.get('sales@example.com'), ['bob@example.com', 'carol@example.com', 'dave@example.com']);
  assert.deepEqual(table.get('@example.org'), ['catchall@example.com']);
  assert.equal(table.has('example.com'), false);
});

test('bad lines are refused with file and line number', () => {
  assert.throws(() => parseVirtual('ok@x a@x\nlonely@x\n', 'virtual'), /virtual:2: .* no result/);
  assert.throws(() => parseVirtual('postmaster root@x\n', 'virtual'), /virtual:1: .* bare local part/);
  assert.throws(() => parseVirtual('a@x bob\n', 'virtual'), /virtual:1: every result must be user@domain/);
});

test('expansion is recursive, keeps a self-reference, stops on loops, and falls back to @domain', async () => {
  const map = await mapOf(['team@x a@x, list@x', 'list@x b@x, list@x', 'loop1@x loop2@x', 'loop2@x loop1@x', '@y catch@x'].join('\n'));
  assert.deepEqual(map.expand('team@x'), ['a@x', 'b@x', 'list@x']);
  assert.deepEqual(map.expand('loop1@x'), ['loop1@x']);
  assert.deepEqual(map.expand('anyone@y'), ['catch@x']);
  assert.equal(map.expand('nobody@x'), null);
});

test('virtual(5) order: user+ext@domain as written first, then user@domain, then @domain', async () => {
  const map = await mapOf(['bob+lists@x lists@y', 'bob@x bob@x, archive@y', '@x catch@y'].join('\n'));
  assert.deepEqual(map.expand('bob+lists@x', '+'), ['lists@y'], 'the entry with the extension wins');
  assert.deepEqual(map.expand('bob+other@x', '+'), ['bob@x', 'archive@y'], 'no entry with this extension: the one without');
  assert.deepEqual(map.expand('carol+x@x', '+'), ['catch@y']);
  assert.equal(map.expand('bob+lists@y', '+'), null);
});

test('through the frontend: an alias to a full mailbox is deferred; to two mailboxes it follows defer_when; SIGHUP reloads', async () => {
  const mail = path.join(dir, 'mail');
  await fs.mkdir(mail, { recursive: true });
  await fs.writeFile(path.join(mail, 'full'), Buffer.alloc(5000));
  await fs.writeFile(path.join(mail, 'room'), Buffer.alloc(10));
  const file = path.join(dir, 'virtual');
  await fs.writeFile(file, 'info@example.com full@example.com\nteam@example.com full@example.com, room@example.com\n');
  const common = ['--policy.listen', 'inet:127.0.0.1:0', '--store.path', mail, '--store.limit', '1000', '--aliases.file', file];
  const any = await startFrontend(common);
  const all = await startFrontend([...common, '--aliases.defer_when', 'all']);
  try {
    const a = await PolicyClient.connect(any.listeners[0]!);
    const b = await PolicyClient.connect(all.listeners[0]!);
    assert.equal(await a.ask(rcpt('Info@Example.com')), '452 4.2.2 Mailbox full, try again later');
    assert.equal(await a.ask(rcpt('team@example.com')), '452 4.2.2 Mailbox full, try again later');
    assert.equal(await b.ask(rcpt('team@example.com')), 'DUNNO');
    assert.equal(await b.ask(rcpt('info@example.com')), '452 4.2.2 Mailbox full, try again later');
    const line = await any.waitForLog((l) => l.msg === 'decision' && l.recipient === 'team@example.com');
    assert.equal(line.mailbox, 'full,room');

    await fs.writeFile(file, 'info@example.com room@example.com\n');
    any.proc.kill('SIGHUP');
    await any.waitForLog((l) => l.msg === 'alias map reloaded');
    assert.equal(await a.ask(rcpt('info@example.com')), 'DUNNO');
    await fs.writeFile(file, 'broken-line-without-result@example.com\n');
    any.proc.kill('SIGHUP');
    await any.waitForLog((l) => l.msg === 'alias map not reloaded: the previous one stays in use');
    assert.equal(await a.ask(rcpt('info@example.com')), 'DUNNO', 'the previous map stays');
    a.close();
    b.close();
  } finally {
    await any.stop();
    await all.stop();
  }
});

test('through the frontend: an entry with the extension is found first, and a quoted local part is the plain one', async () => {
  const mail = path.join(dir, 'mail-ext');
  await fs.mkdir(mail, { recursive: true });
  await fs.writeFile(path.join(mail, 'full'), Buffer.alloc(5000));
  await fs.writeFile(path.join(mail, 'room'), Buffer.alloc(10));
  const file = path.join(dir, 'virtual-ext');
  await fs.writeFile(file, 'room+alerts@example.com full@example.com\n');
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--store.path', mail, '--store.limit', '1000', '--aliases.file', file]);
  try {
    const c = await PolicyClient.connect(fe.listeners[0]!);
    assert.equal(await c.ask(rcpt('room+alerts@example.com')), '452 4.2.2 Mailbox full, try again later', 'room+alerts is an alias of full');
    assert.equal(await c.ask(rcpt('room+other@example.com')), 'DUNNO', 'room+other is room itself');
    assert.equal(await c.ask(rcpt('"full"@example.com')), '452 4.2.2 Mailbox full, try again later');
    c.close();
  } finally {
    await fe.stop();
  }
});

test('a bad alias file stops start-up with the line named', async () => {
  const file = path.join(dir, 'bad-virtual');
  await fs.writeFile(file, 'postmaster root\n');
  const r = await runToEnd(['check', 'a@example.com', '--aliases.file', file]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /bad-virtual:1: .*bare local part/);
});
