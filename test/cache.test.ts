import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ttlFor, type TtlPolicy } from '../src/cache/ttl.js';
import { MemoryCache } from '../src/cache/memory.js';
import { Fifo } from '../src/cache/fifo.js';
import { parseRedisAddress } from '../src/cache/redis-client.js';
import { found } from '../src/quota.js';

const policy: TtlPolicy = { under_quota: 30_000, over_quota: 10_000, unknown: 60_000, near_limit: 2_000, near_limit_ratio: 0.1 };

test('a mailbox with plenty of room keeps the full under-quota TTL', () => {
  assert.equal(ttlFor(found(10, 1000), policy), 30_000);
  assert.equal(ttlFor(found(900, 1000), policy), 30_000);
  assert.equal(ttlFor(found(10 ** 9, null), policy), 30_000);
});

test('in the last 10% of the quota the TTL shrinks with the room left, down to near_limit', () => {
  assert.equal(ttlFor(found(950, 1000), policy), 15_000);
  assert.equal(ttlFor(found(990, 1000), policy), 3_000);
  assert.equal(ttlFor(found(999, 1000), policy), 2_000);
});

test('the message-count limit counts as headroom too', () => {
  assert.equal(ttlFor(found(1, 1000, { usageMessages: 95, limitMessages: 100 }), policy), 15_000);
});

test('full, over and unknown mailboxes get their own TTLs', () => {
  assert.equal(ttlFor(found(1000, 1000), policy), 10_000);
  assert.equal(ttlFor(found(10, 1000, { overQuota: true }), policy), 10_000);
  assert.equal(ttlFor({ kind: 'unknown' }, policy), 60_000);
});

test('the memory tier never holds more than max_entries and forgets the oldest entry first', () => {
  let now = 0;
  const cache = new MemoryCache<number>(2, () => now);
  cache.set('a', 1, 1000);
  cache.set('b', 2, 1000);
  cache.set('a', 1, 1000);
  cache.set('c', 3, 1000);
  assert.equal(cache.size, 2);
  assert.equal(cache.get('b'), undefined, 'b was the oldest insertion');
  assert.equal(cache.get('a'), 1);
  assert.equal(cache.get('c'), 3);
  now = 1000;
  assert.equal(cache.get('a'), undefined, 'expired at its TTL');
});

test('expired entries leave the memory tier even when their mailboxes are never asked again', () => {
  let now = 0;
  const cache = new MemoryCache<number>(100_000, () => now);
  for (let i = 0; i < 1000; i++) cache.set(`once${i}`, i, 2000);
  now = 5000;
  for (let i = 0; i < 1000; i++) cache.set(`later${i}`, i, 2000);
  assert.equal(cache.size, 1000, 'only the live entries are held, far below max_entries');
});

test('the insertion order beside a Map: oldest first, entries gone from the Map skipped, bounded whatever the churn', () => {
  const map = new Map<string, object>();
  const order = new Fifo<object>((k, v) => map.get(k) === v);
  const set = (k: string) => {
    const v = {};
    map.set(k, v);
    order.push(k, v, map.size);
  };
  ['a', 'b', 'c'].forEach(set);
  set('a'); // set again: now the newest
  map.delete('b');
  assert.equal(order.oldest(), 'c', 'b is gone, a moved to the end');
  order.shift();
  assert.equal(order.oldest(), 'a');
  // 100,000 sets of the same three keys: the stale entries do not pile up.
  for (let i = 0; i < 100_000; i++) set(['x', 'y', 'z'][i % 3]!);
  assert.ok(order.held <= 2 * map.size + 1024, `${order.held} held for ${map.size} keys`);
  assert.equal(order.oldest(), 'a');
});

test('redis.url accepts redis://, rediss://, a socket path, users and passwords', () => {
  assert.deepEqual(parseRedisAddress('redis://127.0.0.1:6380/2'), { host: '127.0.0.1', port: 6380, username: undefined, password: undefined, db: 2, tls: false });
  assert.deepEqual(parseRedisAddress('rediss://quota:p%40ss@redis.example:6390'), { host: 'redis.example', port: 6390, username: 'quota', password: 'p@ss', db: undefined, tls: true });
  assert.deepEqual(parseRedisAddress('/run/redis/redis.sock'), { path: '/run/redis/redis.sock', tls: false });
  assert.deepEqual(parseRedisAddress('unix:/run/redis.sock'), { path: '/run/redis.sock', tls: false });
  assert.equal(parseRedisAddress('10.0.0.1:26379').port, 26379);
  assert.throws(() => parseRedisAddress('http://x'), /not redis:\/\//);
});
