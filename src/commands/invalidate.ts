/*
 * `overquota invalidate ADDRESS` and `overquota notify [+N|-N] USER`: make every frontend forget a
 * mailbox's cached state now. invalidate takes an address (as the frontend gets it); notify takes
 * the mailbox key, for Dovecot's quota_warning scripts (`quota_warning = storage=100%% quota-warning
 * +100 %u`, and `-storage=100%%` for the way down): a mailbox crossing its limit either way is
 * forgotten at once instead of after its TTL. With Redis: delete the shared entry and publish on the
 * invalidation channel, heard by every frontend. Without Redis: ask one frontend's admin endpoint.
 */
import type { Settings } from '../config/schema.js';
import { buildDecisionCore } from '../core/assemble.js';
import { createLogger } from '../runtime/log.js';
import { UsageError } from './args.js';
import { adminUrl } from './status.js';

const REDIS_WAIT_MS = 2000;
const ADMIN_TIMEOUT_MS = 5000;

type Target = { address: string } | { key: string };

export async function runInvalidate(settings: Settings, address: string | undefined): Promise<number> {
  if (!address) throw new UsageError('invalidate needs an ADDRESS, e.g. overquota invalidate alice@example.com');
  return forget(settings, { address });
}

/** Words: [+N|-N] USER (Dovecot passes the warning's own arguments first). */
export async function runNotify(settings: Settings, words: string[]): Promise<number> {
  const rest = words[0] !== undefined && /^[+-]\d+%?$/.test(words[0]) ? words.slice(1) : words;
  const key = rest[0];
  if (!key || rest.length > 1) throw new UsageError('notify needs one USER (the mailbox key), optionally after +N / -N, e.g. overquota notify -100 alice');
  return forget(settings, { key });
}

async function forget(settings: Settings, target: Target): Promise<number> {
  const label = 'address' in target ? target.address : target.key;
  if (settings.redis.url) {
    const core = await buildDecisionCore(settings, createLogger({ level: 'silent', file: '', stdoutIsProtocol: false }), { subscribe: false });
    try {
      if (!(await core.redisReady(REDIS_WAIT_MS))) {
        console.log(`redis ${settings.redis.url} unreachable: nothing invalidated (entries expire by their TTL)`);
        return 1;
      }
      const done = 'address' in target ? await core.invalidate(target.address) : await core.invalidateKey(target.key);
      if (!done) throw new UsageError(`"${label}" is not an address`);
      console.log(`mailbox ${done.key}: ${done.published ? 'dropped from Redis, every frontend told' : 'not published'}`);
      return done.published ? 0 : 1;
    } finally {
      await core.close();
    }
  }
  if (settings.admin.listen) {
    const query = 'address' in target ? `address=${encodeURIComponent(target.address)}` : `key=${encodeURIComponent(target.key)}`;
    const headers: Record<string, string> = settings.admin.token ? { authorization: `Bearer ${settings.admin.token}` } : {};
    const res = await fetch(`${adminUrl(settings)}/invalidate?${query}`, { method: 'POST', headers, signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS) });
    const body = (await res.json()) as { mailbox?: string; error?: string };
    console.log(res.ok ? `mailbox ${body.mailbox}: dropped from the frontend at ${settings.admin.listen}` : `refused: ${body.error}`);
    return res.ok ? 0 : 1;
  }
  throw new UsageError('nothing to invalidate: set redis.url (shared cache) or admin.listen (one frontend)');
}
