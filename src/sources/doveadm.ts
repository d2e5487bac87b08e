/*
 * Quota source: Dovecot's doveadm HTTP API (`quotaGet`), from a frontend or from the quota service.
 *
 * POST /doveadm/v1 with [["quotaGet",{"user":KEY},KEY]], one command per request, keep-alive. The
 * tag (the last element) is the mailbox key and doveadm echoes it: an answer whose tag is not the
 * key asked is SOURCE_BAD_ANSWER, so figures are believed only for the mailbox they name.
 * Answer rows: {"root","type":"STORAGE"|"MESSAGE","value","limit","percent"}, all strings; STORAGE
 * in KiB; limit "-" means none. Several quota roots (user, domain...): the fullest one counts.
 * Errors: exitCode 67 (EX_NOUSER) is an unknown mailbox; 401, transport trouble and anything
 * unreadable are SourceErrors: never a fake "room", never a throw of another kind. Busy is asked
 * again within the caller's signal (as http.ts does): exit code 75 (EX_TEMPFAIL, "try again") and
 * HTTP 503. A storage limit is in KiB, so one that is not 0 is at least 1024 bytes: always a
 * plausible limit (types.ts).
 */
import type { Pool } from 'undici';
import { found, SourceError, type QuotaSource, type QuotaState } from '../quota.js';
import { BUSY, openPool, readBounded, asSourceError, untilNotBusy } from './http-client.js';

export interface DoveadmSourceOptions {
  /** e.g. http://127.0.0.1:8080/doveadm/v1 */
  url: string;
  /** doveadm_password (Basic auth as user "doveadm"). */
  password?: string;
  /** doveadm_api_key (X-Dovecot-API); used when no password is given. */
  apiKey?: string;
  maxConnections: number;
  name?: string;
}

const EX_NOUSER = 67;
const EX_TEMPFAIL = 75;
/** A quotaGet answer is a few hundred bytes; several roots stay far below this. */
const MAX_DOVEADM_ANSWER_BYTES = 64 * 1024;

interface Row {
  root?: unknown;
  type?: unknown;
  value?: unknown;
  limit?: unknown;
}

export class DoveadmSource implements QuotaSource {
  readonly name: string;
  private readonly pool: Pool;
  private readonly path: string;
  private readonly headers: Record<string, string>;

  constructor(opts: DoveadmSourceOptions) {
    const url = new URL(opts.url);
    this.name = opts.name ?? `doveadm:${url.host}${url.pathname}`;
    this.path = url.pathname + url.search;
    this.pool = openPool(url.origin, opts.maxConnections);
    this.headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (opts.password) this.headers.authorization = `Basic ${Buffer.from(`doveadm:${opts.password}`).toString('base64')}`;
    else if (opts.apiKey) this.headers.authorization = `X-Dovecot-API ${Buffer.from(opts.apiKey).toString('base64')}`;
  }

  lookup(key: string, signal: AbortSignal): Promise<QuotaState> {
    return untilNotBusy(signal, this.name, () => this.ask(key, signal));
  }

  private async ask(key: string, signal: AbortSignal): Promise<QuotaState | typeof BUSY> {
    let body: string;
    let status: number;
    try {
      const res = await this.pool.request({
        method: 'POST',
        path: this.path,
        headers: this.headers,
        body: JSON.stringify([['quotaGet', { user: key }, key]]),
        signal,
      });
      status = res.statusCode;
      body = await readBounded(res.body, signal, MAX_DOVEADM_ANSWER_BYTES);
    } catch (err) {
      throw asSourceError(err, signal, this.name);
    }
    if (status === 401 || status === 403) {
      throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} refused our credentials (HTTP ${status}): check doveadm_password / doveadm_api_key`);
    }
    if (status === 503) return BUSY;
    if (status !== 200) throw new SourceError('SOURCE_HTTP_STATUS', `${this.name} answered HTTP ${status}`);
    try {
      return parseQuotaGet(body, this.name, key);
    } catch (err) {
      if (err instanceof SourceError && err.code === 'SOURCE_BUSY') return BUSY;
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

/** @param tag the tag sent (the key asked); when given, the answer must carry it. */
export function parseQuotaGet(body: string, name = 'doveadm', tag?: string): QuotaState {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    throw new SourceError('SOURCE_BAD_ANSWER', `${name}: not JSON: ${JSON.stringify(body.slice(0, 80))}`);
  }
  const first = Array.isArray(doc) ? (doc[0] as unknown[]) : null;
  if (!Array.isArray(first)) throw new SourceError('SOURCE_BAD_ANSWER', `${name}: not a doveadm answer`);
  if (tag !== undefined && first[2] !== tag) {
    throw new SourceError('SOURCE_BAD_ANSWER', `${name}: the answer is tagged ${JSON.stringify(first[2])}, not the mailbox asked, ${JSON.stringify(tag)}`);
  }
  if (first[0] === 'error') {
    const code = (first[1] as { exitCode?: unknown } | undefined)?.exitCode;
    if (code === EX_NOUSER) return { kind: 'unknown' };
    if (code === EX_TEMPFAIL) throw new SourceError('SOURCE_BUSY', `${name}: temporary failure (exit code 75)`);
    throw new SourceError('SOURCE_BAD_ANSWER', `${name}: error ${JSON.stringify(first[1])}`);
  }
  if (first[0] !== 'doveadmResponse' || !Array.isArray(first[1])) throw new SourceError('SOURCE_BAD_ANSWER', `${name}: unexpected answer ${JSON.stringify(first[0])}`);
  return fullestRoot(first[1] as Row[], name);
}

/** Per quota root, storage and message figures; the root closest to (or furthest past) its limit wins. */
function fullestRoot(rows: Row[], name: string): QuotaState {
  const roots = new Map<string, { bytes?: [number, number | null]; messages?: [number, number | null] }>();
  for (const row of rows) {
    const root = String(row.root ?? '');
    const entry = roots.get(root) ?? {};
    const value = figure(row.value, name);
    const figureOrNone = row.limit === '-' || row.limit === undefined ? null : figure(row.limit, name);
    // "-" and 0 both mean no limit for Dovecot.
    const limit = figureOrNone === 0 ? null : figureOrNone;
    if (row.type === 'STORAGE') entry.bytes = [value * 1024, limit === null ? null : limit * 1024];
    else if (row.type === 'MESSAGE') entry.messages = [value, limit];
    roots.set(root, entry);
  }
  let best: QuotaState = found(0, null);
  let bestRatio = -1;
  for (const r of roots.values()) {
    const [usage, limit] = r.bytes ?? [0, null];
    const [msgs, msgLimit] = r.messages ?? [null, null];
    const ratio = Math.max(limit ? usage / limit : 0, msgLimit && msgs !== null ? msgs / msgLimit : 0);
    if (ratio > bestRatio) {
      bestRatio = ratio;
      best = found(usage, limit, { usageMessages: msgs, limitMessages: msgLimit });
    }
  }
  return best;
}

function figure(v: unknown, name: string): number {
  const n = typeof v === 'string' && /^\d{1,15}$/.test(v) ? Number(v) : typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : NaN;
  if (Number.isNaN(n)) throw new SourceError('SOURCE_BAD_ANSWER', `${name}: quota figure ${JSON.stringify(v)}`);
  return n;
}
