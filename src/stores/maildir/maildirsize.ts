/*
 * Maildir++ quota file (maildirsize): parsing and Courier's rules for when to distrust it.
 *
 * Line 1: limits, e.g. "10000000S,1000C"; every further line "<bytes> <count>" deltas, summed.
 * Recount when the file is missing, 5120 bytes or more, or says "over quota" with several data
 * lines or an mtime 15 minutes old (Courier's README.maildirquota). Never throws on content.
 */
import { atLimit } from '../../quota.js';

/** Courier: a maildirsize this large has collected too many deltas; recount. */
export const RECALC_FILE_SIZE = 5120;
/** Courier: an over-quota file this old may be stale (messages deleted by hand); recount. */
export const RECALC_STALE_MS = 15 * 60 * 1000;

export interface Maildirsize {
  /** Line 1 as found, when it is a valid, non-empty limits line; kept when the file is rewritten. */
  limitsLine: string | null;
  /** null: no S limit (unlimited). */
  limitBytes: number | null;
  /** null: no C limit (unlimited). */
  limitMessages: number | null;
  usageBytes: number;
  usageMessages: number;
  dataLines: number;
  /** Why the figures cannot be trusted (garbage, negative totals), or null. */
  corruption: string | null;
}

const LIMIT_ITEM = /^(\d{1,18})([SC])$/;
const DATA_LINE = /^(-?\d{1,18})[ \t]+(-?\d{1,18})$/;

/** Reads the text of a maildirsize file; reports corruption instead of throwing. */
export function parseMaildirsize(text: string): Maildirsize {
  const lines = text.split('\n');
  const result: Maildirsize = {
    limitsLine: null,
    limitBytes: null,
    limitMessages: null,
    usageBytes: 0,
    usageMessages: 0,
    dataLines: 0,
    corruption: null,
  };
  const first = (lines[0] ?? '').trim();
  if (first.length > 0) {
    let valid = true;
    for (const item of first.split(',')) {
      const m = LIMIT_ITEM.exec(item.trim());
      if (!m) {
        valid = false;
        result.corruption = `bad limits line "${first.slice(0, 80)}"`;
        break;
      }
      // 0 means "no limit" in Maildir++ (as Dovecot reads it).
      const value = Number(m[1]) === 0 ? null : Number(m[1]);
      if (m[2] === 'S') result.limitBytes = value;
      else result.limitMessages = value;
    }
    if (valid) result.limitsLine = first;
    else {
      result.limitBytes = null;
      result.limitMessages = null;
    }
  }
  for (let i = 1; i < lines.length; i++) {
    // Courier pads lines with spaces; the final newline leaves one empty string.
    const line = lines[i]!.trim();
    if (line.length === 0) continue;
    const m = DATA_LINE.exec(line);
    if (!m) {
      result.corruption ??= `line ${i + 1} is not "<bytes> <count>"`;
      continue;
    }
    result.usageBytes += Number(m[1]);
    result.usageMessages += Number(m[2]);
    result.dataLines++;
  }
  if (result.usageBytes < 0 || result.usageMessages < 0) {
    result.corruption ??= `negative totals (${result.usageBytes} bytes, ${result.usageMessages} messages)`;
  }
  if (!Number.isSafeInteger(result.usageBytes) || !Number.isSafeInteger(result.usageMessages)) {
    result.corruption ??= 'totals overflow';
  }
  return result;
}

export interface MaildirsizeFile {
  parsed: Maildirsize;
  size: number;
  mtimeMs: number;
}

/** Why maildirsize must be recounted (Courier's rules), or null when its sums can be used. */
export function recalculationReason(file: MaildirsizeFile | null, nowMs: number): string | null {
  if (file === null) return 'maildirsize is missing';
  if (file.size >= RECALC_FILE_SIZE) return `maildirsize is ${file.size} bytes (>= ${RECALC_FILE_SIZE})`;
  const p = file.parsed;
  if (p.corruption !== null) return `maildirsize is corrupt: ${p.corruption}`;
  if (!atLimit(p.usageBytes, p.limitBytes, p.usageMessages, p.limitMessages)) return null;
  // Deltas from several deliveries, or an old file: an "over quota" may already be untrue.
  if (p.dataLines > 1) return 'maildirsize says over quota and has several data lines';
  if (nowMs - file.mtimeMs >= RECALC_STALE_MS) return 'maildirsize says over quota and is 15 minutes old or more';
  return null;
}

