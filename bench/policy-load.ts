/*
 * Load generator for a Postfix policy server, shaped like Postfix itself: N persistent
 * connections, each sending one realistic Postfix 3.x RCPT request, waiting for the reply, then
 * sending the next (closed loop: smtpd never pipelines policy requests).
 *
 * Recipients come from a small fixed set, so after the warm-up phase a caching server answers from
 * its cache. Only replies that arrive inside the measured window count; latency is the time from
 * writing a request to reading its whole reply, kept in a perf_hooks histogram (microseconds).
 *
 *   node --import tsx bench/policy-load.ts --connect inet:127.0.0.1:10033 \
 *     [--connections 50] [--warmup 2] [--duration 8] [--recipients a@example.com,b@example.com] \
 *     [--server-pid PID] [--server-tree PID,PID] [--json]
 *
 * --server-pid makes it read that process's CPU time from /proc over the measured window.
 * --server-tree does the same for servers made of several processes (a Dovecot master and its
 * children; a frontend and its quota service): each PID with all its descendants, reported per PID
 * in serverTreeCpuPct and summed into serverCpuPct.
 * Exit status: 0 with no errors, 1 when any request failed, 2 on a usage error or no connection.
 */
import { parseArgs } from 'node:util';
import { ClosedLoop, parseTarget } from './closed-loop.js';
import { cpuPct, idlePct, intArg, isMain, machineJiffies, numArg, processCpuSeconds, processTreeCpuSeconds, prng, sleep } from './shared.js';

export interface LoadOptions {
  host: string;
  port: number;
  /** Persistent connections, each with one request in flight at a time. Default 50. */
  connections?: number;
  /** Seconds of load before measuring (fills caches, warms the JIT). Default 2. */
  warmupS?: number;
  /** Seconds measured. Default 8. */
  durationS?: number;
  /** Envelope recipients the requests are drawn from. Default DEFAULT_RECIPIENTS. */
  recipients?: string[];
  /** A request not answered in this long is an error (the connection is then replaced). Default 5000. */
  timeoutMs?: number;
  /** Read this process's CPU time (Linux /proc) over the measured window. */
  serverPid?: number;
  /** Read the CPU time of each of these processes with all its descendants (instead of serverPid). */
  serverTree?: number[];
}

export interface LoadResult {
  connections: number;
  warmupS: number;
  /** The measured window as it really ran, in seconds. */
  durationS: number;
  /** Replies received inside the measured window. */
  requests: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
  /** Failed requests (connection errors, timeouts, replies that are not action=...), whole run. */
  errors: number;
  errorSamples: string[];
  /** Reply actions seen in the measured window, by action text. */
  actions: Record<string, number>;
  /** CPU time of this load generator over the window, % of one core. */
  clientCpuPct: number;
  /** CPU time of --server-pid over the window, % of one core (null if unknown). */
  serverCpuPct: number | null;
  /** With serverTree: CPU of each root and its descendants over the window, % of one core. */
  serverTreeCpuPct?: (number | null)[];
  /** Whole-machine idle over the window, % of all cores (null if unknown). */
  machineIdlePct: number | null;
}

export const DEFAULT_RECIPIENTS = ['alice@example.com', 'bob@example.com', 'carol@example.com', 'dave@example.com'];

const QUEUE_ID_CHARS = 'BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789';

/**
 * Realistic Postfix 3.x RCPT requests (every attribute smtpd_check.c sends, in its order), cycled
 * through by the connections. Built once: the generator spends its CPU on the wire, not on text.
 * Postfix opens the queue file at the first accepted RCPT, so queue_id is empty for the first
 * recipient of a message and set for the next ones; size is the MAIL FROM SIZE= or 0.
 */
export function buildRequestPool(recipients: string[], count = 512, seed = 42): Buffer[] {
  if (recipients.length === 0) throw new Error('no recipients');
  const rnd = prng(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)]!;
  const senders = ['news@lists.example.net', 'alerts@monitoring.example.org', 'bob.smith@partner.example', '', 'bounces+abc123@mailer.example.com'];
  const clients = [
    { addr: '192.0.2.17', name: 'mx1.partner.example', helo: 'mx1.partner.example' },
    { addr: '198.51.100.42', name: 'unknown', helo: 'ylmf-pc' },
    { addr: '203.0.113.5', name: 'out.mailer.example.com', helo: 'out.mailer.example.com' },
    { addr: '2001:db8::25', name: 'smtp.example.org', helo: 'smtp.example.org' },
  ];
  const pool: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const client = pick(clients);
    const rcptIndex = Math.floor(rnd() * 3);
    let queueId = '';
    if (rcptIndex > 0) for (let k = 0; k < 12; k++) queueId += pick(QUEUE_ID_CHARS.split(''));
    const instance = `${(0x1000 + i).toString(16)}.${(0x65f1c0de + i).toString(16)}.${Math.floor(rnd() * 0xfffff).toString(16)}.${rcptIndex}`;
    const size = rnd() < 0.6 ? 0 : 100 + Math.floor(rnd() * 300);
    const tls = rnd() < 0.7;
    const lines = [
      'request=smtpd_access_policy',
      'protocol_state=RCPT',
      'protocol_name=ESMTP',
      `client_address=${client.addr}`,
      `client_name=${client.name}`,
      `client_port=${1024 + Math.floor(rnd() * 60000)}`,
      `reverse_client_name=${client.name}`,
      'server_address=192.0.2.1',
      'server_port=25',
      `helo_name=${client.helo}`,
      `sender=${pick(senders)}`,
      `recipient=${pick(recipients)}`,
      `recipient_count=${rcptIndex}`,
      `queue_id=${queueId}`,
      `instance=${instance}`,
      `size=${size}`,
      'etrn_domain=',
      'stress=',
      'sasl_method=',
      'sasl_username=',
      'sasl_sender=',
      'ccert_subject=',
      'ccert_issuer=',
      'ccert_fingerprint=',
      'ccert_pubkey_fingerprint=',
      `encryption_protocol=${tls ? 'TLSv1.3' : ''}`,
      `encryption_cipher=${tls ? 'TLS_AES_256_GCM_SHA384' : ''}`,
      `encryption_keysize=${tls ? '256' : '0'}`,
      'policy_context=',
      'compatibility_level=3.6',
      'mail_version=3.7.11',
    ];
    pool.push(Buffer.from(`${lines.join('\n')}\n\n`, 'utf8'));
  }
  return pool;
}

interface Snapshot {
  at: number;
  client: NodeJS.CpuUsage;
  server: number | null;
  tree: (number | null)[];
  machine: [number, number] | null;
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const connections = opts.connections ?? 50;
  const warmupS = opts.warmupS ?? 2;
  const durationS = opts.durationS ?? 8;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const pool = buildRequestPool(opts.recipients ?? DEFAULT_RECIPIENTS);
  const loop = new ClosedLoop({
    connections,
    timeoutMs,
    idleCloseNote: ' while idle',
    connection: (id) => {
      let next = (id * 97) % pool.length;
      return {
        host: opts.host,
        port: opts.port,
        request: () => {
          const request = pool[next]!;
          next = next + 1 === pool.length ? 0 : next + 1;
          return request;
        },
      };
    },
  });
  try {
    await loop.connect();
  } catch (err) {
    throw new Error(`cannot connect to ${opts.host}:${opts.port}: ${(err as Error).message}`);
  }

  const snapshot = (): Snapshot => ({
    at: performance.now(),
    client: process.cpuUsage(),
    server: opts.serverPid ? processCpuSeconds(opts.serverPid) : null,
    tree: opts.serverTree ? processTreeCpuSeconds(opts.serverTree) : [],
    machine: machineJiffies(),
  });

  loop.start();
  await sleep(warmupS * 1000);
  const start = snapshot();
  loop.measuring = true;
  await sleep(durationS * 1000);
  loop.measuring = false;
  const end = snapshot();
  await loop.stop();

  const windowS = (end.at - start.at) / 1000;
  const cpu = (end.client.user + end.client.system - start.client.user - start.client.system) / 1e6;
  const us = (v: number) => Math.round(v) / 1000;
  const { histogram } = loop;
  return {
    connections,
    warmupS,
    durationS: Math.round(windowS * 1000) / 1000,
    requests: loop.counted,
    rps: Math.round(loop.counted / windowS),
    p50Ms: us(histogram.percentile(50)),
    p90Ms: us(histogram.percentile(90)),
    p99Ms: us(histogram.percentile(99)),
    maxMs: us(histogram.max),
    meanMs: us(histogram.mean),
    errors: loop.errors,
    errorSamples: loop.errorSamples,
    actions: Object.fromEntries(loop.actions),
    clientCpuPct: Math.round((cpu / windowS) * 1000) / 10,
    ...serverCpu(start, end, windowS, opts.serverTree !== undefined),
    machineIdlePct: idlePct(start.machine, end.machine),
  };
}

function serverCpu(start: Snapshot, end: Snapshot, windowS: number, tree: boolean): Pick<LoadResult, 'serverCpuPct' | 'serverTreeCpuPct'> {
  if (!tree) return { serverCpuPct: cpuPct(start.server, end.server, windowS) };
  const each = start.tree.map((a, i) => cpuPct(a, end.tree[i] ?? null, windowS));
  const sum = each.every((c) => c !== null) ? Math.round(each.reduce((a: number, c) => a + c!, 0) * 10) / 10 : null;
  return { serverCpuPct: sum, serverTreeCpuPct: each };
}

export function formatResult(r: LoadResult): string {
  const lines = [
    `${r.requests} requests in ${r.durationS} s over ${r.connections} connections (after ${r.warmupS} s warm-up)`,
    `  ${r.rps} req/s   p50 ${r.p50Ms} ms   p90 ${r.p90Ms} ms   p99 ${r.p99Ms} ms   max ${r.maxMs} ms   mean ${r.meanMs} ms`,
    `  errors ${r.errors}${r.errorSamples.length ? ` (${r.errorSamples.join('; ')})` : ''}`,
    `  CPU: client ${r.clientCpuPct}% of a core, server ${r.serverCpuPct ?? '?'}%, machine idle ${r.machineIdlePct ?? '?'}%`,
    `  actions: ${Object.entries(r.actions)
      .map(([a, n]) => `${a} ×${n}`)
      .join(', ')}`,
  ];
  return lines.join('\n');
}

async function main(): Promise<number> {
  try {
    const { values } = parseArgs({
      options: {
        connect: { type: 'string' },
        connections: { type: 'string', default: '50' },
        warmup: { type: 'string', default: '2' },
        duration: { type: 'string', default: '8' },
        recipients: { type: 'string' },
        timeout: { type: 'string', default: '5000' },
        'server-pid': { type: 'string' },
        'server-tree': { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    });
    if (values.help) {
      console.log('usage: policy-load --connect inet:HOST:PORT [--connections 50] [--warmup 2] [--duration 8] [--recipients a@x,b@x] [--timeout MS] [--server-pid PID] [--server-tree PID,PID] [--json]');
      return 0;
    }
    if (!values.connect) throw new Error('--connect inet:HOST:PORT is required');
    const target = parseTarget(values.connect);
    const result = await runLoad({
      ...target,
      connections: intArg('connections', values.connections, 1, 10_000),
      warmupS: numArg('warmup', values.warmup, 0, 60),
      durationS: numArg('duration', values.duration, 0.1, 60),
      recipients: values.recipients ? values.recipients.split(',').filter(Boolean) : undefined,
      timeoutMs: numArg('timeout', values.timeout, 1, 60_000),
      serverPid: values['server-pid'] ? intArg('server-pid', values['server-pid'], 1, 2 ** 31) : undefined,
      serverTree: values['server-tree'] ? values['server-tree'].split(',').map((p) => intArg('server-tree', p, 1, 2 ** 31)) : undefined,
    });
    console.log(values.json ? JSON.stringify(result) : formatResult(result));
    return result.errors > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`policy-load: ${(err as Error).message}\n`);
    return 2;
  }
}

if (isMain(import.meta.url)) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
