/*
 * `overquota quota-service`: the backend HTTP service over the local mail store.
 */
import type { Settings } from '../config.js';
import { createLogger } from '../log.js';
import { parseListenAddress } from '../listen.js';
import { buildLocalStore } from '../sources/factory.js';
import { blockingIo } from '../sources/store-io.js';
import { reloadLimits } from '../sources/limits.js';
import { startQuotaService } from '../quota-service/server.js';
import { keepRunningOnBugs, onStopSignal } from './process.js';
import { RedisTier } from '../cache/redis-tier.js';

export async function runQuotaService(settings: Settings): Promise<number> {
  const logger = createLogger({ level: settings.log.level, file: settings.log.file, stdoutIsProtocol: false });
  keepRunningOnBugs(logger);
  const where = parseListenAddress(settings.quota_service.listen);
  if (typeof where === 'string' || where.kind !== 'inet') throw new Error(`quota_service.listen: ${String(where)}`);
  // Blocking file-system calls: thread-pool round trips were most of this service's CPU, and a
  // frontend bounds its wait on us anyway (store-io.ts).
  const { store, limits } = await buildLocalStore(settings.store, { writeMaildirsize: true, doveadm: settings.doveadm, io: blockingIo });
  process.on('SIGHUP', () => {
    if (limits) void reloadLimits(limits, logger);
  });
  const redis = settings.redis.url ? (await import('../cache/redis-client.js')).connectRedis(settings.redis, logger, 'overquota-quota-service') : null;
  const tier = redis ? new RedisTier(redis, settings.redis.prefix, logger) : null;
  const service = await startQuotaService({
    host: where.host,
    port: where.port,
    store,
    token: settings.quota_service.token || undefined,
    logger,
    maxConcurrentScans: settings.quota_service.max_concurrent_scans,
    publishInvalidation: tier ? (user) => tier.publishInvalidation(user) : undefined,
  });
  logger.info({ listen: `${where.host}:${service.port}`, store: store.name }, 'quota service ready');
  await new Promise<void>((resolve) => onStopSignal(resolve));
  await service.close();
  await store.close();
  redis?.disconnect();
  logger.flush();
  return 0;
}
