/*
 * The safety gate between a mailbox key from the network and a path on the mail store's disk.
 *
 * checkMailboxUser() says why a key must not become a path component (or null when it may);
 * expandMailboxTemplate() turns a vetted key into a path relative to the store root;
 * resolveInside() realpath()s that and answers only paths strictly inside the root.
 *
 * This module must never let a key name a file outside the root: the seed's quota.cgi read
 * `$home/$username` unchecked, so `u=../../etc/passwd` reported the size of any file on the host.
 * It never opens or creates files; it only looks (realpath, lstat).
 */

import { SourceError } from '../quota.js';
import { threadPoolIo, type StoreIo } from './io.js';
import path from 'node:path';
import { isMissing } from './errors.js';

/** Most file systems cap a path component at 255 bytes; a longer key cannot be a mailbox. */
export const MAX_USER_LENGTH = 255;

const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;
/* Lone surrogates: in /u mode a well-formed pair is one code point and does not match \p{Cs}. */
const LONE_SURROGATE = /\p{Cs}/u;
/*
 * Whitespace would break the space-separated seed answer `OK <user> <size> <quota>`; format
 * characters (bidi overrides, zero-width joiners) make a key look like another one in the logs.
 */
const INVISIBLE_OR_SPACE = /[\p{White_Space}\p{Cf}]/u;

/*
 * Characters that render like `/`, `\` or `.` but are not. A file system treats them as ordinary
 * bytes, yet a tool downstream (a shell script, a normalising proxy, an operator copying a path)
 * may not: refuse them rather than guess. NFKC folds some of these to ASCII; checked as well below.
 */
const LOOK_ALIKES = new Set<string>([
  // slashes
  '\u2215', '\u2044', '\uff0f', '\u29f8', '\u2571', '\u0337', '\u0338', '\u1735',
  // backslashes
  '\u2216', '\u29f5', '\u29f9', '\ufe68', '\uff3c', '\u2572',
  // dots and full stops
  '\uff0e', '\u2024', '\u2025', '\u2026', '\ufe52', '\u3002', '\uff61', '\u0701', '\u0702',
  '\ua4f8', '\u2e31', '\u2027',
]);

/** Why `user` cannot be a mailbox key, or null when it may become a path component. */
export function checkMailboxUser(user: string): string | null {
  if (typeof user !== 'string' || user.length === 0) return 'empty user';
  // Checked before the length: a lone surrogate would be counted as a 3-byte U+FFFD.
  if (LONE_SURROGATE.test(user)) return 'user is not well-formed Unicode (lone surrogate)';
  if (user.includes('\ufffd')) return 'user contains U+FFFD (bytes that were not valid UTF-8)';
  if (Buffer.byteLength(user, 'utf8') > MAX_USER_LENGTH) {
    return `user is longer than ${MAX_USER_LENGTH} bytes`;
  }
  if (user.includes('\u0000')) return 'user contains NUL';
  if (CONTROL_CHARS.test(user)) return 'user contains a control character';
  if (INVISIBLE_OR_SPACE.test(user)) return 'user contains whitespace or an invisible character';
  if (user.includes('/') || user.includes('\\')) return 'user contains a slash';
  for (const ch of user) {
    if (LOOK_ALIKES.has(ch)) {
      return `user contains U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}, a look-alike of / \\ or .`;
    }
  }
  const structural = checkParts(user);
  if (structural) return structural;

  // A compatibility form that gains a separator or a dot (U+FF0F -> '/', U+2025 -> '..') means
  // some later normalisation could turn this key into a different path.
  const folded = user.normalize('NFKC');
  if (folded !== user) {
    if (folded.includes('/') || folded.includes('\\')) return 'user contains a slash after NFKC normalisation';
    if (countDots(folded) !== countDots(user)) return 'user contains a look-alike of . (NFKC)';
    const again = checkParts(folded);
    if (again) return `${again} after NFKC normalisation`;
  }
  return null;
}

/* The key as a whole and its local part and domain (templates use them) must each be a safe component. */
function checkParts(user: string): string | null {
  if (user === '.' || user === '..') return 'user is a . or .. path segment';
  if (user.startsWith('.')) return 'user starts with a dot';
  const at = user.lastIndexOf('@');
  if (at === -1) return null;
  const local = user.slice(0, at);
  const domain = user.slice(at + 1);
  // An empty part would make `{domain}/{local}` collapse into the domain's own directory.
  if (local.length === 0) return 'empty local part';
  if (domain.length === 0) return 'empty domain';
  if (local.startsWith('.')) return 'local part starts with a dot';
  if (domain.startsWith('.')) return 'domain starts with a dot';
  if (domain.includes('..')) return 'domain contains ..';
  return null;
}

function countDots(s: string): number {
  let n = 0;
  for (const ch of s) if (ch === '.') n++;
  return n;
}

/** The parts of a mailbox key a path template may use. */
export interface MailboxKeyParts {
  user: string;
  local: string;
  domain: string;
}

export function splitMailboxKey(user: string): MailboxKeyParts {
  const at = user.lastIndexOf('@');
  if (at === -1) return { user, local: user, domain: '' };
  return { user, local: user.slice(0, at), domain: user.slice(at + 1) };
}

const PLACEHOLDER = /\{([^{}]*)\}/g;
const KNOWN_PLACEHOLDERS = new Set(['user', 'local', 'domain']);

/** Why a mailbox path template is unusable (for a start-up error), or null. */
export function checkMailboxTemplate(template: string): string | null {
  if (template.length === 0) return 'empty mailbox template';
  if (path.isAbsolute(template)) return 'mailbox template must be relative to the root';
  let uses = 0;
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (!KNOWN_PLACEHOLDERS.has(m[1]!)) return `unknown placeholder {${m[1]}} (use {user}, {local}, {domain})`;
    uses++;
  }
  // Without a placeholder every key would name the same mailbox.
  if (uses === 0) return 'mailbox template has no {user}, {local} or {domain}';
  if (template.split(/[/\\]/).some((seg) => seg === '..')) return 'mailbox template contains ..';
  return null;
}

/**
 * The mailbox path (relative to the store root) for a key already accepted by checkMailboxUser.
 * null when a placeholder the template uses is empty (`{domain}` for a key without `@`): the path
 * would collapse into a different directory, so there is no such mailbox.
 */
export function expandMailboxTemplate(template: string, user: string): string | null {
  const parts = splitMailboxKey(user);
  let empty = false;
  const expanded = template.replace(PLACEHOLDER, (whole, name: string) => {
    if (!KNOWN_PLACEHOLDERS.has(name)) throw new Error(`unknown placeholder ${whole} in mailbox template`);
    const value = parts[name as keyof MailboxKeyParts];
    if (value.length === 0) empty = true;
    return value;
  });
  return empty ? null : expanded;
}

/** True when `candidate` is below `root` (both already absolute and real), not equal to it. */
export function isStrictlyInside(root: string, candidate: string): boolean {
  const rel = path.relative(root, candidate);
  return rel.length > 0 && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}


/*
 * The store root's real path, resolved at most once a second: it is the same on every lookup, and
 * a root that is moved or re-pointed (a symlink) is still followed within a second. Not a
 * runtime/memo.ts Memo: an entry here gets old and is resolved again, a Memo's never does.
 */
const ROOT_RECHECK_MS = 1000;
/*
 * Roots come from the configuration (one per configured store: a handful), never from the network;
 * the bound only keeps a caller that passes ever new roots from growing memory. Past it, start over.
 */
const MAX_REMEMBERED_ROOTS = 100;
const realRoots = new Map<string, { real: string; atMs: number }>();

async function realRootOf(root: string, io: StoreIo): Promise<string> {
  const now = Date.now();
  const known = realRoots.get(root);
  if (known && now - known.atMs < ROOT_RECHECK_MS) return known.real;
  const real = await io.realpath(root);
  if (realRoots.size >= MAX_REMEMBERED_ROOTS) realRoots.clear();
  realRoots.set(root, { real, atMs: now });
  return real;
}

/**
 * The real path of `relative` under `root`, only if it lies strictly inside the real root.
 * - exists, inside: its realpath;
 * - exists (or is a dangling symlink) but resolves outside, or equals the root: null;
 * - the final component does not exist: the lexical path if its parent's realpath is inside
 *   (or is) the root, so a caller can tell "mailbox not created yet" from "no such place"; else null.
 * An unreadable root throws (a configuration problem, not an unknown mailbox).
 */
export async function resolveInside(root: string, relative: string, io: StoreIo = threadPoolIo): Promise<string | null> {
  const realRoot = await realRootOf(root, io);
  if (path.isAbsolute(relative)) return null;
  const lexical = path.resolve(realRoot, relative);
  if (!isStrictlyInside(realRoot, lexical)) return null;
  try {
    const real = await io.realpath(lexical);
    return isStrictlyInside(realRoot, real) ? real : null;
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
  // realpath failed: either the name is free, or it is a dangling symlink whose target could
  // appear later (anywhere on the host). Only the first is acceptable.
  if ((await io.lstat(lexical)) !== null) return null;
  let realParent: string;
  try {
    realParent = await io.realpath(path.dirname(lexical));
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
  if (realParent !== realRoot && !isStrictlyInside(realRoot, realParent)) return null;
  return path.join(realParent, path.basename(lexical));
}

/**
 * The mailbox path of a key under the store root, after the key passed checkMailboxUser
 * (else SOURCE_BAD_KEY); null when the template cannot be filled for this key.
 */
export function mailboxPathFor(template: string, key: string): string | null {
  const bad = checkMailboxUser(key);
  if (bad) throw new SourceError('SOURCE_BAD_KEY', bad);
  return expandMailboxTemplate(template, key);
}
