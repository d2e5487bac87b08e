/*
 * Recipient domain -> quota source.
 *
 * With no table, every domain goes to the default source (the seed's single-host setup). With a
 * table, only its domains are ours; an entry ".example.com" also matches every subdomain, as
 * Postfix's parent_domain_matches_subdomains style tables do. Any other domain: null (DUNNO).
 */
import type { QuotaSource } from '../quota.js';

export class Router {
  constructor(
    private readonly fallback: QuotaSource,
    private readonly table: ReadonlyMap<string, QuotaSource>,
  ) {}

  route(domain: string): QuotaSource | null {
    if (this.table.size === 0) return this.fallback;
    const exact = this.table.get(domain);
    if (exact) return exact;
    for (let dot = domain.indexOf('.'); dot !== -1; dot = domain.indexOf('.', dot + 1)) {
      const parent = this.table.get(domain.slice(dot));
      if (parent) return parent;
    }
    return null;
  }

  /** Every distinct source, for closing at shutdown. */
  sources(): QuotaSource[] {
    return [...new Set([this.fallback, ...this.table.values()])];
  }
}
