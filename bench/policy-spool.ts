/*
 * The small mbox spool of bench/policy.ts, also loaded by bench/rss.ts: a few mailboxes around the
 * 1000-byte limit and the recipients the requests are drawn from. Importing it has no side effects.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** The --store.limit of the frontends on this spool, bytes. */
export const STORE_LIMIT = 1000;

/** The mail spool: bytes already in each mbox (limit 1000); null: no file (an empty mailbox). */
export const MAILBOXES: Record<string, number | null> = {
  alice: 0,
  bob: 120,
  carol: 700, // room, but a message of 300+ bytes does not fit
  dave: 450,
  erin: 1000, // full
  frank: 4096, // over
  ghost: null,
};

/** As Postfix hands them over: mixed case, an address extension, several domains. */
export const RECIPIENTS = [
  'alice@example.com',
  'Bob@Example.com',
  'carol+lists@example.com',
  'dave@example.org',
  'erin@example.com',
  'frank@example.com',
  'ghost@example.com',
  'alice+news@example.org',
];

/** Creates the directory `spool` with the MAILBOXES in it. */
export async function writeSpool(spool: string): Promise<void> {
  await mkdir(spool);
  for (const [user, bytes] of Object.entries(MAILBOXES)) {
    if (bytes !== null) await writeFile(path.join(spool, user), Buffer.alloc(bytes, 'x'));
  }
}
