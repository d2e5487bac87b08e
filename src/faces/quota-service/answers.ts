/*
 * The quota service's answers, as text and JSON: the seed quota.cgi's one line, byte for byte
 * ("OK|OVERQUOTA <user> <size> <quota>", "UNKNOWN <user>"), our JSON, and the error forms; and the
 * one request parameter it reads. Pure: no socket, no store (server.ts does those).
 */
import type { ServerResponse } from 'node:http';
import { isFull, type QuotaState } from '../../quota.js';

export type Format = 'text' | 'json';
export const ROUTES: Record<string, Format> = { '/quota': 'text', '/cgi-bin/quota.cgi': 'text', '/quota.json': 'json' };

export interface Answer {
  status: number;
  body: string;
  format: Format;
  headers?: Record<string, string>;
  user?: string;
  error?: string;
}

export function render(user: string, state: QuotaState, format: Format, source: string): Answer {
  if (state.kind === 'unknown') {
    if (format === 'text') return plain(404, `UNKNOWN ${user}`);
    return json(404, { user, state: 'unknown', usage: null, limit: null, source });
  }
  const over = isFull(state);
  if (format === 'text') {
    // The seed prints 0 for "no quota"; existing frontends read it that way.
    return plain(200, `${over ? 'OVERQUOTA' : 'OK'} ${user} ${state.usageBytes} ${state.limitBytes ?? 0}`);
  }
  return json(200, {
    user,
    state: over ? 'overquota' : 'ok',
    usage: { bytes: state.usageBytes, messages: state.usageMessages },
    limit: { bytes: state.limitBytes, messages: state.limitMessages },
    source,
  });
}

/* The `u` parameter, form-decoded, or why it cannot be used. Never echoes the raw value. */
export function userParameter(query: string): string | { error: string } {
  let value: string | undefined;
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const name = eq === -1 ? pair : pair.slice(0, eq);
    if (name !== 'u') continue;
    // Two u= parameters: a proxy and we might each pick a different one.
    if (value !== undefined) return { error: 'more than one u parameter' };
    value = eq === -1 ? '' : pair.slice(eq + 1);
  }
  if (value === undefined || value.length === 0) return { error: 'missing u parameter' };
  try {
    // decodeURIComponent rejects percent-encoded bytes that are not UTF-8 (URLSearchParams would
    // silently turn them into U+FFFD).
    return decodeURIComponent(value.replaceAll('+', ' '));
  } catch {
    return { error: 'u is not valid UTF-8 percent-encoding' };
  }
}


export function plain(status: number, line: string): Answer {
  return { status, body: `${line}\n`, format: 'text' };
}

export function json(status: number, doc: unknown): Answer {
  return { status, body: JSON.stringify(doc), format: 'json' };
}

export function fail(status: number, reason: string, format: Format): Answer {
  const a = format === 'json' ? json(status, { error: reason }) : plain(status, `ERROR ${reason}`);
  return { ...a, error: reason };
}

export function send(res: ServerResponse, a: Answer): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(a.status, {
    'content-type': a.format === 'json' ? 'application/json; charset=utf-8' : 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(a.body),
    'cache-control': 'no-store',
    ...a.headers,
  });
  res.end(a.body);
}

/* The path for the log line, without the query (it holds the user, logged separately once vetted). */
export function safePath(url: string | undefined): string {
  const target = url ?? '';
  const q = target.indexOf('?');
  return (q === -1 ? target : target.slice(0, q)).slice(0, 100);
}
