/*
 * The shared tier: quota states in Redis, a short lock for cluster-wide single-flight, and the
 * invalidation channel.
 *
 * Keys: PREFIX v1:{SOURCE|KEY}:q (the state) and ...:lock; the braces are a Redis Cluster hash tag,
 * so a mailbox's state and lock share a slot. Values are JSON with the state, the figures, when
 * and by which source they were checked. Every method swallows Redis errors and answers as if the
 * entry were absent: the caller then asks the source directly. Nothing here waits past its deadline.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { RedisConnection } from './redis-client.js';
import type { MailboxQuota, QuotaState } from '../quota.js';
import type { Base, Pending } from './reservations.js';

export const SCHEMA_VERSION = 'v1';
/** How long Redis is passed over after a command timed out (see RedisTier.up). */
export const SUSPEND_AFTER_TIMEOUT_MS = 1000;
/** Poll interval bounds while another frontend looks a mailbox up. */
const POLL_MIN_MS = 5;
const POLL_MAX_MS = 40;

interface StoredState {
  state: 'found' | 'unknown';
  usage?: number;
  limit?: number | null;
  usage_messages?: number | null;
  limit_messages?: number | null;
  over?: boolean;
  checked_at: string;
  source: string;
}

/*
 * Reservations (reservations.ts), shared: one hash per mailbox, PREFIX v1:{SOURCE|KEY}:r, in the
 * state's slot. Field TXN = "BYTES CREATED_MS EXPIRES_MS"; field _base = "USAGE MESSAGES AT_MS" (the
 * reading the pending total is relative to; MESSAGES -1 when the source does not count them).
 * Scripts, so that adding and summing (or comparing and dropping) is one atomic step for every
 * frontend: two frontends accepting for one mailbox at once each see the other's reservation.
 * Clocks: each frontend's own; reservations live minutes, so a few ms of skew do not matter.
 */
const SCAN_RESERVATIONS = `
local function scan(key, now)
  local all = redis.call('HGETALL', key)
  local list, base = {}, nil
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    if f == '_base' then
      base = v
    else
      local b, c, e = string.match(v, '^(%d+) (%d+) (%d+)$')
      if not e or tonumber(e) <= now then
        redis.call('HDEL', key, f)
      else
        list[#list + 1] = { f, tonumber(b), tonumber(c) }
      end
    end
  end
  table.sort(list, function(x, y) return x[3] < y[3] end)
  return list, base
end
`;

/**
 * KEYS[1] the hash; ARGV txn, bytes, now, ttl, usage, messages, max. Adds the transaction's
 * reservation unless it is there (dropping the oldest past max), sets the base if there was none.
 * Returns { bytes and messages pending for OTHER transactions, 1 if added, the base }.
 */
const RESERVE =
  SCAN_RESERVATIONS +
  `
local key, txn = KEYS[1], ARGV[1]
local now, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7])
local list, base = scan(key, now)
local own = false
for _, r in ipairs(list) do if r[1] == txn then own = true end end
local added = 0
if not own then
  if #list >= max then redis.call('HDEL', key, list[1][1]); table.remove(list, 1) end
  redis.call('HSET', key, txn, ARGV[2] .. ' ' .. now .. ' ' .. (now + ttl))
  added = 1
end
if not base then
  base = ARGV[5] .. ' ' .. ARGV[6] .. ' 0'
  redis.call('HSET', key, '_base', base)
end
redis.call('PEXPIRE', key, ttl)
local bytes, messages = 0, 0
for _, r in ipairs(list) do
  if r[1] ~= txn then bytes = bytes + r[2]; messages = messages + 1 end
end
return { bytes, messages, added, base }
`;

/**
 * KEYS[1] the hash; ARGV usage, messages, reading time, now. A newer reading: drop the oldest
 * reservations its growth since the base covers (the rule of deliveredCount() in reservations.ts),
 * make it the base. A reading older than the base is ignored (readings may arrive out of order).
 */
const RECONCILE =
  SCAN_RESERVATIONS +
  `
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local list, base = scan(key, tonumber(ARGV[4]))
local released = 0
if base then
  local bu, bm, at = string.match(base, '^(%d+) (%-?%d+) (%d+)$')
  if tonumber(at) > tonumber(ARGV[3]) then return 0 end
  local nu, nm = tonumber(ARGV[1]), tonumber(ARGV[2])
  if tonumber(bm) >= 0 and nm >= 0 then
    released = math.min(#list, math.max(0, nm - tonumber(bm)))
  else
    local growth = nu - tonumber(bu)
    while released < #list and growth > 0 and list[released + 1][2] <= growth do
      growth = growth - list[released + 1][2]
      released = released + 1
    end
  end
  for i = 1, released do redis.call('HDEL', key, list[i][1]) end
end
if released == #list then
  redis.call('DEL', key)
else
  redis.call('HSET', key, '_base', ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
end
return released
`;

/** KEYS[1] the hash; ARGV now. Everything pending, for a look without a transaction (overquota check). */
const PEEK =
  SCAN_RESERVATIONS +
  `
local list, base = scan(KEYS[1], tonumber(ARGV[1]))
local bytes = 0
for _, r in ipairs(list) do bytes = bytes + r[2] end
return { bytes, #list, 0, base or '0 -1 0' }
`;

/** KEYS[1] the hash; ARGV txn. Drops the reservation, and the hash once only the base is left. */
const RELEASE = `
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) end
return 1
`;

/** KEYS[1] the hash; ARGV txn, bytes. The real size of a reserved message (end of message). */
const RESIZE = `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local b, c, e = string.match(v, '^(%d+) (%d+) (%d+)$')
if not e then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. c .. ' ' .. e)
return 1
`;

/*
 * A transaction's name in the shared hash: this host's name first. Frontends share the hash, and
 * two hosts' smtpd processes could (rarely) make the same instance string.
 */
const HOST = hostname();
const sharedName = (txn: string) => `${HOST}/${txn}`;

/** What the shared tier said when a reservation was made. */
export interface SharedReservation {
  /** Pending for other transactions, every frontend's. */
  others: Pending;
  added: boolean;
  /** The reading that pending total is relative to. */
  base: Base;
}

interface ReservationCommands {
  oqReserve(key: string, txn: string, bytes: number, now: number, ttl: number, usage: number, messages: number, max: number): Promise<[number, number, number, string]>;
  oqPeek(key: string, now: number): Promise<[number, number, number, string]>;
  oqReconcile(key: string, usage: number, messages: number, at: number, now: number): Promise<number>;
  oqRelease(key: string, txn: string): Promise<number>;
  oqResize(key: string, txn: string, bytes: number): Promise<number>;
}

/** Releases the lock only if it is still ours (it may have expired and been taken by another). */
const UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

export class RedisTier {
  private readonly channel: string;

  constructor(
    private readonly conn: RedisConnection,
    private readonly prefix: string,
    private readonly logger: Logger,
  ) {
    this.channel = `${prefix}${SCHEMA_VERSION}:invalidate`;
    // EVALSHA with a fallback to EVAL: the scripts travel once per connection, not per call.
    conn.defineCommand('oqReserve', { numberOfKeys: 1, lua: RESERVE });
    conn.defineCommand('oqReconcile', { numberOfKeys: 1, lua: RECONCILE });
    conn.defineCommand('oqPeek', { numberOfKeys: 1, lua: PEEK });
    conn.defineCommand('oqRelease', { numberOfKeys: 1, lua: RELEASE });
    conn.defineCommand('oqResize', { numberOfKeys: 1, lua: RESIZE });
  }

  private get scripts(): ReservationCommands {
    return this.conn as unknown as ReservationCommands;
  }

  /**
   * Connected and not just seen timing out. A Redis that is connected but does not answer (frozen,
   * its link cut) costs every command redis.command_timeout: a read and a lock before each source
   * lookup would spend most of a request's budget. After a command times out, Redis is passed over
   * for SUSPEND_AFTER_TIMEOUT_MS; the first command after that is the probe.
   */
  get up(): boolean {
    return this.conn.status === 'ready' && (this.suspendedUntil === 0 || Date.now() >= this.suspendedUntil);
  }

  private suspendedUntil = 0;

  /** Every command's failure comes here: a timeout suspends the tier (see up). */
  private failed(err: unknown): void {
    if (!(err instanceof Error) || !/timed out/i.test(err.message)) return;
    if (this.suspendedUntil === 0) this.logger.warn({ suspend_ms: SUSPEND_AFTER_TIMEOUT_MS }, 'redis did not answer within redis.command_timeout: going on without it for a while');
    this.suspendedUntil = Date.now() + SUSPEND_AFTER_TIMEOUT_MS;
  }

  /** A command answered: the tier is fully back if it was suspended. */
  private answered(): void {
    if (this.suspendedUntil === 0) return;
    this.suspendedUntil = 0;
    this.logger.info('redis answers again: shared cache in use');
  }

  stateKey(id: string): string {
    return `${this.prefix}${SCHEMA_VERSION}:{${id}}:q`;
  }

  private lockKey(id: string): string {
    return `${this.prefix}${SCHEMA_VERSION}:{${id}}:lock`;
  }

  reservationsKey(id: string): string {
    return `${this.prefix}${SCHEMA_VERSION}:{${id}}:r`;
  }

  /** Null when Redis is away or failed: the caller decides from its own reservations. */
  async reserve(id: string, txn: string, bytes: number, state: MailboxQuota, ttlMs: number, max: number): Promise<SharedReservation | null> {
    if (!this.up) return null;
    try {
      const r = shared(await this.scripts.oqReserve(this.reservationsKey(id), sharedName(txn), bytes, Date.now(), ttlMs, state.usageBytes, state.usageMessages ?? -1, max));
      this.answered();
      return r;
    } catch (err) {
      this.failed(err);
      return null;
    }
  }

  /** Everything pending for the mailbox, every frontend's; null when Redis is away or failed. */
  async peek(id: string): Promise<SharedReservation | null> {
    if (!this.up) return null;
    try {
      return shared(await this.scripts.oqPeek(this.reservationsKey(id), Date.now()));
    } catch (err) {
      this.failed(err);
      return null;
    }
  }

  /** A fresh reading from the source, taken at `at` (ms since the epoch). Not awaited by callers. */
  async reconcile(id: string, state: MailboxQuota, at: number): Promise<void> {
    if (!this.up) return;
    try {
      await this.scripts.oqReconcile(this.reservationsKey(id), state.usageBytes, state.usageMessages ?? -1, at, Date.now());
    } catch (err) {
      this.failed(err);
      /* the reservations expire by their TTL */
    }
  }

  async release(id: string, txn: string): Promise<void> {
    if (!this.up) return;
    try {
      await this.scripts.oqRelease(this.reservationsKey(id), sharedName(txn));
    } catch (err) {
      this.failed(err);
      /* it expires by its TTL */
    }
  }

  async resize(id: string, txn: string, bytes: number): Promise<void> {
    if (!this.up) return;
    try {
      await this.scripts.oqResize(this.reservationsKey(id), sharedName(txn), bytes);
    } catch (err) {
      this.failed(err);
      /* the SIZE= figure stays */
    }
  }

  /**
   * The cached state of `id` is to be read again within ms: its reservations tipped a verdict,
   * and only a fresh reading can show which of them were delivered. Never lengthens a TTL.
   */
  async expireSoon(id: string, ms: number): Promise<void> {
    if (!this.up) return;
    try {
      await this.conn.pexpire(this.stateKey(id), ms, 'LT');
    } catch (err) {
      this.failed(err);
      /* Redis before 7.0 has no LT: the state lives its TTL */
    }
  }

  async get(id: string): Promise<QuotaState | undefined> {
    if (!this.up) return undefined;
    try {
      const value = await this.conn.get(this.stateKey(id));
      this.answered();
      return decode(value);
    } catch (err) {
      this.failed(err);
      return undefined;
    }
  }

  async set(id: string, state: QuotaState, ttlMs: number, source: string): Promise<void> {
    if (!this.up || ttlMs <= 0) return;
    try {
      await this.conn.set(this.stateKey(id), encode(state, source), 'PX', ttlMs);
    } catch (err) {
      this.failed(err);
      /* the next lookup asks the source again */
    }
  }

  /** A token when we hold the lock now; false when another frontend holds it; null without Redis. */
  async tryLock(id: string, ttlMs: number): Promise<string | false | null> {
    if (!this.up) return null;
    const token = randomBytes(9).toString('base64');
    try {
      const ok = await this.conn.set(this.lockKey(id), token, 'PX', Math.max(1, ttlMs), 'NX');
      return ok === 'OK' ? token : false;
    } catch (err) {
      this.failed(err);
      return null;
    }
  }

  async unlock(id: string, token: string): Promise<void> {
    try {
      await this.conn.eval(UNLOCK, 1, this.lockKey(id), token);
    } catch (err) {
      this.failed(err);
      /* it expires by itself */
    }
  }

  /**
   * Waits for the lock holder's answer. Undefined when the lock went away without an answer (the
   * holder failed or died), Redis went away, or the deadline passed: the caller then asks itself.
   */
  async waitFor(id: string, deadline: number): Promise<QuotaState | undefined> {
    let pause = POLL_MIN_MS;
    while (Date.now() + pause < deadline && this.up) {
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(POLL_MAX_MS, pause * 2);
      try {
        const [[, value], [, locked]] = (await this.conn.multi().get(this.stateKey(id)).exists(this.lockKey(id)).exec()) as [
          [Error | null, string | null],
          [Error | null, number],
        ];
        const state = decode(value);
        if (state) return state;
        if (!locked) return undefined;
      } catch (err) {
        this.failed(err);
        return undefined;
      }
    }
    return undefined;
  }

  async forget(ids: string[]): Promise<void> {
    if (!this.up || ids.length === 0) return;
    try {
      // One DEL per mailbox: in a cluster mailboxes live in different slots (a mailbox's keys share one).
      await Promise.all(ids.map((id) => this.conn.del(this.stateKey(id), this.reservationsKey(id))));
    } catch (err) {
      this.failed(err);
      /* TTLs are short */
    }
  }

  async publishInvalidation(key: string): Promise<boolean> {
    if (!this.up) return false;
    try {
      await this.conn.publish(this.channel, JSON.stringify({ key }));
      return true;
    } catch (err) {
      this.failed(err);
      return false;
    }
  }

  /** Subscribes on a connection of its own (a subscribed connection can do nothing else). */
  subscribe(subscriber: RedisConnection, onInvalidate: (key: string) => void): void {
    subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return;
      try {
        const { key } = JSON.parse(message) as { key?: unknown };
        if (typeof key === 'string') onInvalidate(key);
      } catch {
        this.logger.warn({ channel }, 'ignored a malformed invalidation message');
      }
    });
    // Re-subscribes after every reconnection (ioredis also does, this makes it explicit for Cluster).
    const join = () => subscriber.subscribe(this.channel).catch(() => {});
    subscriber.on('ready', join);
    if (subscriber.status === 'ready') void join();
  }
}

function shared([bytes, messages, added, base]: [number, number, number, string]): SharedReservation {
  const [usage = '0', count = '-1'] = String(base).split(' ');
  return {
    others: { bytes: Number(bytes), messages: Number(messages) },
    added: Number(added) === 1,
    base: { usageBytes: Number(usage), usageMessages: Number(count) < 0 ? null : Number(count) },
  };
}

function encode(state: QuotaState, source: string): string {
  const stored: StoredState =
    state.kind === 'unknown'
      ? { state: 'unknown', checked_at: new Date().toISOString(), source }
      : {
          state: 'found',
          usage: state.usageBytes,
          limit: state.limitBytes,
          usage_messages: state.usageMessages,
          limit_messages: state.limitMessages,
          over: state.overQuota,
          checked_at: new Date().toISOString(),
          source,
        };
  return JSON.stringify(stored);
}

/** Anything unreadable is a miss: an old schema or another program's key must not become a verdict. */
function decode(value: string | null): QuotaState | undefined {
  if (!value) return undefined;
  try {
    const s = JSON.parse(value) as StoredState;
    if (s.state === 'unknown') return { kind: 'unknown' };
    if (s.state !== 'found' || typeof s.usage !== 'number') return undefined;
    return {
      kind: 'found',
      usageBytes: s.usage,
      limitBytes: s.limit ?? null,
      usageMessages: s.usage_messages ?? null,
      limitMessages: s.limit_messages ?? null,
      overQuota: s.over === true,
    };
  } catch {
    return undefined;
  }
}
