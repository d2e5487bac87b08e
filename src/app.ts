/*
 * Settings -> a ready decision core (router, cache, checker). Shared by the frontend and `check`,
 * so the check command answers exactly as the running service would.
 */
import type { Settings } from './config.js';
import { QuotaCache } from './cache/quota-cache.js';
import { QuotaChecker } from './core/checker.js';
import { buildRouter } from './sources/factory.js';
import type { Router } from './sources/router.js';

export interface DecisionCore {
  checker: QuotaChecker;
  cache: QuotaCache;
  router: Router;
  close(): Promise<void>;
}

export async function buildDecisionCore(settings: Settings): Promise<DecisionCore> {
  const router = await buildRouter(settings);
  const cache = new QuotaCache(settings.cache.max_entries, settings.cache.ttl);
  const checker = new QuotaChecker(router, cache, {
    rules: {
      delimiters: settings.recipient.delimiter,
      lowercaseLocalPart: settings.recipient.lowercase_local_part,
      keyTemplate: settings.recipient.mailbox_key,
    },
    replies: settings.replies,
    dryRun: settings.dry_run,
    latencyBudgetMs: settings.latency_budget,
    sourceTimeoutMs: settings.source.timeout,
  });
  return {
    checker,
    cache,
    router,
    close: async () => {
      await Promise.all(router.sources().map((s) => s.close()));
    },
  };
}
