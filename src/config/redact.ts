/*
 * Secrets out of what we print: error texts, `overquota config`, log lines naming a Redis URL.
 * One rule for all: values of keys named like a secret, and the password in a URL's user info.
 */
import type { Settings } from './schema.js';

/** The words that make a key's value a secret: a key named so, or ending so (redis_password). */
const SECRET_WORDS = 'token|password|secret|api_key';
/** Names of keys whose values are secrets. */
const SECRET_KEY = new RegExp(`(${SECRET_WORDS})$`, 'i');
/** A secret key's quoted value inside a text: "password": "...". */
const SECRET_IN_TEXT = new RegExp(`("[a-z_]*(?:${SECRET_WORDS})"\\s*:\\s*)"(?:[^"\\\\]|\\\\.)*"`, 'gi');
/** The password of a URL's user info: scheme://user:PASSWORD@host. */
const URL_PASSWORD = /(\/\/[^/@\s:"]*:)[^/@\s"]*@/g;

/** A URL (or any text holding URLs) with the password of its user info replaced. */
export function redactUrl(text: string): string {
  return text.replace(URL_PASSWORD, '$1[redacted]@');
}

/** Secrets inside an error text (convict prints the offending value, e.g. a backends list). */
export function redactText(text: string): string {
  return redactUrl(text.replace(SECRET_IN_TEXT, '$1"[redacted]"'));
}

/** The effective settings as JSON, secrets replaced, for `overquota config`. */
export function redactedSettings(settings: Settings): Settings {
  return JSON.parse(
    JSON.stringify(settings, (k, v) => {
      if (typeof v !== 'string' || v === '') return v;
      return SECRET_KEY.test(k) ? '[redacted]' : redactUrl(v);
    }),
  ) as Settings;
}
