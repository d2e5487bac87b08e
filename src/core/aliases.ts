/*
 * An alias map in Postfix virtual(5) format: an address before alias expansion -> its mailboxes.
 *
 * Postfix asks the policy service about the address the client wrote, before virtual_alias_maps
 * expands it: an alias to a full mailbox would slip through (the hole Dovecot's quota-status has).
 * Lines: "pattern result, result ..."; "#" comments; indented lines continue the previous one.
 * Patterns: user@domain, @domain (catch-all). A bare "domain.tld anything" line only declares a
 * virtual alias domain and is ignored here. Each address is looked up in virtual(5)'s order:
 * user+extension@domain as written, then user@domain without the extension, then @domain; so an
 * entry for user+ext@domain wins over user@domain. Expansion is recursive, as Postfix's, to MAX_DEPTH;
 * a result equal to its own pattern stays (the "keep a copy" idiom). Reloaded on SIGHUP; a file
 * with bad lines is refused and the previous map kept.
 */
import { readFile } from 'node:fs/promises';
import { stripExtension } from './recipient.js';

export const MAX_DEPTH = 10;
/** Refuse absurd expansions (an address fanning out to thousands) rather than look them all up. */
export const MAX_TARGETS = 100;
const MAX_FILE_BYTES = 64 * 1024 * 1024;

export class AliasMap {
  private table = new Map<string, string[]>();

  constructor(readonly path: string) {}

  get size(): number {
    return this.table.size;
  }

  /** Loads or reloads the file; throws with file:line for bad lines (the old table stays). */
  async load(): Promise<void> {
    const text = await readFile(this.path, 'utf8');
    if (text.length > MAX_FILE_BYTES) throw new Error(`${this.path}: larger than ${MAX_FILE_BYTES} bytes`);
    this.table = parseVirtual(text, this.path);
  }

  /**
   * The final addresses for an address (lower-case, extension kept), or null when the map does not
   * name it. `delimiters`: recipient_delimiter, for the lookup without the extension.
   */
  expand(address: string, delimiters = ''): string[] | null {
    if (!this.lookup(address, delimiters)) return null;
    const out: string[] = [];
    const keep = (a: string) => {
      if (!out.includes(a) && out.length < MAX_TARGETS) out.push(a);
    };
    const visit = (addr: string, depth: number, path: Set<string>) => {
      const next = depth <= MAX_DEPTH && !path.has(addr) ? this.lookup(addr, delimiters) : undefined;
      if (!next) return keep(addr);
      const below = new Set(path).add(addr);
      for (const t of next) {
        if (t === addr) keep(t);
        else visit(t, depth + 1, below);
      }
    };
    visit(address, 0, new Set());
    return out;
  }

  /** virtual(5)'s order: user+ext@domain, user@domain, @domain. */
  private lookup(address: string, delimiters: string): string[] | undefined {
    const exact = this.table.get(address);
    if (exact) return exact;
    const at = address.lastIndexOf('@');
    if (at === -1) return undefined;
    const local = address.slice(0, at);
    const bare = stripExtension(local, delimiters);
    if (bare !== local) {
      const withoutExtension = this.table.get(bare + address.slice(at));
      if (withoutExtension) return withoutExtension;
    }
    return this.table.get(address.slice(at));
  }
}

export function parseVirtual(text: string, file = 'aliases'): Map<string, string[]> {
  const table = new Map<string, string[]>();
  const logical: { line: number; text: string }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || /^\s*#/.test(line)) return;
    if (/^\s/.test(line) && logical.length > 0) logical[logical.length - 1]!.text += ` ${line.trim()}`;
    else logical.push({ line: i + 1, text: line.trim() });
  });
  for (const { line, text: l } of logical) {
    const m = /^(\S+)\s+(.+)$/.exec(l);
    if (!m) throw new Error(`${file}:${line}: "${l.slice(0, 80)}" has a pattern but no result`);
    const pattern = m[1]!.toLowerCase();
    if (!pattern.includes('@')) {
      if (pattern.includes('.')) continue; // "example.com anything": declares a virtual alias domain
      throw new Error(`${file}:${line}: "${pattern}" is a bare local part; write user@domain or @domain`);
    }
    const results = m[2]!.split(/[\s,]+/).filter(Boolean).map((r) => r.toLowerCase());
    if (results.some((r) => !r.includes('@'))) throw new Error(`${file}:${line}: every result must be user@domain`);
    table.set(pattern, results);
  }
  return table;
}
