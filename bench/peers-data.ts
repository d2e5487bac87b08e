/*
 * The mail data bench/peers.ts and bench/postfix-e2e.ts share: a private Dovecot 2.3
 * (test/helpers/dovecot.ts: needs root and dovecot-core) with USERS passwd-file users, each with
 * a Maildir and a 100 KiB storage quota (quota = maildir, so Dovecot keeps a maildirsize in each
 * Maildir), filled by the bench; its quota-status policy service (`-p postfix`, client_limit = 1
 * as Dovecot's documentation advises). overquota reads the very same Maildirs (store.type maildir,
 * the limit from Dovecot's maildirsize), so every server answers about the same mailboxes.
 *
 * Mailbox i (user000, user001, ...) by i mod 10: 1 full (exactly at the limit), 2 over it,
 * 3 with 100 bytes of room (a message of SIZE=300 does not fit), the others with room (0-60 KiB
 * used). Recipients as Postfix hands them over: user000@example.com, User001@Example.com,
 * user002+tag@example.org ..., plus UNKNOWN addresses of no user (both sides answer DUNNO).
 * Importing it has no side effects.
 */
import { execFileSync } from 'node:child_process';
import { startDovecot, type DovecotInstance } from '../test/helpers/dovecot.js';
import { prng } from './shared.js';

export const LIMIT_BYTES = 100 * 1024;
const UNKNOWN = 10;

export function userName(i: number): string {
  return `user${String(i).padStart(3, '0')}`;
}

/** Bytes stored in mailbox i (see the header). */
export function usageOf(i: number, rnd: () => number): number {
  switch (i % 10) {
    case 1:
      return LIMIT_BYTES;
    case 2:
      return LIMIT_BYTES + 30 * 1024;
    case 3:
      return LIMIT_BYTES - 100;
    default:
      return rnd() < 0.4 ? 0 : Math.floor(rnd() * 60 * 1024);
  }
}

export function recipients(users: number): string[] {
  const list: string[] = [];
  for (let i = 0; i < users; i++) {
    const n = String(i).padStart(3, '0');
    list.push(i % 3 === 0 ? `user${n}@example.com` : i % 3 === 1 ? `User${n}@Example.com` : `user${n}+tag@example.org`);
  }
  for (let k = 0; k < UNKNOWN; k++) list.push(`nobody${k}@example.com`);
  return list;
}

export function dovecotVersion(): string {
  try {
    return `Dovecot ${execFileSync('/usr/sbin/dovecot', ['--version'], { encoding: 'utf8' }).trim().split(' ')[0]}`;
  } catch {
    return 'Dovecot (version unknown)';
  }
}

/**
 * Starts the private Dovecot with quota-status and fills the Maildirs. `processLimit`: Dovecot's
 * default_process_limit (100) must exceed the persistent connections, as with client_limit = 1
 * every connection holds one quota-status process.
 */
export async function startPeersDovecot(users: number, processLimit: number): Promise<DovecotInstance> {
  const dovecot = await startDovecot({
    users: Array.from({ length: users }, (_, i) => ({ name: userName(i), quota: `${LIMIT_BYTES / 1024}K` })),
    quotaStatusPort: true,
    pluginSettings: {
      // As overquota's replies.unknown: a recipient that is no mailbox is not ours to refuse.
      quota_status_nouser: 'DUNNO',
      // overquota has no grace: a mailbox at its limit is full, and a message must fit.
      quota_grace: '0',
    },
    extraConfig: `default_process_limit = ${processLimit}`,
  });
  try {
    const rnd = prng(7);
    for (let i = 0; i < users; i++) {
      const bytes = usageOf(i, rnd);
      if (bytes > 0) await dovecot.fill(userName(i), bytes, { messages: Math.max(1, Math.ceil(bytes / 20_000)) });
    }
    // Every Maildir gets its maildirsize (the empty ones too), before either side reads it.
    await dovecot.doveadm('quota', 'recalc', '-A');
  } catch (err) {
    await dovecot.stop();
    throw err;
  }
  return dovecot;
}

/** The frontend / quota-service settings that read the Dovecot Maildirs. */
export function maildirStoreArgs(dovecot: DovecotInstance): string[] {
  return ['--store.type', 'maildir', '--store.path', dovecot.mailRoot, '--store.mailbox', '{user}/Maildir', '--store.limit', String(LIMIT_BYTES)];
}
