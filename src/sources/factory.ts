/*
 * Settings -> quota sources. The only place that knows which class serves which setting.
 * Fails at start-up (throws) on a limits file with bad lines: better than a wrong quota later.
 */
import type { Logger } from 'pino';
import type { Backend } from '../config/formats.js';
import type { Settings } from '../config/schema.js';
import { LimitsFile } from '../stores/limits.js';
import { MaildirStore } from '../stores/maildir/store.js';
import { MboxStore } from '../stores/mbox.js';
import { Router } from './router.js';
import type { QuotaSource } from '../quota.js';
import type { StoreIo } from '../stores/io.js';
import type { Timing } from '../runtime/metrics.js';

/** HTTP clients are loaded only when a backend needs one (undici is a large part of start-up memory). */
export async function doveadmSource(url: string, password: string, apiKey: string, maxConnections: number): Promise<QuotaSource> {
  const { DoveadmSource } = await import('./doveadm.js');
  return new DoveadmSource({ url, password: password || undefined, apiKey: apiKey || undefined, maxConnections });
}

async function httpSource(urlTemplate: string, token: string, maxConnections: number): Promise<QuotaSource> {
  const { HttpSource } = await import('./http.js');
  return new HttpSource({ urlTemplate, token, maxConnections });
}

/** The limits file behind the last buildLocalStore, for reloading on SIGHUP (null: none). */
export interface LocalStore {
  store: QuotaSource;
  limits: LimitsFile | null;
}

/**
 * `io`: how lookups touch the disk (stores/io.ts); frontends keep the default, the thread pool.
 * `maxConcurrentScans`: Maildir recounts at once (scan-slots.ts); `logger`: where a failed
 * maildirsize rewrite is reported; `scanTimes`: each recount's duration (the metrics).
 */
export async function buildLocalStore(
  store: Settings['store'],
  opts: { writeMaildirsize: boolean; doveadm: Settings['doveadm']; io?: StoreIo; maxConcurrentScans?: number; logger?: Logger; scanTimes?: Timing },
): Promise<LocalStore> {
  if (store.type === 'doveadm') return { store: await doveadmSource(opts.doveadm.url, opts.doveadm.password, opts.doveadm.api_key, 16), limits: null };
  let limits: LimitsFile | undefined;
  if (store.limits_file) {
    limits = new LimitsFile();
    const errors = await limits.load(store.limits_file);
    if (errors.length > 0) {
      const list = errors.map((e) => `${store.limits_file}:${e.line}: ${e.reason}${e.text ? ` (${JSON.stringify(e.text)})` : ''}`);
      throw new Error(`store.limits_file has bad lines:\n${list.join('\n')}`);
    }
  }
  const defaultLimitBytes = store.limit === 0 ? null : store.limit;
  if (store.type === 'maildir') {
    const maildir = new MaildirStore({
      root: store.path,
      mailbox: store.mailbox,
      defaultLimitBytes,
      limits,
      trashFolders: store.trash_folders,
      scanCacheMailboxes: store.scan_cache_mailboxes,
      writeMaildirsize: opts.writeMaildirsize,
      io: opts.io,
      maxConcurrentScans: opts.maxConcurrentScans,
      logger: opts.logger,
      scanTimes: opts.scanTimes,
    });
    return { store: maildir, limits: limits ?? null };
  }
  return { store: new MboxStore({ root: store.path, mailbox: store.mailbox, defaultLimitBytes, limits, io: opts.io }), limits: limits ?? null };
}

/**
 * The frontend's router: the default source plus one source per served domain (shared when equal).
 * The limits files of its local stores are added to `limitsFiles`, for reloading on SIGHUP.
 */
export async function buildRouter(settings: Settings, limitsFiles: LimitsFile[] = []): Promise<Router> {
  const byDescription = new Map<string, Promise<QuotaSource>>();
  const max = settings.source.max_connections;
  const make = (b: Omit<Backend, 'domains'>): Promise<QuotaSource> => {
    const id = JSON.stringify([b.type, b.url, b.token, b.password, b.api_key]);
    let source = byDescription.get(id);
    if (!source) {
      if (b.type === 'local') {
        source = buildLocalStore(settings.store, { writeMaildirsize: false, doveadm: settings.doveadm }).then((l) => {
          if (l.limits) limitsFiles.push(l.limits);
          return l.store;
        });
      }
      else if (b.type === 'doveadm') source = doveadmSource(b.url ?? '', b.password ?? '', b.api_key ?? '', max);
      else source = httpSource(b.url ?? '', b.token ?? '', max);
      byDescription.set(id, source);
    }
    return source;
  };
  const d = settings.doveadm;
  const fallback = await make(
    settings.source.type === 'doveadm'
      ? { type: 'doveadm', url: d.url, password: d.password, api_key: d.api_key }
      : { type: settings.source.type, url: settings.source.url, token: settings.source.token },
  );
  const table = new Map<string, QuotaSource>();
  for (const backend of settings.backends) {
    const source = await make({ ...backend, token: backend.token ?? settings.source.token });
    for (const domain of backend.domains) table.set(domain, source);
  }
  return new Router(fallback, table);
}
