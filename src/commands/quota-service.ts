/*
 * `overquota quota-service`: the backend HTTP service over the local mail store.
 * Refuses to start (a configuration error, exit 78) on a listener beyond loopback that would let
 * anyone reaching it make every frontend forget its cache: POST /invalidate without a token.
 */
import { ConfigError } from '../config/load.js';
import { type Settings } from '../config/schema.js';
import type { Logger } from 'pino';
import { parseListenAddress } from '../config/listen.js';
import { buildLocalStore } from '../sources/factory.js';
import { blockingIo } from '../stores/io.js';
import { reloadLimits } from '../stores/limits.js';
import { startQuotaService } from '../faces/quota-service/server.js';
import { isLoopback } from '../runtime/bearer.js';
import { onStopSignal } from '../runtime/process.js';
import { RedisTier } from '../cache/redis-tier.js';
import { healthOf } from '../quota.js';

/** logger: the daemon's, made by cli.ts (which also logs a failed start and exits on bugs). */
export async function runQuotaService(settings: Settings, logger: Logger): Promise<number> {
  const where = parseListenAddress(settings.quota_service.listen);
  if (typeof where === 'string' || where.kind !== 'inet') throw new Error(`quota_service.listen: ${String(where)}`);
  if (settings.redis.url && !settings.quota_service.token && !isLoopback(where.host)) {
    throw new ConfigError(
      `quota_service.token: required when quota_service.listen (${settings.quota_service.listen}) is not on loopback and redis.url is set: ` +
        'without it anyone who reaches the port can POST /invalidate and make every frontend forget its cache',
    );
  }
  const metrics = (await import('../runtime/prometheus.js')).createPrometheusMetrics('quota-service');
  // Blocking file-system calls: thread-pool round trips were most of this service's CPU, and a
  // frontend bounds its wait on us anyway (stores/io.ts).
  const { store, limits } = await buildLocalStore(settings.store, {
    writeMaildirsize: true,
    doveadm: settings.doveadm,
    io: blockingIo,
    maxConcurrentScans: settings.quota_service.max_concurrent_scans,
    logger,
    scanTimes: metrics.scans,
  });
  // Not a refusal to start: the store may be mounted later; until then lookups get 503 and /ready says why.
  const unreadable = await healthOf(store);
  if (unreadable) logger.warn({ store: store.name, reason: unreadable }, 'the mail store cannot be read: lookups are answered 503 until it can (GET /ready says so)');
  process.on('SIGHUP', () => {
    if (limits) void reloadLimits(limits, logger).then((ok) => (ok ? metrics.reloads.ok : metrics.reloads.failed).inc());
  });
  const redisClient = settings.redis.url ? await import('../cache/redis-client.js') : null;
  const redis = redisClient?.connectRedis(settings.redis, logger, 'overquota-quota-service') ?? null;
  const tier = redis ? new RedisTier(redis, settings.redis.prefix, logger, metrics.redisErrors) : null;
  if (redis) metrics.redisConnected(() => redis.status === 'ready');
  const service = await startQuotaService({
    host: where.host,
    port: where.port,
    store,
    token: settings.quota_service.token || undefined,
    logger,
    maxLookups: settings.quota_service.max_lookups,
    publishInvalidation: tier ? (user) => tier.publishInvalidation(user) : undefined,
    metrics,
  });
  logger.info({ listen: `${where.host}:${service.port}`, store: store.name }, 'quota service ready');
  await new Promise<void>((resolve) => onStopSignal(resolve));
  logger.info('stopping: no new connections, answering what is in flight');
  await service.close();
  await store.close();
  if (redis) redisClient?.closeRedis(redis);
  logger.info('stopped');
  logger.flush();
  return 0;
}
