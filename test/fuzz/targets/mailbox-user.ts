/*
 * Fuzz target: the quota service's user validation (src/sources/mailbox-path.ts checkMailboxUser),
 * the gate between a mailbox key from the network and a path on the store's disk.
 *
 * Properties, for any text:
 * - it never throws; it says why, or null;
 * - an accepted key has no '/', '\', NUL, control character (C0, DEL, C1), white space, format
 *   character, lone surrogate or U+FFFD; is at most MAX_USER_LENGTH UTF-8 bytes; is not and does
 *   not start with '.', nor has an empty or dot-led local part or domain, nor '..' in its domain;
 *   and NFKC normalisation of it gains no slash and no dot;
 * - through every path template the stores use, an accepted key becomes a relative path whose
 *   segments are never '', '.' or '..', that resolves strictly inside the store root and is not
 *   changed by normalisation (path.normalize): it names exactly the mailbox it says;
 * - plain keys (letters, digits, . _ + - and one @, not dot-led) are accepted: the gate does not
 *   refuse real users.
 * Must never: weaken a property to make a run pass.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import fc from 'fast-check';
import { checkMailboxUser, expandMailboxTemplate, isStrictlyInside, MAX_USER_LENGTH } from '../../../src/stores/paths.js';
import { anyChar, nearBound, textOf } from '../strings.js';
import { jsonTarget } from '../target.js';

export interface MailboxUserInput {
  user: string;
}

/** The layouts a mail store uses (Dovecot %d/%n, mbox files, a Maildir below a home). */
const TEMPLATES = ['{user}', '{local}', '{domain}/{local}', '{domain}/{user}', 'home/{local}/Maildir', '{domain}/{local}/mail'];
const ROOT = '/srv/mail';

const keyChar = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...'ab.@+-_'.split('')) }, { weight: 4, arbitrary: anyChar });
const arbitrary: fc.Arbitrary<MailboxUserInput> = fc.record({
  user: fc.oneof(
    { weight: 6, arbitrary: textOf(12, keyChar) },
    { weight: 2, arbitrary: fc.constantFrom('.', '..', '../', '../../etc/passwd', 'a/../b', '.hidden', 'a@.b', 'a@b..c', '@b', 'a@', 'a@b@c', '%2e%2e', '..%2f', 'a\u2025b', 'a\uff0fb', '\u2488x') },
    { weight: 1, arbitrary: nearBound(MAX_USER_LENGTH) },
  ),
});

/** [\p{Cc}] is C0, DEL and C1; [\p{Cf}] the format characters (bidi, zero width); lone surrogates. */
const NEVER = /[/\\\p{Cc}\p{Cf}\p{White_Space}\p{Cs}\ufffd]/u;

function assertSafeParts(key: string, where: string): void {
  assert.ok(key !== '.' && key !== '..' && !key.startsWith('.'), `${where}: dot-led`);
  const at = key.lastIndexOf('@');
  if (at === -1) return;
  const local = key.slice(0, at);
  const domain = key.slice(at + 1);
  assert.ok(local.length > 0 && domain.length > 0, `${where}: an empty local part or domain`);
  assert.ok(!local.startsWith('.') && !domain.startsWith('.') && !domain.includes('..'), `${where}: a dot-led part or '..' in the domain`);
}

export function checkMailboxUserInput(input: MailboxUserInput): void {
  const { user } = input;
  const why = checkMailboxUser(user);
  const isPlain = /^[a-z0-9_+-][a-z0-9._+-]{0,63}(@[a-z0-9-][a-z0-9.-]{0,62})?$/i.test(user) && !user.includes('..');
  if (isPlain) assert.equal(why, null, `the plain key ${JSON.stringify(user)} is refused: ${why}`);
  if (why !== null) {
    assert.ok(typeof why === 'string' && why.length > 0, 'a reason');
    return;
  }
  const shown = JSON.stringify(user);
  assert.doesNotMatch(user, NEVER, `accepted ${shown}, which holds a slash, control, space, format character, lone surrogate or U+FFFD`);
  assert.ok(Buffer.byteLength(user) <= MAX_USER_LENGTH, `accepted ${Buffer.byteLength(user)} bytes`);
  assertSafeParts(user, `accepted ${shown}`);
  const folded = user.normalize('NFKC');
  assert.ok(!/[/\\]/.test(folded), `accepted ${shown}, which NFKC turns into a path with a slash`);
  assert.equal(folded.split('.').length, user.split('.').length, `accepted ${shown}, which NFKC gives more dots`);
  assertSafeParts(folded, `accepted ${shown} after NFKC`);
  for (const t of TEMPLATES) {
    const rel = expandMailboxTemplate(t, user);
    if (rel === null) continue;
    const segments = rel.split('/');
    assert.ok(segments.every((s) => s !== '' && s !== '.' && s !== '..'), `accepted ${shown}: ${t} gives ${JSON.stringify(rel)}`);
    assert.equal(path.normalize(rel), rel, `accepted ${shown}: ${t} gives a path that normalisation changes`);
    assert.ok(isStrictlyInside(ROOT, path.resolve(ROOT, rel)), `accepted ${shown}: ${t} leaves the root`);
  }
}

export const mailboxUserTarget = jsonTarget<MailboxUserInput>({
  name: 'mailbox-user',
  about: 'checkMailboxUser + expandMailboxTemplate: any key',
  arbitrary,
  check: checkMailboxUserInput,
});
