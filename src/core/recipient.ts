/*
 * Recipient address -> mailbox key.
 *
 * Postfix hands us the envelope recipient before alias expansion, possibly with an extension such
 * as user+tag, possibly UTF-8 with SMTPUTF8, in its internal form: a quoted local part arrives
 * unquoted (`"bob"@example.com` as `recipient=bob@example.com`, seen). The milter gets the RCPT
 * argument as the client wrote it (`<"bob"@example.com>`), so a quoted local part is unquoted here
 * the way Postfix does (RFC 5321 quoted-string: the quotes go, `\x` is x): `"bob"` and `bob` are
 * the same mailbox and must get the same key. The key is what a quota source knows the mailbox
 * by: the local part alone (as the seed's quota.cgi) or the whole address. This module must never
 * throw on any input: a malformed address is "no recipient".
 */
import { Memo } from '../runtime/memo.js';

export interface RecipientRules {
  /** Characters that start an address extension (Postfix recipient_delimiter); empty: none. */
  delimiters: string;
  /** Fold the local part to lower case (the domain is always folded: DNS is case-insensitive). */
  lowercaseLocalPart: boolean;
  /** Mailbox key template: {local}, {domain} and {address} (local@domain, extension removed). */
  keyTemplate: string;
}

export interface Recipient {
  /** As received, for logs. */
  original: string;
  local: string;
  domain: string;
  /** local@domain after folding and extension removal. */
  address: string;
  /** local@domain after folding, extension kept: what virtual(5) looks up first. */
  fullAddress: string;
  key: string;
}

/** Longest address we look at: RFC 5321 paths are at most 256 octets. */
export const MAX_ADDRESS_LENGTH = 512;

/**
 * parseRecipient for a hot path: the same recipients come again and again (one per RCPT), and the
 * result depends only on the text and the rules. Bounded: cleared when full.
 */
export class RecipientParser {
  private readonly memo: Memo<string, Recipient | null>;
  constructor(rules: RecipientRules, maxEntries = 10_000) {
    this.memo = new Memo((raw) => parseRecipient(raw, rules), maxEntries);
  }

  parse(raw: string): Recipient | null {
    return this.memo.get(raw);
  }
}

export function parseRecipient(raw: string, rules: RecipientRules): Recipient | null {
  let addr = raw.trim();
  if (addr.startsWith('<') && addr.endsWith('>')) addr = addr.slice(1, -1).trim();
  if (addr === '' || addr.length > MAX_ADDRESS_LENGTH) return null;
  // CR, LF, NUL and their kind are never in an address (RFC 5321 allows none, even quoted, but
  // a policy value or a milter RCPT can carry them): they must not reach a key, a log or a URL.
  if (CONTROL.test(addr)) return null;
  if (!addr.isWellFormed()) addr = addr.toWellFormed();

  const at = addr.lastIndexOf('@');
  let local = unquote(at < 0 ? addr : addr.slice(0, at));
  const domain = at < 0 ? '' : addr.slice(at + 1).toLowerCase().replace(/\.$/, '');
  // "user@" names no domain: not the same as a bare "user" (which Postfix completes itself).
  if (local === '' || (at >= 0 && domain === '')) return null;

  if (rules.lowercaseLocalPart) local = local.toLowerCase();
  const fullAddress = domain === '' ? local : `${local}@${domain}`;
  local = stripExtension(local, rules.delimiters);

  const address = domain === '' ? local : `${local}@${domain}`;
  // One pass with a function: replaceAll() with a string would read "$'" or "$&" in an address as
  // patterns, and a later placeholder would be filled in again inside an earlier one's value
  // ("{domain}@example.com" became the key "example.com"): a sender choosing another's mailbox.
  const key = rules.keyTemplate.replace(PLACEHOLDER, (name: string) => (name === '{local}' ? local : name === '{domain}' ? domain : address));
  return { original: raw, local, domain, address, fullAddress, key };
}

const CONTROL = /[\u0000-\u001f\u007f]/;
const PLACEHOLDER = /\{local\}|\{domain\}|\{address\}/g;

/** RFC 5321 quoted-string -> Postfix's internal form: `"a\"b"` is `a"b`. Anything else is left as it is. */
function unquote(local: string): string {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  return local.slice(1, -1).replace(/\\(.)/gs, '$1');
}

/**
 * Cuts user+tag to user at the first delimiter character, as Postfix does; a local part that
 * starts with a delimiter (e.g. "+tag") is left alone so that it never becomes empty.
 */
export function stripExtension(local: string, delimiters: string): string {
  if (delimiters === '') return local;
  for (let i = 1; i < local.length; i++) {
    if (delimiters.includes(local[i]!)) return local.slice(0, i);
  }
  return local;
}

