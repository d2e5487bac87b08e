/*
 * The shared tier: quota states in Redis, a short lock for cluster-wide single-flight, and the
 * invalidation channel.
 *
 * Keys: PREFIX v1:{SOURCE|KEY}:q (the state), ...:lock, and ...:r (its reservations, see
 * redis-reservations.ts); the braces are a Redis Cluster hash tag, so a mailbox's keys share a slot. Values are JSON with the state, the figures, when
 * and by which source they were checked. Every method swallows Redis errors and answers as if the
 * entry were absent: the caller then asks the source directly. Nothing here waits past its deadline.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { RedisConnection } from './redis-client.js';
import type { QuotaState } from '../quota.js';
import { RedisReservations } from './redis-reservations.js';
import { NO_METRICS, type Count } from '../runtime/metrics.js';

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

/** Releases the lock only if it is still ours (it may have expired and been taken by another). */
const UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

export class RedisTier {
  private readonly channel: string;

  constructor(
    private readonly conn: RedisConnection,
    private readonly prefix: string,
    private readonly logger: Logger,
    /** Commands that failed or timed out, counted for the metrics. */
    private readonly errors: Count = NO_METRICS.redisErrors,
  ) {
    this.channel = `${prefix}${SCHEMA_VERSION}:invalidate`;
    this.reservations = new RedisReservations(conn, this);
  }

  /** The mailboxes' shared reservations (redis-reservations.ts). */
  readonly reservations: RedisReservations;

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
  failed(err: unknown): void {
    this.errors.inc();
    if (!(err instanceof Error) || !/timed out/i.test(err.message)) return;
    if (this.suspendedUntil === 0) this.logger.warn({ suspend_ms: SUSPEND_AFTER_TIMEOUT_MS }, 'redis did not answer within redis.command_timeout: going on without it for a while');
    this.suspendedUntil = Date.now() + SUSPEND_AFTER_TIMEOUT_MS;
  }

  /** `listener` runs whenever the connection is lost (closed, or a connection error). */
  whenLost(listener: () => void): void {
    this.conn.on('close', listener);
    this.conn.on('error', listener);
  }

  /** A command answered: the tier is fully back if it was suspended. */
  answered(): void {
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
