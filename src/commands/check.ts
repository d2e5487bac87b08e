/*
 * `overquota check ADDRESS [--size BYTES]`: the operator's first tool. Same settings, same path
 * as the frontend, printed for a person (or as JSON with --json).
 */
import type { Settings } from '../config/schema.js';
import { buildDecisionCore } from '../core/assemble.js';
import { postfixWouldSay, refuses } from '../core/replies.js';
import { UsageError } from './args.js';
import { createLogger } from '../runtime/log.js';

/** check asks Redis like the frontend does, once connected; it gives Redis this long. */
const REDIS_WAIT_MS = 1000;

/** Mail accepted for the mailbox and not yet seen stored (reservations), as far as this command can see it. */
function pendingLine(settings: Settings, pending: { bytes: number; messages: number } | null): string {
  if (!settings.reservations.enabled) return 'not counted (reservations.enabled is off)';
  const figures = `${pending?.bytes ?? 0} bytes in ${pending?.messages ?? 0} messages on their way`;
  // Without Redis each frontend keeps its own count in memory, out of this command's sight.
  return settings.redis.url ? figures : `${figures} here (without redis.url each frontend counts its own, in memory)`;
}

export async function runCheck(settings: Settings, address: string | undefined, sizeText: string | undefined, json: boolean): Promise<number> {
  if (!address) throw new UsageError('check needs an ADDRESS, e.g. overquota check alice@example.com');
  const size = sizeText === undefined ? 0 : Number(sizeText);
  if (!Number.isSafeInteger(size) || size < 0) throw new UsageError(`--size must be a number of bytes, not "${sizeText}"`);
  const core = await buildDecisionCore(settings, createLogger({ level: 'silent', file: '', stdoutIsProtocol: false }), { subscribe: false });
  await core.redisReady(REDIS_WAIT_MS);
  try {
    const d = await core.checker.check(address, size);
    const state = d.state?.kind === 'found' ? d.state : null;
    const postfix = postfixWouldSay(d.reply, d.recipient?.address ?? address);
    if (json) {
      console.log(JSON.stringify({ recipient: address, mailbox: d.recipient?.key ?? null, size, verdict: d.verdict.kind, reason: d.verdict.reason, usage: state?.usageBytes ?? null, limit: state?.limitBytes ?? null, pending: d.pending ?? { bytes: 0, messages: 0 }, source: d.source, cache: d.cache, error: d.error, ms: d.ms, reply: d.reply.words, postfix }));
    } else {
      const percent = state?.limitBytes ? ` (${Math.floor((state.usageBytes * 100) / state.limitBytes)}%)` : '';
      const rows: [string, string][] = [
        ['recipient', address],
        ['mailbox', d.recipient?.key ?? '(none)'],
        ['size', `${size} bytes`],
        ['verdict', `${d.verdict.kind} (${d.verdict.reason})`],
        ['usage', state ? `${state.usageBytes} bytes${percent}${state.usageMessages !== null ? `, ${state.usageMessages} messages` : ''}` : '-'],
        ['limit', state ? (state.limitBytes === null ? 'unlimited' : `${state.limitBytes} bytes`) : '-'],
        ['pending', pendingLine(settings, d.pending)],
        ['source', d.source ? `${d.source} (cache ${d.cache ?? '-'}, ${d.ms} ms)` : '-'],
        ['policy reply', `action=${d.reply.words}`],
        ['Postfix says', postfix],
      ];
      if (d.error) rows.splice(4, 0, ['error', `${d.error.code}: ${d.error.message}`]);
      for (const [k, v] of rows) console.log(`${k.padEnd(13)} ${v}`);
    }
    if (d.verdict.kind === 'error') return 2;
    return refuses(d.reply) ? 1 : 0;
  } finally {
    await core.close();
  }
}
