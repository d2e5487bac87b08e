/*
 * `overquota invalidate ADDRESS`: make every frontend forget a mailbox's cached state now, e.g.
 * after the owner freed space. With Redis: delete the shared entry and publish on the invalidation
 * channel, which every frontend's memory tier hears. Without Redis: ask the local frontend's admin
 * endpoint (admin.listen).
 */
import type { Settings } from '../config.js';
import { buildDecisionCore } from '../app.js';
import { createLogger } from '../log.js';
import { UsageError } from './args.js';

const REDIS_WAIT_MS = 2000;
const ADMIN_TIMEOUT_MS = 5000;

export async function runInvalidate(settings: Settings, address: string | undefined): Promise<number> {
  if (!address) throw new UsageError('invalidate needs an ADDRESS, e.g. overquota invalidate alice@example.com');
  if (settings.redis.url) {
    const core = await buildDecisionCore(settings, createLogger({ level: 'silent', file: '', stdoutIsProtocol: false }), { subscribe: false });
    try {
      if (!(await core.redisReady(REDIS_WAIT_MS))) {
        console.log(`redis ${settings.redis.url} unreachable: nothing invalidated (entries expire by their TTL)`);
        return 1;
      }
      const done = await core.invalidate(address);
      if (!done) throw new UsageError(`"${address}" is not an address`);
      console.log(`mailbox ${done.recipient.key}: ${done.published ? 'dropped from Redis, every frontend told' : 'not published'}`);
      return done.published ? 0 : 1;
    } finally {
      await core.close();
    }
  }
  if (settings.admin.listen) {
    const res = await fetch(`http://${settings.admin.listen}/invalidate?address=${encodeURIComponent(address)}`, {
      method: 'POST',
      signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
    });
    const body = (await res.json()) as { mailbox?: string; error?: string };
    console.log(res.ok ? `mailbox ${body.mailbox}: dropped from the frontend at ${settings.admin.listen}` : `refused: ${body.error}`);
    return res.ok ? 0 : 1;
  }
  throw new UsageError('nothing to invalidate: set redis.url (shared cache) or admin.listen (one frontend)');
}
