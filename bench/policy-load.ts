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
 *     [--server-pid PID] [--json]
 *
 * --server-pid makes it read that process's CPU time from /proc over the measured window.
 * Exit status: 0 with no errors, 1 when any request failed, 2 on a usage error or no connection.
 */
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { createHistogram } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

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
  /** Whole-machine idle over the window, % of all cores (null if unknown). */
  machineIdlePct: number | null;
}

export const DEFAULT_RECIPIENTS = ['alice@example.com', 'bob@example.com', 'carol@example.com', 'dave@example.com'];

const MAX_DISTINCT_ACTIONS = 32;

/** A tiny deterministic PRNG (mulberry32), so every run sends the same requests. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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

/** utime + stime of a process in seconds (all threads), or null when /proc cannot tell. */
export function processCpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of proc(5) (utime, stime), counted from field 3 after the ")".
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

/** [idle, total] jiffies of the whole machine, or null. */
export function machineJiffies(): [number, number] | null {
  try {
    const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
    const n = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (n[3] ?? 0) + (n[4] ?? 0);
    return [idle, n.reduce((a, b) => a + b, 0)];
  } catch {
    return null;
  }
}

interface Snapshot {
  at: number;
  client: NodeJS.CpuUsage;
  server: number | null;
  machine: [number, number] | null;
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const connections = opts.connections ?? 50;
  const warmupS = opts.warmupS ?? 2;
  const durationS = opts.durationS ?? 8;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const pool = buildRequestPool(opts.recipients ?? DEFAULT_RECIPIENTS);
  const histogram = createHistogram();
  const actions = new Map<string, number>();
  const errorSamples: string[] = [];
  let errors = 0;
  let measuring = false;
  let stopping = false;
  let counted = 0;

  const fail = (what: string) => {
    errors++;
    if (errorSamples.length < 10) errorSamples.push(what);
  };

  class Client {
    socket!: net.Socket;
    buffer = '';
    sentAt = 0;
    inFlight = false;
    next: number;
    closedByUs = false;

    constructor(readonly id: number) {
      this.next = (id * 97) % pool.length;
    }

    connect(): Promise<void> {
      this.buffer = '';
      this.inFlight = false;
      this.closedByUs = false;
      const socket = net.connect({ host: opts.host, port: opts.port, noDelay: true });
      this.socket = socket;
      socket.setEncoding('latin1');
      socket.on('data', (text: string) => {
        if (socket === this.socket) this.onData(text);
      });
      const connected = new Promise<void>((resolve, reject) => {
        socket.once('connect', () => resolve());
        socket.once('error', reject);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (socket === this.socket && !this.closedByUs && !stopping) fail(`connection ${this.id}: ${err.code ?? err.message}`);
      });
      socket.on('close', () => {
        if (socket !== this.socket || this.closedByUs || stopping) return;
        if (this.inFlight) fail(`connection ${this.id}: closed by the server with a request in flight`);
        else fail(`connection ${this.id}: closed by the server while idle`);
        this.replace();
      });
      return connected;
    }

    replace(): void {
      this.closedByUs = true;
      this.socket.destroy();
      if (stopping) return;
      setTimeout(() => {
        if (stopping) return;
        this.connect().then(
          () => this.send(),
          () => undefined, // counted by the error handler; the close handler tries again
        );
      }, 50);
    }

    send(): void {
      if (stopping) return;
      const request = pool[this.next]!;
      this.next = this.next + 1 === pool.length ? 0 : this.next + 1;
      this.inFlight = true;
      this.sentAt = performance.now();
      this.socket.write(request);
    }

    onData(text: string): void {
      this.buffer = this.buffer === '' ? text : this.buffer + text;
      for (let end = this.buffer.indexOf('\n\n'); end !== -1; end = this.buffer.indexOf('\n\n')) {
        const reply = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        const now = performance.now();
        if (!this.inFlight || !reply.startsWith('action=')) {
          fail(`connection ${this.id}: unexpected reply ${JSON.stringify(reply.slice(0, 80))}`);
          this.replace();
          return;
        }
        this.inFlight = false;
        if (measuring) {
          counted++;
          histogram.record(Math.max(1, Math.round((now - this.sentAt) * 1000)));
          const action = reply.slice(7);
          const seen = actions.get(action);
          if (seen !== undefined) actions.set(action, seen + 1);
          else if (actions.size < MAX_DISTINCT_ACTIONS) actions.set(action, 1);
          else actions.set('(other)', (actions.get('(other)') ?? 0) + 1);
        }
        this.send();
      }
    }
  }

  const clients = Array.from({ length: connections }, (_, i) => new Client(i));
  try {
    await Promise.all(clients.map((c) => c.connect()));
  } catch (err) {
    stopping = true;
    for (const c of clients) c.socket?.destroy();
    throw new Error(`cannot connect to ${opts.host}:${opts.port}: ${(err as Error).message}`);
  }

  const snapshot = (): Snapshot => ({
    at: performance.now(),
    client: process.cpuUsage(),
    server: opts.serverPid ? processCpuSeconds(opts.serverPid) : null,
    machine: machineJiffies(),
  });

  const watchdog = setInterval(() => {
    const now = performance.now();
    for (const c of clients) {
      if (c.inFlight && now - c.sentAt > timeoutMs) {
        fail(`connection ${c.id}: no reply within ${timeoutMs} ms`);
        c.replace();
      }
    }
  }, 250);

  for (const c of clients) c.send();
  await sleep(warmupS * 1000);
  const start = snapshot();
  measuring = true;
  await sleep(durationS * 1000);
  measuring = false;
  const end = snapshot();
  stopping = true;

  // Let the requests in flight finish (they do not count), so the server sees clean EOFs.
  const deadline = performance.now() + timeoutMs;
  while (clients.some((c) => c.inFlight) && performance.now() < deadline) await sleep(10);
  clearInterval(watchdog);
  for (const c of clients) {
    if (c.inFlight) fail(`connection ${c.id}: no reply within ${timeoutMs} ms at the end of the run`);
    c.closedByUs = true;
    c.socket.end();
    setTimeout(() => c.socket.destroy(), 1000).unref();
  }

  const windowS = (end.at - start.at) / 1000;
  const cpu = (end.client.user + end.client.system - start.client.user - start.client.system) / 1e6;
  const us = (v: number) => Math.round(v) / 1000;
  return {
    connections,
    warmupS,
    durationS: Math.round(windowS * 1000) / 1000,
    requests: counted,
    rps: Math.round(counted / windowS),
    p50Ms: us(histogram.percentile(50)),
    p90Ms: us(histogram.percentile(90)),
    p99Ms: us(histogram.percentile(99)),
    maxMs: us(histogram.max),
    meanMs: us(histogram.mean),
    errors,
    errorSamples,
    actions: Object.fromEntries(actions),
    clientCpuPct: Math.round((cpu / windowS) * 1000) / 10,
    serverCpuPct:
      start.server !== null && end.server !== null ? Math.round(((end.server - start.server) / windowS) * 1000) / 10 : null,
    machineIdlePct:
      start.machine && end.machine
        ? Math.round(((end.machine[0] - start.machine[0]) / Math.max(1, end.machine[1] - start.machine[1])) * 1000) / 10
        : null,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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

function parseTarget(text: string): { host: string; port: number } {
  const m = /^(?:inet:)?(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new UsageError(`--connect ${text}: expected inet:HOST:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

class UsageError extends Error {}

function positive(name: string, text: string, max: number, integer = false): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || n > max || (integer && !Number.isInteger(n)))
    throw new UsageError(`--${name} ${text}: expected a ${integer ? 'whole ' : ''}number above 0 and at most ${max}`);
  return n;
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
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    });
    if (values.help) {
      console.log('usage: policy-load --connect inet:HOST:PORT [--connections 50] [--warmup 2] [--duration 8] [--recipients a@x,b@x] [--timeout MS] [--server-pid PID] [--json]');
      return 0;
    }
    if (!values.connect) throw new UsageError('--connect inet:HOST:PORT is required');
    const target = parseTarget(values.connect);
    const result = await runLoad({
      ...target,
      connections: positive('connections', values.connections, 10_000, true),
      warmupS: positive('warmup', values.warmup, 60),
      durationS: positive('duration', values.duration, 60),
      recipients: values.recipients ? values.recipients.split(',').filter(Boolean) : undefined,
      timeoutMs: positive('timeout', values.timeout, 60_000),
      serverPid: values['server-pid'] ? positive('server-pid', values['server-pid'], 2 ** 31, true) : undefined,
    });
    console.log(values.json ? JSON.stringify(result) : formatResult(result));
    return result.errors > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`policy-load: ${(err as Error).message}\n`);
    return 2;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
