/*
 * Settings -> quota sources. The only place that knows which class serves which setting.
 * Fails at start-up (throws) on a limits file with bad lines: better than a wrong quota later.
 */
import type { Settings } from '../config.js';
import { HttpSource } from './http.js';
import { LimitsFile } from './limits.js';
import { MaildirStore } from './maildir.js';
import { MboxStore } from './mbox.js';
import { Router } from './router.js';
import type { QuotaSource } from './types.js';

export async function buildLocalStore(store: Settings['store'], opts: { writeMaildirsize: boolean }): Promise<QuotaSource> {
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
    return new MaildirStore({
      root: store.path,
      mailbox: store.mailbox,
      defaultLimitBytes,
      limits,
      trashFolders: store.trash_folders,
      writeMaildirsize: opts.writeMaildirsize,
    });
  }
  return new MboxStore({ root: store.path, mailbox: store.mailbox, defaultLimitBytes, limits });
}

/** The frontend's router: the default source plus one source per served domain (shared when equal). */
export async function buildRouter(settings: Settings): Promise<Router> {
  const byDescription = new Map<string, Promise<QuotaSource>>();
  const make = (type: 'local' | 'http', url: string, token: string): Promise<QuotaSource> => {
    const id = `${type} ${url} ${token}`;
    let source = byDescription.get(id);
    if (!source) {
      source =
        type === 'local'
          ? buildLocalStore(settings.store, { writeMaildirsize: false })
          : Promise.resolve(new HttpSource({ urlTemplate: url, token, maxConnections: settings.source.max_connections }));
      byDescription.set(id, source);
    }
    return source;
  };
  const fallback = await make(settings.source.type, settings.source.url, settings.source.token);
  const table = new Map<string, QuotaSource>();
  for (const backend of settings.backends) {
    const source = await make(backend.type, backend.url ?? '', backend.token ?? settings.source.token);
    for (const domain of backend.domains) table.set(domain, source);
  }
  return new Router(fallback, table);
}
