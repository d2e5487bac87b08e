/*
 * Reservations (reservations.ts), shared by every frontend through Redis: the Lua scripts that add
 * and sum, reconcile, release and resize atomically, and their calls. Like the rest of the Redis
 * tier (redis-tier.ts), every call swallows Redis errors and answers as if Redis were away: the
 * caller then counts in its own process (recalling what Redis took from it: quota-cache.ts), and
 * decides from that. Nothing here waits past Redis's command
 * timeout (and the caller bounds that by what is left of the request's budget).
 */
import { hostname } from 'node:os';
import type { RedisConnection } from './redis-client.js';
import type { MailboxQuota } from '../quota.js';
import { STORED_SLACK, type Base, type Pending } from './reservations.js';

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
 * reservations its growth since the base covers (the rule of deliveredCount() in reservations.ts;
 * each keeps its own expiry: reconcile() there says why) and make it the base. A reading older
 * than the base is ignored (readings may arrive out of order).
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
    local growth, sum = nu - tonumber(bu), 0
    while released < #list and growth > 0 do
      sum = sum + list[released + 1][2]
      if growth < sum * (1 - ${STORED_SLACK}) then break end
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

/** What the tier lends the reservations: its health and its key names. */
interface Tier {
  readonly up: boolean;
  failed(err: unknown): void;
  answered(): void;
  reservationsKey(id: string): string;
}

export class RedisReservations {
  constructor(
    conn: RedisConnection,
    private readonly tier: Tier,
  ) {
    // EVALSHA with a fallback to EVAL: the scripts travel once per connection, not per call.
    conn.defineCommand('oqReserve', { numberOfKeys: 1, lua: RESERVE });
    conn.defineCommand('oqReconcile', { numberOfKeys: 1, lua: RECONCILE });
    conn.defineCommand('oqPeek', { numberOfKeys: 1, lua: PEEK });
    conn.defineCommand('oqRelease', { numberOfKeys: 1, lua: RELEASE });
    conn.defineCommand('oqResize', { numberOfKeys: 1, lua: RESIZE });
    this.scripts = conn as unknown as ReservationCommands;
  }

  private readonly scripts: ReservationCommands;

  /** Null when Redis is away or failed: the caller counts it in its own process (quota-cache.ts). */
  async reserve(id: string, txn: string, bytes: number, state: MailboxQuota, ttlMs: number, max: number): Promise<SharedReservation | null> {
    if (!this.tier.up) return null;
    try {
      const r = shared(await this.scripts.oqReserve(this.tier.reservationsKey(id), sharedName(txn), bytes, Date.now(), ttlMs, state.usageBytes, state.usageMessages ?? -1, max));
      this.tier.answered();
      return r;
    } catch (err) {
      this.tier.failed(err);
      return null;
    }
  }

  /** Everything pending for the mailbox, every frontend's; null when Redis is away or failed. */
  async peek(id: string): Promise<SharedReservation | null> {
    if (!this.tier.up) return null;
    try {
      return shared(await this.scripts.oqPeek(this.tier.reservationsKey(id), Date.now()));
    } catch (err) {
      this.tier.failed(err);
      return null;
    }
  }

  /** A fresh reading from the source, taken at `at` (ms since the epoch): how many it showed delivered. */
  async reconcile(id: string, state: MailboxQuota, at: number): Promise<number> {
    if (!this.tier.up) return 0;
    try {
      return Number(await this.scripts.oqReconcile(this.tier.reservationsKey(id), state.usageBytes, state.usageMessages ?? -1, at, Date.now()));
    } catch (err) {
      this.tier.failed(err);
      return 0; /* the reservations expire by their TTL */
    }
  }

  async release(id: string, txn: string): Promise<void> {
    if (!this.tier.up) return;
    try {
      await this.scripts.oqRelease(this.tier.reservationsKey(id), sharedName(txn));
    } catch (err) {
      this.tier.failed(err);
      /* it expires by its TTL */
    }
  }

  async resize(id: string, txn: string, bytes: number): Promise<void> {
    if (!this.tier.up) return;
    try {
      await this.scripts.oqResize(this.tier.reservationsKey(id), sharedName(txn), bytes);
    } catch (err) {
      this.tier.failed(err);
      /* the SIZE= figure stays */
    }
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
