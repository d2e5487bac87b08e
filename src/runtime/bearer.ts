/*
 * Bearer tokens for our HTTP endpoints (the frontend's admin listener, the quota service), and the
 * rule for when one is required.
 *
 * The comparison is constant-time over SHA-256 digests (timingSafeEqual needs equal lengths, and
 * comparing digests hides the token's length too). A listener that anyone beyond this host can
 * reach must not take state-changing requests without a token: start-up refuses it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

/** A checker for `Authorization: Bearer <token>` headers; null when no token is configured. */
export function bearerCheck(token: string): ((header: string | undefined) => boolean) | null {
  if (!token) return null;
  const expected = digest(token);
  return (header) => {
    if (!header) return false;
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
    return m !== null && timingSafeEqual(digest(m[1]!), expected);
  };
}

/** 127.0.0.0/8, ::1 (also as ::ffff:127.x) and localhost: only this host can connect. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}
