/*
 * The mailboxes bench/policy.ts and bench/postfix.ts ask about: a private Dovecot 2.3
 * (test/helpers/dovecot.ts: root and dovecot-core) with USERS passwd-file users, each a Maildir
 * with a 100 KiB quota (quota = maildir: Dovecot keeps a maildirsize), filled here, and its
 * quota-status service (-p postfix, client_limit = 1 as Dovecot's documentation advises).
 * overquota reads the very same Maildirs (store.type maildir, the limit from maildirsize).
 * Mailbox i (user000 ...) by i mod 10: 1 full, 2 over, 3 with 100 bytes of room (a 300-byte
 * message does not fit), the others 0-60 KiB used. Also the pymilter of bench/postfix.ts and
 * bench/milter-wire.ts (bench/pymilter_quota.py). Both are private instances on free loopback
 * ports, never a system one, stopped at the end. Importing it has no side effects.
 */
import path from 'node:path';
import { startDovecot, type DovecotInstance } from '../test/helpers/dovecot.js';
import { ROOT, ensureDebianPackage, freePort, onCleanup, prng, runProcess, scratch, startServer, versionOf } from './harness.js';

const LIMIT_BYTES = 100 * 1024;
/** Addresses of no mailbox among the recipients (both sides answer DUNNO). */
const UNKNOWN = 10;

export const userName = (i: number): string => `user${String(i).padStart(3, '0')}`;
export const dovecotVersion = (): string => versionOf('Dovecot', '/usr/sbin/dovecot', ['--version']);

/** As Postfix hands them over: user000@example.com, User001@Example.com, user002+tag@example.org ..., and UNKNOWN more. */
export function recipients(users: number): string[] {
  const forms = [(n: string) => `user${n}@example.com`, (n: string) => `User${n}@Example.com`, (n: string) => `user${n}+tag@example.org`];
  return [...Array.from({ length: users }, (_, i) => forms[i % 3]!(String(i).padStart(3, '0'))), ...Array.from({ length: UNKNOWN }, (_, k) => `nobody${k}@example.com`)];
}

/** Starts the Dovecot and fills it. `processLimit` must exceed the persistent connections: with client_limit = 1 each holds a quota-status process. */
export async function startMailboxes(users: number, processLimit: number): Promise<DovecotInstance> {
  const dovecot = await startDovecot({
    users: Array.from({ length: users }, (_, i) => ({ name: userName(i), quota: `${LIMIT_BYTES / 1024}K` })),
    quotaStatusPort: true,
    // As overquota: a recipient that is no mailbox is not ours to refuse; a mailbox at its limit is full.
    pluginSettings: { quota_status_nouser: 'DUNNO', quota_grace: '0' },
    extraConfig: `default_process_limit = ${processLimit}`,
  });
  onCleanup(() => dovecot.stop());
  const rnd = prng(7);
  for (let i = 0; i < users; i++) {
    const bytes = [LIMIT_BYTES, LIMIT_BYTES + 30 * 1024, LIMIT_BYTES - 100][(i % 10) - 1] ?? (rnd() < 0.4 ? 0 : Math.floor(rnd() * 60 * 1024));
    if (bytes > 0) await dovecot.fill(userName(i), bytes, { messages: Math.max(1, Math.ceil(bytes / 20_000)) });
  }
  // Every Maildir gets its maildirsize (the empty ones too) before either side reads it.
  await dovecot.doveadm('quota', 'recalc', '-A');
  return dovecot;
}

/** The frontend's / quota service's settings that read those Maildirs. */
export const maildirArgs = (dovecot: DovecotInstance): string[] => ['--store.type', 'maildir', '--store.path', dovecot.mailRoot, '--store.mailbox', '{user}/Maildir', '--store.limit', String(LIMIT_BYTES)];

/** Debian's python3: the python3-milter package installs the Milter module for it. */
const PYTHON = '/usr/bin/python3';
export const pymilterVersion = (): string => versionOf('Python', PYTHON, ['-c', 'import sys, Milter; print("%d.%d.%d, pymilter %s" % (sys.version_info[:3] + (Milter.__version__,)))'], /(.+)/);

/** bench/pymilter_quota.py on a free port (pinned to a CPU with `pin`), answering about the mbox files in `spool` with `limitBytes`. */
export async function startPymilter(spool: string, limitBytes: number, pin?: string): Promise<{ pid: number; port: number; logFile: string }> {
  await ensureDebianPackage('python3-milter', async () => (await runProcess(PYTHON, ['-c', 'import Milter'], { limitMs: 30_000 })).code === 0);
  const [port, logFile] = [await freePort(), path.join(await scratch(), 'pymilter.log')];
  const command = [PYTHON, path.join(ROOT, 'bench', 'pymilter_quota.py'), `inet:${port}@127.0.0.1`, spool, String(limitBytes)];
  const proc = await startServer(pin ? 'taskset' : PYTHON, pin ? ['-c', pin, ...command] : command.slice(1), logFile, port);
  return { pid: proc.pid!, port, logFile };
}
