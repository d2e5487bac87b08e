/*
 * `overquota status`: asks a running frontend's admin endpoint (admin.listen) whether it is ready
 * (GET /ready) and prints the answer in words, or as it came with --json.
 * Exit 0: ready; 1: running but degraded (the lines say what); 2: no frontend answered there.
 * It only reads: it never changes the frontend, and needs no token.
 */
import type { Settings } from '../config/schema.js';
import { parseListenAddress } from '../config/listen.js';
import { UsageError } from './args.js';

/** Longer than a frontend's own checks of its stores (2 s each), short enough for a person waiting. */
const STATUS_TIMEOUT_MS = 5000;

/** What GET /ready answers (faces/admin/server.ts). */
interface Readiness {
  status: 'ready' | 'degraded';
  listeners?: string[];
  redis?: 'up' | 'down' | 'off';
  sources?: Record<string, string>;
  error?: string;
}

const REDIS_WORDS = {
  up: 'up: the shared cache is in use',
  down: 'DOWN: not connected; answers come from the memory cache and the sources',
  off: 'off (redis.url not set)',
};

/** http://HOST:PORT of the admin endpoint in the settings; a usage error when it is off. */
export function adminUrl(settings: Settings): string {
  if (!settings.admin.listen) throw new UsageError('admin.listen is empty: the frontend has no admin endpoint to ask');
  const where = parseListenAddress(settings.admin.listen);
  if (typeof where === 'string' || where.kind !== 'inet') return `http://${settings.admin.listen}`;
  // A frontend listening on every address is asked on loopback.
  const host = where.host === '0.0.0.0' ? '127.0.0.1' : where.host === '::' ? '::1' : where.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${where.port}`;
}

export async function runStatus(settings: Settings, json: boolean): Promise<number> {
  const url = adminUrl(settings);
  let res: Response;
  try {
    res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) });
  } catch (err) {
    const why = (err as Error & { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    console.log(`frontend      no answer at ${url} (${why}): is overquota frontend running, with admin.listen ${settings.admin.listen}?`);
    return 2;
  }
  const body = (await res.json().catch(() => null)) as Readiness | null;
  if (json) {
    console.log(JSON.stringify(body));
  } else if (!body || (body.status !== 'ready' && body.status !== 'degraded')) {
    console.log(`frontend      ${url} answered HTTP ${res.status} without a readiness report: is it an overquota frontend?`);
    return 2;
  } else {
    console.log(describe(url, body).join('\n'));
  }
  return res.status === 200 && body?.status === 'ready' ? 0 : 1;
}

/** The report in words, one line per part; what is wrong says so in capitals. */
function describe(url: string, r: Readiness): string[] {
  const lines = [`frontend      ${url}: ${r.status === 'ready' ? 'ready' : 'DEGRADED'}`];
  if (r.error) lines.push(`error         ${r.error}`);
  if (r.listeners) lines.push(`listening on  ${r.listeners.join(', ') || '(nothing)'}`);
  if (r.redis) lines.push(`redis         ${REDIS_WORDS[r.redis]}`);
  for (const [name, state] of Object.entries(r.sources ?? {})) {
    // "not asked yet" (core/assemble.ts NOT_ASKED_YET): no lookup since start-up, nothing known against it.
    // "..., none since": a failure older than a minute, named but no longer making it unready.
    lines.push(`source        ${name}: ${state === 'ok' || state === 'not asked yet' || state.endsWith(', none since') ? state : `FAILING: ${state}`}`);
  }
  return lines;
}
