/*
 * Settings -> an ioredis connection (standalone over TCP, TLS or a unix socket; Sentinel; Cluster),
 * set to fail fast: no offline queue, a short command timeout, automatic reconnection.
 *
 * Redis trouble is not mail trouble: while Redis is away every command fails at once and the cache
 * goes on without it. State changes are logged once each (down, back), never once per request.
 * An 'error' listener is always attached: without one ioredis writes to stderr, which in spawn
 * mode is the SMTP client's channel.
 */
import { readFileSync } from 'node:fs';
import { Redis, Cluster, type RedisOptions, type ClusterOptions } from 'ioredis';
import type { Logger } from 'pino';
import { redactUrl } from '../config/redact.js';

export type RedisConnection = Redis | Cluster;

export interface RedisSettings {
  url: string;
  mode: 'standalone' | 'sentinel' | 'cluster';
  sentinel_master: string;
  username: string;
  password: string;
  tls_ca: string;
  command_timeout: number;
}

/** Reconnection back-off: quick at first, then every 2 s, forever. */
const retry = (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000);
const CONNECT_TIMEOUT_MS = 1000;

interface Endpoint {
  host?: string;
  port?: number;
  path?: string;
  username?: string;
  password?: string;
  db?: number;
  tls: boolean;
}

export function parseRedisAddress(text: string): Endpoint {
  const t = text.trim();
  if (t.startsWith('/')) return { path: t, tls: false };
  if (t.startsWith('unix:')) return { path: t.slice(5).replace(/^\/\//, ''), tls: false };
  const withScheme = /^[a-z]+:\/\//i.test(t) ? t : `redis://${t}`;
  const url = new URL(withScheme);
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new Error(`redis.url: "${text}" is not redis://, rediss:// or a socket path`);
  const db = url.pathname.length > 1 ? Number(url.pathname.slice(1)) : undefined;
  return {
    host: url.hostname.replace(/^\[|\]$/g, ''),
    // No port: the caller's default (6379 for Redis, 26379 for a Sentinel).
    port: url.port ? Number(url.port) : undefined,
    username: url.username ? decodeURIComponent(url.username) : undefined,
    password: url.password ? decodeURIComponent(url.password) : undefined,
    db: Number.isInteger(db) ? db : undefined,
    tls: url.protocol === 'rediss:',
  };
}

export function connectRedis(s: RedisSettings, logger: Logger, name: string): RedisConnection {
  const addresses = s.url.split(',').map((a) => a.trim()).filter(Boolean);
  const first = parseRedisAddress(addresses[0]!);
  const auth = { username: s.username || first.username, password: s.password || first.password };
  const tls = first.tls ? { ca: s.tls_ca ? readFileSync(s.tls_ca) : undefined } : undefined;
  const common: RedisOptions = {
    ...auth,
    tls,
    connectionName: name,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: s.command_timeout,
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: retry,
  };
  let conn: RedisConnection;
  if (s.mode === 'cluster') {
    const nodes = addresses.map((a) => {
      const e = parseRedisAddress(a);
      return { host: e.host!, port: e.port ?? 6379 };
    });
    const { retryStrategy: _r, enableOfflineQueue: _q, ...nodeOptions } = common;
    const options: ClusterOptions = {
      enableOfflineQueue: false,
      clusterRetryStrategy: retry,
      redisOptions: nodeOptions,
      slotsRefreshTimeout: CONNECT_TIMEOUT_MS,
    };
    conn = new Cluster(nodes, options);
  } else if (s.mode === 'sentinel') {
    conn = new Redis({
      ...common,
      sentinels: addresses.map((a) => {
        const e = parseRedisAddress(a);
        return { host: e.host!, port: e.port ?? 26379 };
      }),
      name: s.sentinel_master,
      sentinelRetryStrategy: retry,
    });
  } else {
    conn = new Redis({ ...common, host: first.host, port: first.port ?? 6379, path: first.path, db: first.db });
  }
  watchState(conn, logger, s);
  return conn;
}

/** Connections we are closing ourselves (shutdown): their close is no outage to warn about. */
const closing = new WeakSet<RedisConnection>();

/** Closes a connection on purpose, without the "redis unavailable" warning an outage gets. */
export function closeRedis(conn: RedisConnection): void {
  closing.add(conn);
  conn.disconnect();
}

function watchState(conn: RedisConnection, logger: Logger, s: RedisSettings): void {
  let state: 'connecting' | 'up' | 'down' = 'connecting';
  const where = { redis: redactUrl(s.url), mode: s.mode };
  conn.on('ready', () => {
    // Good news is info: the warning was the outage.
    if (state === 'down') logger.info(where, 'redis is back: shared cache in use again');
    else logger.info(where, 'redis connected: shared cache in use');
    state = 'up';
  });
  const down = (err?: Error) => {
    if (state === 'down' || closing.has(conn)) return;
    state = 'down';
    logger.warn({ ...where, error: err?.message }, 'redis unavailable: answering from the memory cache and the sources, reconnecting');
  };
  conn.on('error', (err: Error) => down(err));
  conn.on('close', () => {
    if (state === 'up') down();
  });
}
