/*
 * The mail path bench/backscatter.ts drives, and what it reads back: for one configuration a
 * private Dovecot (LMTP, quota-status, doveadm HTTP, a quota_warning hook), a private Postfix
 * delivering to it over LMTP with two smtpd listeners (two "MX" sharing the traffic), the
 * configuration's check, counting proxies in front of every backend, an SMTP client that times
 * each RCPT, the maillog's final status per recipient, and the oracle that judges each defer
 * (test/backscatter-oracle.test.ts). Everything listens on free loopback ports; it must never touch
 * a standard port or a system instance, and never leave a process running (stop() ends them).
 */
import { chmod, readdir, stat, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import { startDovecot, type DovecotInstance } from '../test/helpers/dovecot.js';
import { startPostfix, type PostfixInstance } from '../test/helpers/postfix.js';
import { startRedis } from '../test/helpers/redis.js';
import { SmtpConnection } from '../test/helpers/smtp.js';
import { run } from '../test/helpers/supervised.js';
import { CLI, epochMs, freePort, log, sleep, startOverquota, stopChild } from './harness.js';

/** Every mailbox's quota: Dovecot's 1 MiB, as in issue 10 (quota_grace = 0: a message must fit). */
export const LIMIT = 1024 * 1024;
/** The slow backend of "burst in flight": each LMTP delivery held this long before its end of data. */
export const SLOW_DELIVERY_MS = 300;
/** Longest wait for Postfix to give every accepted recipient its final status. */
const DELIVERY_WAIT_MS = 30_000;
const SESSION_TIMEOUT_MS = 30_000;
const SENDER = 'sender@example.org';

export type ConfigKind = 'none' | 'seed' | 'quota-status' | 'verify' | 'overquota' | 'redis';

/** A TCP proxy (or the seed's policy server) counting lookups; `delayMs` holds a chunk holding its `delayOn`. */
interface Counter {
  port: number;
  count: number;
  delayMs: number;
  close(): void;
}

/** Listens on a free port; `serve` gets every client socket. */
async function listen(serve: (socket: net.Socket, counter: Counter) => void): Promise<Counter> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => (sockets.add(s), serve(s, counter)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const counter: Counter = { port: (server.address() as net.AddressInfo).port, count: 0, delayMs: 0, close: () => (server.close(), sockets.forEach((s) => s.destroy())) };
  return counter;
}

/** A proxy to `target` counting `needle` in what clients send (a needle split between two chunks counted once). */
const startProxy = (target: number, needle: string, delayOn = '') =>
  listen((client, counter) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) s.on('error', () => [client, upstream].forEach((x) => x.destroy())).on('close', () => [client, upstream].forEach((x) => x.end()));
    upstream.pipe(client);
    let [carry, carryDelay, chain] = ['', '', Promise.resolve()];
    client.on('data', (chunk: Buffer) => {
      const text = carry + chunk.toString('latin1');
      counter.count += text.split(needle).length - 1;
      carry = text.slice(Math.max(0, text.length - needle.length + 1));
      const hold = delayOn && counter.delayMs > 0 && (carryDelay + chunk.toString('latin1')).includes(delayOn) ? counter.delayMs : 0;
      if (delayOn) carryDelay = (carryDelay + chunk.toString('latin1')).slice(1 - delayOn.length);
      chain = chain.then(() => (hold ? sleep(hold) : undefined)).then(() => void upstream.write(chunk));
    });
  });

/** The seed's check as a policy server: per RCPT one request to the quota service's CGI answer, 452 when size > quota; no message size, no cache. */
const startSeedPolicy = (cgi: string) =>
  listen((sock, counter) => {
    const answer = async (request: string) => {
      const local = /^recipient=([^@\n]*)@/m.exec(request)?.[1];
      if (!local) return 'DUNNO';
      counter.count++;
      const words = (await (await fetch(`${cgi}?u=${encodeURIComponent(local)}`)).text()).split(' ');
      return Number(words[2]) > Number(words[3]) ? '452 4.2.2 Mailbox full' : 'DUNNO';
    };
    let [buf, chain] = ['', Promise.resolve()];
    sock.setEncoding('latin1').on('error', () => sock.destroy());
    sock.on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const request = buf.slice(0, i);
        buf = buf.slice(i + 2);
        chain = chain.then(() => answer(request).catch(() => 'DUNNO')).then((a) => void sock.write(`action=${a}\n\n`));
      }
    });
  });

export interface Rig {
  /** The two smtpd listeners; sessions alternate between them. */
  ports: [number, number];
  dovecot: DovecotInstance;
  postfix: PostfixInstance;
  redis: Redis | null;
  /** Quota lookups against the backend so far. */
  lookups(): number;
  /** Holds (true) or releases LMTP deliveries: defer_transports = lmtp, then a flush. */
  hold(on: boolean): Promise<void>;
  /** The delay of each LMTP delivery (SLOW_DELIVERY_MS for a slow backend, 0 otherwise). */
  slowDelivery(ms: number): void;
  /** Arms (true) the quota_warning -> overquota notify hook, or disarms it. */
  notifyHook(on: boolean): Promise<void>;
  stop(): Promise<void>;
}

/** The mail path of one configuration for `users`; `overquotaFlags`: the overquota configurations' own settings. */
export async function startRig(kind: ConfigKind, users: string[], dir: string, overquotaFlags: string[]): Promise<Rig> {
  const stops: (() => unknown)[] = [];
  const stop = async () => {
    while (stops.length) await Promise.resolve(stops.pop()!()).catch(() => undefined);
  };
  /** Registers what stops `x` at once, so a failure further on still stops it. */
  const kept = <T>(x: T, end: (x: T) => unknown): T => (stops.push(() => end(x)), x);
  try {
    const [hookFlag, hookScript] = [path.join(dir, `hook-${kind}`), path.join(dir, `quota-warning-${kind}.sh`)];
    const dovecot = await startDovecot({
      users: users.map((name) => ({ name, quota: `${LIMIT / 1024}K` })),
      lmtp: true,
      quotaStatusPort: true,
      quotaWarningScript: { path: hookScript },
      // Issue 10's Dovecot: a full mailbox refuses with 552 (no grace, no tempfail), so Postfix bounces.
      pluginSettings: { quota_grace: '0', quota_full_tempfail: 'no', quota_status_nouser: 'DUNNO' },
      // node reserves more address space than Dovecot's default vsz_limit (256M) allows a script
      // service: without this the hook dies at start (as postfix/dovecot/90-overquota.conf says).
      extraConfig: `service quota-warning {\n  vsz_limit = 0\n}\n${kind === 'verify' ? 'protocol lmtp {\n  lmtp_rcpt_check_quota = yes\n}\n' : ''}`,
    });
    stops.push(() => dovecot.stop());
    const proxy = (port: number, needle: string, delayOn?: string) => startProxy(port, needle, delayOn).then((p) => kept(p, (x) => x.close()));
    const delivery = await proxy(dovecot.lmtpPort!, 'RCPT TO:', '\r\n.\r\n');
    let [redis, counter, frontends, notifyArgs] = [null as Redis | null, null as Counter | null, [] as number[], [] as string[]];
    if (kind === 'overquota' || kind === 'redis') {
      counter = await proxy(dovecot.httpPort, '"quotaGet"');
      const common = ['--source.type', 'doveadm', '--doveadm.url', `http://127.0.0.1:${counter.port}/doveadm/v1`, '--doveadm.password', dovecot.password, ...overquotaFlags];
      if (kind === 'redis') {
        const server = kept(await startRedis(), (x) => x.stop());
        redis = kept(new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 }), (x) => x.quit());
        await redis.connect();
        common.push('--redis.url', server.url);
      }
      // overquota defaults has --admin.listen: what `overquota notify` needs without Redis.
      const admin = kind === 'overquota' ? ['--admin.listen', `127.0.0.1:${await freePort()}`] : [];
      notifyArgs = [...common, ...admin];
      for (let i = 0; i < (kind === 'redis' ? 2 : 1); i++) {
        const fe = await startOverquota(`frontend-${kind}-${i}`, (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, ...common, ...(i === 0 ? admin : [])]);
        frontends.push(kept(fe, (x) => stopChild(x.proc)).port);
      }
    } else if (kind === 'quota-status') counter = await proxy(dovecot.quotaStatusPort!, 'request=smtpd_access_policy');
    else if (kind === 'verify') counter = await proxy(dovecot.lmtpPort!, 'RCPT TO:');
    else if (kind === 'seed') {
      const store = ['--store.type', 'maildir', '--store.path', dovecot.mailRoot, '--store.mailbox', '{user}/Maildir', '--store.limit', String(LIMIT)];
      const qs = kept(await startOverquota('quota-service', (port) => ['quota-service', '--quota_service.listen', `127.0.0.1:${port}`, ...store]), (x) => stopChild(x.proc));
      counter = kept(await startSeedPolicy(`http://127.0.0.1:${qs.port}/cgi-bin/quota.cgi`), (x) => x.close());
    }
    await writeFile(hookScript, `#!/bin/sh\n# Dovecot quota_warning: $1 is +100 or -100, $2 the user.\n[ -e ${hookFlag} ] || exit 0\nexec ${process.execPath} ${CLI} notify "$1" "$2" ${notifyArgs.join(' ')} >> ${hookScript}.log 2>&1\n`);
    await chmod(hookScript, 0o755);

    const tail = 'permit_mynetworks, reject_unauth_destination';
    const policy = (port: number) => `check_policy_service inet:127.0.0.1:${port}, ${tail}`;
    const restrictions = kind === 'none' ? [tail, tail] : kind === 'verify' ? [`reject_unverified_recipient, ${tail}`, `reject_unverified_recipient, ${tail}`] : frontends.length ? [policy(frontends[0]!), policy(frontends.at(-1)!)] : [policy(counter!.port), policy(counter!.port)];
    const second = await freePort();
    const postfix = await startPostfix({
      smtpdRecipientRestrictions: restrictions[0]!,
      extraMain: {
        bench_second_restrictions: restrictions[1]!,
        local_transport: `lmtp:inet:127.0.0.1:${delivery.port}`,
        // Probes go their own way (vlmtp, through the counting proxy): holding lmtp does not hold them;
        // 1s, the minimum: smtpd sleeps this long before it asks verify(8) again (default 3s).
        ...(kind === 'verify' ? { address_verify_local_transport: `vlmtp:inet:127.0.0.1:${counter!.port}`, address_verify_poll_delay: '1s' } : {}),
        // A fan-out with many 4xx replies must not be slowed (1 s a reply) or cut (after 20 errors).
        smtpd_soft_error_limit: '1000',
        smtpd_hard_error_limit: '1000',
      },
      extraMaster: ['vlmtp unix - - n - - lmtp', `127.0.0.1:${second} inet n - n - - smtpd -o smtpd_recipient_restrictions=$bench_second_restrictions`],
    });
    stops.push(() => postfix.stop());
    return {
      ports: [postfix.smtpPort, second],
      dovecot,
      postfix,
      redis,
      lookups: () => counter?.count ?? 0,
      async hold(on) {
        await postfix.postconf('-e', `defer_transports = ${on ? 'lmtp' : ''}`);
        await postfix.reload();
        if (!on) await run('postqueue', ['-c', postfix.configDir, '-f']);
      },
      slowDelivery: (ms) => void (delivery.delayMs = ms),
      notifyHook: async (on) => (on ? writeFile(hookFlag, '') : unlink(hookFlag).catch(() => undefined)),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** One RCPT as the client saw it. `t`: epoch ms of the reply. */
export interface RcptEvent {
  msg: number;
  mailbox: string;
  t: number;
  ms: number;
  code: number;
  /** Bytes on the wire (the SIZE declared) and with LF line ends (as Dovecot stores the text). */
  bytes: number;
  lf: number;
  queueId: string | null;
}

/** One SMTP session with a message of about `bytes` bytes (CRLF, 76-character lines): MAIL FROM with SIZE, every RCPT timed, DATA when one was accepted. */
export async function sendMessage(port: number, n: number, mailboxes: string[], bytes: number): Promise<RcptEvent[]> {
  const head = `From: <${SENDER}>\r\nTo: <${mailboxes[0]}@example.com>\r\nSubject: backscatter bench ${n}\r\nMessage-ID: <bench.${n}.${Date.now()}@example.org>\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\n\r\n`;
  const [line, room] = [`${'x'.repeat(76)}\r\n`, Math.max(0, bytes - head.length)];
  const text = head + line.repeat(Math.floor(room / line.length)) + (room % line.length >= 2 ? `${'y'.repeat((room % line.length) - 2)}\r\n` : '');
  const lf = text.length - (text.match(/\r\n/g)?.length ?? 0);
  const conn = await SmtpConnection.open(port, '127.0.0.1', SESSION_TIMEOUT_MS);
  try {
    await conn.readReply('the greeting');
    await conn.command('EHLO client.example.org');
    const mail = await conn.command(`MAIL FROM:<${SENDER}> SIZE=${text.length}`);
    if (mail.code !== 250) throw new Error(`MAIL FROM refused: ${mail.code} ${mail.text}`);
    const events: RcptEvent[] = [];
    for (const mailbox of mailboxes) {
      const t0 = performance.now();
      const r = await conn.command(`RCPT TO:<${mailbox}@example.com>`);
      events.push({ msg: n, mailbox, t: epochMs(), ms: performance.now() - t0, code: r.code, bytes: text.length, lf, queueId: null });
    }
    if (events.some((e) => e.code === 250)) {
      const data = await conn.command('DATA');
      const queueId = /queued as (\w+)/.exec((data.code === 354 ? await conn.sendBody(text) : data).text)?.[1] ?? null;
      for (const e of events) if (e.code === 250) e.queueId = queueId;
    }
    await conn.quit();
    return events;
  } finally {
    conn.dispose();
  }
}

/** Address verification as a site has it: each address probed once (then verify(8)'s cache answers), again while "in progress". */
export async function verifyAddresses(port: number, mailboxes: string[], sessions = 20): Promise<void> {
  let todo = [...mailboxes];
  for (let round = 0; round < 5 && todo.length > 0; round++) {
    const left: string[] = [];
    const chunks = Array.from({ length: sessions }, (_, i) => todo.filter((_, j) => j % sessions === i)).filter((c) => c.length);
    await Promise.all(
      chunks.map(async (chunk) => {
        const conn = await SmtpConnection.open(port, '127.0.0.1', 60_000);
        try {
          await conn.readReply('the greeting');
          await conn.command('EHLO verify.example.org');
          await conn.command(`MAIL FROM:<${SENDER}>`);
          for (const m of chunk) if (/in progress/i.test((await conn.command(`RCPT TO:<${m}@example.com>`)).text)) left.push(m);
          await conn.quit();
        } finally {
          conn.dispose();
        }
      }),
    );
    todo = left;
  }
  if (todo.length) log(`    verify: still in progress after 5 rounds: ${todo.join(' ')}`);
}

/** Final status (sent | bounced) of each `queueId recipient` in the maillog, a probe's aside. */
export function finalStatuses(maillog: string): Map<string, 'sent' | 'bounced'> {
  const out = new Map<string, 'sent' | 'bounced'>();
  for (const m of maillog.matchAll(/ (\w+): to=<([^@>]+)@example\.com>.*? status=(sent|bounced) /g)) out.set(`${m[1]} ${m[2]}`, m[3] as 'sent' | 'bounced');
  return out;
}

/** Waits until every accepted recipient of `events` has its final status (at most DELIVERY_WAIT_MS); the statuses. */
export async function waitDelivered(rig: Rig, events: RcptEvent[]): Promise<Map<string, 'sent' | 'bounced'>> {
  for (const by = Date.now() + DELIVERY_WAIT_MS; ; await sleep(100)) {
    const statuses = finalStatuses(await rig.postfix.maillog());
    const missing = events.filter((e) => e.queueId && !statuses.has(`${e.queueId} ${e.mailbox}`)).length;
    if (missing === 0 || Date.now() > by) return statuses;
  }
}

/** Bytes and files Dovecot delivered into the mailboxes (LMTP puts them in new/; fills are in cur/). */
export async function deliveredBytes(dovecot: DovecotInstance, mailboxes: string[]): Promise<{ bytes: number; files: number }> {
  let [bytes, files] = [0, 0];
  for (const dir of mailboxes.map((m) => path.join(dovecot.maildir(m), 'new'))) {
    for (const f of await readdir(dir).catch(() => [] as string[])) [bytes, files] = [bytes + (await stat(path.join(dir, f)).catch(() => ({ size: 0 }))).size, files + 1];
  }
  return { bytes, files };
}

/**
 * The oracle. A defer at time t for mailbox m was false when usage(m, t) + this message <= LIMIT,
 * where usage(m, t) = what Dovecot held at the last reset before t (the fill, or 0 after an
 * expunge) + every message accepted for m after that reset and before t that Postfix then
 * delivered (sent in the maillog: stored already, or on its way and going to be). A message's
 * stored size = its LF size + `overhead` (the headers Postfix and Dovecot add, measured).
 */
export function falseDefers(events: RcptEvent[], statuses: Map<string, 'sent' | 'bounced'>, resets: { mailbox: string; t: number; bytes: number }[], overhead: number): number {
  return events.filter((e) => {
    const reset = resets.filter((r) => r.mailbox === e.mailbox && r.t <= e.t).at(-1);
    if (e.code < 400 || e.code >= 500 || !reset) return false;
    const onItsWay = events.filter((a) => a.mailbox === e.mailbox && a.queueId && a.t >= reset.t && a.t < e.t && statuses.get(`${a.queueId} ${a.mailbox}`) === 'sent');
    return reset.bytes + onItsWay.reduce((s, a) => s + a.lf + overhead, 0) + e.lf + overhead <= LIMIT;
  }).length;
}

/** Calls per command (INFO commandstats), without the bench's own INFO, MEMORY and SCAN. */
export async function redisCalls(redis: Redis): Promise<Map<string, number>> {
  const calls = [...(await redis.info('commandstats')).matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)];
  return new Map(calls.filter((m) => !/^(info|memory|scan|client|hello|command|select|ping)/.test(m[1]!)).map((m) => [m[1]!, Number(m[2])]));
}

/** Bytes (MEMORY USAGE) of overquota's keys of `mailboxes` (their hash tag is {SOURCE|MAILBOX}), the mailboxes and the keys. */
export async function redisFootprint(redis: Redis, mailboxes: string[]): Promise<{ bytes: number; mailboxes: number; keys: number }> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', 'overquota:*', 'COUNT', 1000);
    cursor = next;
    keys.push(...batch.filter((k) => mailboxes.includes(/\{[^}]*\|([^}|]*)\}/.exec(k)?.[1] ?? '')));
  } while (cursor !== '0');
  let bytes = 0;
  for (const k of keys) bytes += Number((await redis.call('MEMORY', 'USAGE', k)) ?? 0);
  return { bytes, mailboxes: new Set(keys.map((k) => /\{([^}]*)\}/.exec(k)?.[1])).size, keys: keys.length };
}
