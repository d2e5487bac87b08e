/*
 * The safety gate between network keys and disk paths: every class of hostile key is refused,
 * ordinary keys pass, and resolveInside() never answers a path outside the root.
 * These tests must never touch files outside their own temporary directory.
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  MAX_USER_LENGTH,
  checkMailboxTemplate,
  checkMailboxUser,
  expandMailboxTemplate,
  resolveInside,
} from '../src/stores/paths.js';
import { blockingIo, threadPoolIo } from '../src/stores/io.js';

test('ordinary user names and addresses are accepted', () => {
  for (const user of ['alice', 'bob.smith', 'carol+tag@example.com', 'd_e-f@mail.example.org', 'josé', 'a..b@example.com']) {
    assert.equal(checkMailboxUser(user), null, user);
  }
});

test('a user of exactly MAX_USER_LENGTH bytes is accepted and one byte more is refused', () => {
  assert.equal(checkMailboxUser('a'.repeat(MAX_USER_LENGTH)), null);
  assert.match(checkMailboxUser('a'.repeat(MAX_USER_LENGTH + 1))!, /longer than 255 bytes/);
  // Counted in UTF-8 bytes, not UTF-16 units: 128 x 'é' is 256 bytes.
  assert.match(checkMailboxUser('é'.repeat(128))!, /longer than/);
});

test('empty users and path separators are refused', () => {
  assert.match(checkMailboxUser('')!, /empty/);
  assert.match(checkMailboxUser('a/b')!, /slash/);
  assert.match(checkMailboxUser('a\\b')!, /slash/);
  assert.match(checkMailboxUser('../../etc/passwd')!, /slash|dot/);
});

test('dot segments and leading dots are refused, in the key and in its local part and domain', () => {
  for (const user of ['.', '..', '.hidden', '..@example.com', '.x@example.com', 'a@.example.com', 'a@..', 'a@ex..com']) {
    assert.notEqual(checkMailboxUser(user), null, user);
  }
});

test('an empty local part or domain is refused, since the path would collapse', () => {
  assert.match(checkMailboxUser('@example.com')!, /empty local part/);
  assert.match(checkMailboxUser('alice@')!, /empty domain/);
});

test('NUL, C0 and C1 control characters and DEL are refused', () => {
  assert.match(checkMailboxUser('a\u0000b')!, /NUL/);
  for (const ch of ['\u0001', '\n', '\r', '\t', '\u001b', '\u007f', '\u0085', '\u009f']) {
    assert.match(checkMailboxUser(`a${ch}b`)!, /control/, JSON.stringify(ch));
  }
});

test('whitespace and invisible format characters are refused', () => {
  for (const ch of [' ', '\u00a0', '\u2028', '\u200b', '\u202e', '\ufeff']) {
    assert.notEqual(checkMailboxUser(`a${ch}b`), null, JSON.stringify(ch));
  }
});

test('strings that are not well-formed Unicode are refused', () => {
  assert.match(checkMailboxUser('a\ud800b')!, /surrogate/);
  assert.match(checkMailboxUser('a\udc00')!, /surrogate/);
  assert.match(checkMailboxUser('a\ufffdb')!, /U\+FFFD/);
  // A proper pair (an emoji) is well-formed.
  assert.equal(checkMailboxUser('a\ud83d\ude00b'), null);
});

test('look-alikes of slash, backslash and dot are refused', () => {
  const lookAlikes = ['\u2215', '\u2044', '\uff0f', '\u29f8', '\uff3c', '\u2216', '\uff0e', '\u2024', '\u2025', '\u2026', '\ufe52', '\u3002', '\uff61'];
  for (const ch of lookAlikes) {
    assert.match(checkMailboxUser(`x${ch}${ch}y`)!, /look-alike/, `U+${ch.codePointAt(0)!.toString(16)}`);
    assert.notEqual(checkMailboxUser(`${ch}${ch}`), null);
  }
});

test('a key whose NFKC form gains a dot is refused even when the character is not listed', () => {
  // U+2488 DIGIT ONE FULL STOP folds to "1." under NFKC.
  assert.match(checkMailboxUser('a\u2488b')!, /NFKC/);
  // U+FB01 LATIN SMALL LIGATURE FI folds to "fi": no separator or dot appears, so it passes.
  assert.equal(checkMailboxUser('\ufb01le'), null);
});

test('templates expand {user}, {local} and {domain} from the last @', () => {
  assert.equal(expandMailboxTemplate('{user}', 'a@b.example'), 'a@b.example');
  assert.equal(expandMailboxTemplate('{domain}/{local}/Maildir', 'x@y@b.example'), 'b.example/x@y/Maildir');
  assert.equal(expandMailboxTemplate('{local}/Maildir', 'alice'), 'alice/Maildir');
  assert.equal(expandMailboxTemplate('{domain}/{local}', 'alice'), null, 'no domain: no such mailbox');
  assert.throws(() => expandMailboxTemplate('{home}/x', 'alice'), /unknown placeholder/);
});

test('templates without a placeholder, absolute, or with .. are refused', () => {
  assert.equal(checkMailboxTemplate('{domain}/{local}/Maildir'), null);
  assert.match(checkMailboxTemplate('Maildir')!, /no \{user\}/);
  assert.match(checkMailboxTemplate('/var/mail/{user}')!, /relative/);
  assert.match(checkMailboxTemplate('../{user}')!, /\.\./);
  assert.match(checkMailboxTemplate('{uid}')!, /unknown placeholder/);
});

for (const [kind, io] of [['on the thread pool', threadPoolIo], ['blocking (quota service)', blockingIo]] as const) test(`resolveInside answers real paths inside the root and nothing outside it (file-system calls ${kind})`, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'overquota-path-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const root = path.join(base, 'root');
  const outside = path.join(base, 'outside');
  await mkdir(path.join(root, 'alice', 'Maildir'), { recursive: true });
  await mkdir(outside);
  await writeFile(path.join(outside, 'secret'), 'x'.repeat(1234));
  await writeFile(path.join(root, 'bob'), 'mbox');
  await symlink(path.join(outside, 'secret'), path.join(root, 'evil'));
  await symlink(outside, path.join(root, 'evildir'));
  await symlink(path.join(outside, 'not-yet'), path.join(root, 'dangling'));
  await symlink(path.join(root, 'bob'), path.join(root, 'bob-alias'));
  const realRoot = await realpath(root);

  assert.equal(await resolveInside(root, 'bob', io), path.join(realRoot, 'bob'));
  assert.equal(await resolveInside(root, 'alice/Maildir', io), path.join(realRoot, 'alice', 'Maildir'));
  assert.equal(await resolveInside(root, 'bob-alias', io), path.join(realRoot, 'bob'), 'a link inside the root is fine');
  assert.equal(await resolveInside(root, 'evil', io), null, 'symlink to a file outside');
  assert.equal(await resolveInside(root, 'evildir/secret', io), null, 'through a symlinked directory');
  assert.equal(await resolveInside(root, 'evildir/missing', io), null, 'missing file under a symlink out');
  assert.equal(await resolveInside(root, 'dangling', io), null, 'a dangling link could be pointed anywhere');
  assert.equal(await resolveInside(root, '../outside/secret', io), null);
  assert.equal(await resolveInside(root, '.', io), null, 'the root itself is not a mailbox');
  assert.equal(await resolveInside(root, outside, io), null, 'absolute paths are refused');
  assert.equal(await resolveInside(root, 'carol', io), path.join(realRoot, 'carol'), 'not created yet');
  assert.equal(await resolveInside(root, 'dave/Maildir', io), null, 'parent missing too');
});
