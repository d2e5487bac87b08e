/*
 * CPU per policy request of overquota's own code, without sockets: the decoder, the decision on a
 * warm cache and the decision log line, run in a loop in this process. A microscope for the
 * part of bench/policy.ts that is ours (the rest is Node's socket work and the kernel's), to
 * compare changes to the hot path within one invocation. Not a target of the issue.
 *
 *   node --import tsx bench/hot-path.ts [--seconds 2] [--rounds 3]
 *
 * Prints (to stderr) nanoseconds per request for: decode only; decode + decision with decision
 * lines off (log.level warn); decode + decision + the line (info), written to stdout as a
 * frontend does: send stdout to a file (or /dev/null), e.g. `... bench/hot-path.ts > /tmp/log`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildDecisionCore } from '../src/core/assemble.js';
import { loadSettings } from '../src/config/load.js';
import { createLogger } from '../src/runtime/log.js';
import { makePolicyHandler } from '../src/faces/policy/handler.js';
import { PolicyDecoder } from '../src/faces/policy/codec.js';
import { buildRequestPool } from './policy-load.js';
import { RECIPIENTS, STORE_LIMIT, writeSpool } from './policy-spool.js';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '2' }, rounds: { type: 'string', default: '3' } } });
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);

const dir = await mkdtemp(path.join(os.tmpdir(), 'overquota-hot-path-'));
const spool = path.join(dir, 'mail');
await writeSpool(spool);
const pool = buildRequestPool(RECIPIENTS);
const limits = { maxLineLength: 2048, maxAttributes: 100, maxRequestSize: 65536 };

async function handlerAt(level: string, extra: string[] = []) {
  const settings = loadSettings({ env: {}, args: ['--store.path', spool, '--store.limit', String(STORE_LIMIT), '--log.level', level, ...extra] });
  const logger = createLogger({ level, file: '', stdoutIsProtocol: false });
  const core = await buildDecisionCore(settings, logger, { subscribe: false });
  return makePolicyHandler(core.checker, { checkEndOfMessage: false, onError: settings.replies.on_error }, logger);
}

/** ns per request over `seconds`, in batches between event-loop turns (so log batches get written). */
async function measure(step: (chunk: Buffer) => void): Promise<number> {
  for (let i = 0; i < 20_000; i++) step(pool[i % pool.length]!); // warm-up, let V8 optimise
  let n = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < end) {
    for (let i = 0; i < 1000; i++) step(pool[(n + i) % pool.length]!);
    n += 1000;
    await new Promise((r) => setImmediate(r));
    now = process.hrtime.bigint();
  }
  return Number(now - start) / n;
}

const decoder = () => {
  const d = new PolicyDecoder(limits);
  return (chunk: Buffer) => void d.push(chunk);
};
const withHandler = (handle: Awaited<ReturnType<typeof handlerAt>>) => {
  const d = new PolicyDecoder(limits);
  return (chunk: Buffer) => {
    for (const r of d.push(chunk)) {
      const a = handle(r);
      if (typeof a !== 'string') void a.then(() => undefined);
    }
  };
};

const warn = await handlerAt('warn');
const warnNoReservations = await handlerAt('warn', ['--reservations.enabled', 'false']);
const info = await handlerAt('info');
const rows: Record<string, number[]> = { 'decode only': [], 'decode + decision (warn)': [], '... reservations off': [], 'decode + decision + log line (info)': [] };
for (let r = 0; r < rounds; r++) {
  rows['decode only']!.push(await measure(decoder()));
  rows['decode + decision (warn)']!.push(await measure(withHandler(warn)));
  rows['... reservations off']!.push(await measure(withHandler(warnNoReservations)));
  rows['decode + decision + log line (info)']!.push(await measure(withHandler(info)));
}
for (const [name, ns] of Object.entries(rows)) {
  const sorted = [...ns].sort((a, b) => a - b);
  console.error(`${name.padEnd(38)} median ${Math.round(sorted[Math.floor(sorted.length / 2)]!)} ns/request  (runs: ${ns.map((x) => Math.round(x)).join(', ')})`);
}
await rm(dir, { recursive: true, force: true });
process.exit(0);
