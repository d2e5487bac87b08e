/*
 * `overquota frontend`: the policy listeners (or spawn mode) over the decision core.
 */
import { ConfigError } from '../config/load.js';
import { type Settings } from '../config/schema.js';
import { isLoopback } from '../runtime/bearer.js';
import { buildDecisionCore } from '../core/assemble.js';
import { makePolicyHandler } from '../faces/policy/handler.js';
import { servePolicyStdio, startPolicyServer } from '../faces/policy/server.js';
import { parseListenAddress, type ListenAddress } from '../config/listen.js';
import { onStopSignal } from '../runtime/process.js';
import { startAdminServer } from '../faces/admin/server.js';
import { startMilterServer } from '../faces/milter/server.js';
import { makeMilterDecider } from '../faces/milter/handler.js';
import type { DecisionCore } from '../core/assemble.js';
import type { Logger } from 'pino';
import type { MetricsExport } from '../runtime/metrics.js';

/** Extra time after the latency budget for in-flight answers at shutdown. */
const SHUTDOWN_GRACE_MS = 1000;
const REDIS_STARTUP_WAIT_MS = 1000;

/** logger: the daemon's, made by cli.ts (which also logs a failed start and exits on bugs). */
export async function runFrontend(settings: Settings, stdio: boolean, logger: Logger): Promise<number> {
  checkAdminToken(settings);
  // Spawn mode is one process per SMTP session (Postfix runs up to 100): one Redis connection
  // each, no invalidation subscriber (its memory tier lives seconds; it reads Redis anyway).
  // Metrics are served by the admin endpoint: without it (and in spawn mode) prom-client is not
  // even loaded, and nothing is counted.
  const metrics = !stdio && settings.admin.listen ? (await import('../runtime/prometheus.js')).createPrometheusMetrics('frontend') : undefined;
  const core = await buildDecisionCore(settings, logger, { subscribe: !stdio, metrics });
  // Not required to answer (Redis is optional at every moment), but a frontend that starts
  // with Redis reachable should use it from its first request.
  // Not in spawn mode: one process per SMTP session must answer at once (Redis is optional anyway).
  if (!stdio) await core.redisReady(REDIS_STARTUP_WAIT_MS);
  const handle = makePolicyHandler(core.checker, { checkEndOfMessage: settings.policy.check_end_of_message, onError: settings.replies.on_error, decisions: settings.log.decisions, counts: metrics?.face('policy') }, logger);
  const limits = {
    maxLineLength: settings.policy.max_line_length,
    maxAttributes: settings.policy.max_attributes,
    maxRequestSize: settings.policy.max_request_size,
  };

  if (stdio) {
    const session = servePolicyStdio({ input: process.stdin, output: process.stdout, limits, handle, logger });
    onStopSignal(() => session.finish());
    await session.done;
    await core.close();
    logger.flush();
    return 0;
  }

  if (settings.policy.listen.length === 0 && settings.milter.listen.length === 0) {
    throw new Error('nothing to listen on: policy.listen and milter.listen are both empty');
  }
  const policy = settings.policy.listen.length === 0 ? null : await startPolicyServer({
    listeners: settings.policy.listen.map((l) => parseListenAddress(l, settings.policy.socket_group) as ListenAddress),
    socketMode: parseInt(settings.policy.socket_mode, 8),
    idleTimeoutMs: settings.policy.idle_timeout,
    limits,
    handle,
    logger,
    shutdownGraceMs: settings.latency_budget + SHUTDOWN_GRACE_MS,
    counts: metrics?.face('policy'),
  });
  const milter = settings.milter.listen.length === 0 ? null : await startMilterServer({
    listeners: settings.milter.listen.map((l) => parseListenAddress(l, settings.milter.socket_group) as ListenAddress),
    socketMode: parseInt(settings.milter.socket_mode, 8),
    idleTimeoutMs: settings.milter.idle_timeout,
    decide: makeMilterDecider(core.checker, settings.replies.on_error, logger, settings.log.decisions, metrics?.face('milter')),
    messages: core.checker,
    logger,
    shutdownGraceMs: settings.latency_budget + SHUTDOWN_GRACE_MS,
    counts: metrics?.face('milter'),
  });
  if (policy) metrics?.openConnections('policy', () => policy.connections());
  if (milter) metrics?.openConnections('milter', () => milter.connections());
  const admin = await startAdminIfWanted(settings, core, logger, [...(policy?.addresses ?? []), ...(milter?.addresses ?? [])], metrics);
  process.on('SIGHUP', () => void core.reload());
  logger.info(
    {
      policy: policy?.addresses ?? [],
      milter: milter?.addresses ?? [],
      admin: admin?.address,
      sources: core.router.sources().map((s) => s.name),
      redis: settings.redis.url ? settings.redis.mode : 'off',
      reservations: settings.reservations.enabled,
      decisions: settings.log.decisions,
    },
    'frontend ready',
  );
  await new Promise<void>((resolve) => onStopSignal(resolve));
  logger.info('stopping: no new connections, answering what is in flight');
  await admin?.close();
  await Promise.all([policy?.close(), milter?.close()]);
  await core.close();
  logger.info('stopped');
  logger.flush();
  return 0;
}

/** An admin listener others can reach must not take invalidations from anyone: a token is required there. */
function checkAdminToken(settings: Settings): void {
  if (!settings.admin.listen || settings.admin.token) return;
  const where = parseListenAddress(settings.admin.listen);
  if (typeof where !== 'string' && where.kind === 'inet' && !isLoopback(where.host)) {
    throw new ConfigError(`admin.listen: ${settings.admin.listen} is not on loopback: set admin.token (POST requests must then carry it), or listen on 127.0.0.1`);
  }
}

async function startAdminIfWanted(settings: Settings, core: DecisionCore, logger: Logger, listeners: string[], metrics: MetricsExport | undefined) {
  if (!settings.admin.listen) return null;
  const where = parseListenAddress(settings.admin.listen);
  if (typeof where === 'string' || where.kind !== 'inet') throw new Error(`admin.listen: ${String(where)}`);
  const admin = await startAdminServer({ host: where.host, port: where.port, core, token: settings.admin.token, logger, listeners, metrics });
  logger.info({ listen: admin.address }, 'admin endpoint ready');
  return admin;
}
