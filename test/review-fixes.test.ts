/*
 * Behaviours found missing by a code review: each test fails without its fix.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { QuotaCache } from '../src/cache/quota-cache.js';
import { QuotaChecker } from '../src/core/checker.js';
import { AliasMap } from '../src/core/aliases.js';
import { Router } from '../src/sources/router.js';
import { found, SourceError, type QuotaSource, type QuotaState } from '../src/quota.js';
import { tempDir } from './helpers/tmp.js';
import { freePort } from './helpers/ports.js';
import { startFrontend, runOverquota, runToEnd } from './helpers/overquota.js';

const ttl = { under_quota: 60_000, over_quota: 60_000, unknown: 60_000, near_limit: 2000, near_limit_ratio: 0.1 };
const replies = { under_quota: 'DUNNO', over_quota: '452 4.2.2 Mailbox full, try again later', too_large: '552 5.2.3 Too large', unknown: 'DUNNO', on_error: 'DUNNO' };
const rules = { delimiters: '+', lowercaseLocalPart: true, keyTemplate: '{local}' };

/** A source whose answers the test releases by hand; counts lookups in flight. */
function manualSource() {
  const waiting: { key: string; resolve: (s: QuotaState) => void }[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const source: QuotaSource = {
    name: 'manual',
    lookup: (key, signal) =>
      new Promise<QuotaState>((resolve, reject) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        const done = () => inFlight--;
        waiting.push({ key, resolve: (s) => (done(), resolve(s)) });
        signal.addEventListener('abort', () => (done(), reject(new SourceError('SOURCE_TIMEOUT', 'aborted'))));
      }),
    close: async () => {},
  };
  return { source, waiting, maxInFlight: () => maxInFlight };
}

test("an alias's mailboxes are looked up at once, under the request's one budget", async () => {
  const dir = await tempDir('overquota-alias-budget-');
  try {
    const file = path.join(dir.path, 'virtual');
    await fs.writeFile(file, 'list@x a@x, b@x, c@x, d@x, e@x\n');
    const map = new AliasMap(file);
    await map.load();
    const m = manualSource();
    const checker = new QuotaChecker(new Router(m.source, new Map()), new QuotaCache({ maxEntries: 100, memoryTtlMs: 60_000, ttl }), {
      rules, replies, dryRun: false, latencyBudgetMs: 300, sourceTimeoutMs: 300, aliases: { map, deferWhen: 'any' },
    });
    const d = await checker.check('list@x', 0);
    assert.equal(m.maxInFlight(), 5, 'all five mailboxes asked together, not one after another');
    assert.equal(d.verdict.kind, 'error');
    assert.equal(d.reply.words, 'DUNNO');
  } finally {
    await dir.cleanup();
  }
});

test('an invalidation during a lookup: the stale answer is not cached, and new callers do not join the old lookup', async () => {
  const m = manualSource();
  const cache = new QuotaCache({ maxEntries: 100, memoryTtlMs: 60_000, ttl });
  const first = cache.lookup(m.source, 'alice', 5000);
  await new Promise((r) => setImmediate(r));
  await cache.forget('alice', ['manual']);
  const second = cache.lookup(m.source, 'alice', 5000);
  await new Promise((r) => setImmediate(r));
  assert.equal(m.waiting.length, 2, 'the lookup after the invalidation asked the source again');
  m.waiting[0]!.resolve(found(2000, 1000));
  assert.equal((await first).state.kind, 'found');
  m.waiting[1]!.resolve(found(10, 1000));
  const fresh = await second;
  assert.equal(fresh.state.kind === 'found' && fresh.state.usageBytes, 10);
  const cached = cache.peek(m.source, 'alice');
  assert.equal(cached?.kind === 'found' && cached.usageBytes, 10, 'the fresh answer is cached, not the stale one');
});

test('an alias with one mailbox too small for the message is deferred (452), not refused for good', async () => {
  const dir = await tempDir('overquota-alias-large-');
  try {
    const file = path.join(dir.path, 'virtual');
    await fs.writeFile(file, 'team@x small@x, big@x\n');
    const map = new AliasMap(file);
    await map.load();
    const source: QuotaSource = { name: 's', lookup: async (k) => (k === 'small' ? found(0, 1000) : found(0, 10 ** 9)), close: async () => {} };
    const checker = new QuotaChecker(new Router(source, new Map()), new QuotaCache({ maxEntries: 100, memoryTtlMs: 60_000, ttl }), {
      rules, replies, dryRun: false, latencyBudgetMs: 1000, sourceTimeoutMs: 1000, aliases: { map, deferWhen: 'any' },
    });
    assert.equal((await checker.check('team@x', 5000)).reply.words, '452 4.2.2 Mailbox full, try again later');
  } finally {
    await dir.cleanup();
  }
});

test('a client that writes requests and never reads is throttled: the frontend stops reading from it', async () => {
  const dir = await tempDir('overquota-backpressure-');
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--store.path', dir.path]);
  try {
    const port = Number(fe.listeners[0]!.split(':').pop());
    const socket = net.connect({ port, host: '127.0.0.1' });
    await new Promise((r) => socket.once('connect', r));
    socket.pause(); // never read the replies
    const chunk = Buffer.alloc(64 * 1024, 0x0a); // 65,536 empty requests, each answered with 14 bytes
    const total = 256 * chunk.length; // 16 MiB of requests -> 224 MiB of replies if nothing stopped us
    for (let sent = 0; sent < total; sent += chunk.length) {
      if (!socket.write(chunk)) {
        const drained = await Promise.race([new Promise((r) => socket.once('drain', () => r(true))), new Promise((r) => setTimeout(() => r(false), 3000))]);
        if (!drained) break;
      }
    }
    assert.ok(socket.writableLength > 0, 'the frontend stopped reading, so our writes backed up');
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(await fs.readFile(`/proc/${fe.proc.pid}/status`, 'utf8'))![1]) * 1024;
    assert.ok(rss < 200 * 1024 * 1024, `frontend RSS ${rss} bytes: replies were not piled up in memory`);
    socket.destroy();
  } finally {
    await fe.stop();
    await dir.cleanup();
  }
});

test('a connection stopped in the middle of a request is closed by the idle sweep', async () => {
  const dir = await tempDir('overquota-half-');
  const fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--store.path', dir.path, '--policy.idle_timeout', '300ms']);
  try {
    const port = Number(fe.listeners[0]!.split(':').pop());
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.on('error', () => {});
    await new Promise((r) => socket.once('connect', r));
    socket.write('request=smtpd_access_policy\nprotoc');
    await new Promise((r) => socket.once('close', r));
  } finally {
    await fe.stop();
    await dir.cleanup();
  }
});

test('a listener that cannot open after another did ends the process (exit 1), so a supervisor restarts it', async () => {
  const busy = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => busy.once('listening', r));
  const port = (busy.address() as net.AddressInfo).port;
  try {
    const run = runOverquota(['frontend', '--policy.listen', `inet:127.0.0.1:${await freePort()}`, '--milter.listen', `inet:127.0.0.1:${port}`, '--store.path', '/nonexistent']);
    const code = await new Promise((resolve) => run.proc.on('exit', resolve));
    assert.equal(code, 1);
    assert.match(run.stderr(), /EADDRINUSE/);
  } finally {
    busy.close();
  }
});

test('on_error cannot be a permanent rejection, and secrets never reach the error output', async () => {
  const r = await runToEnd(['config', '--replies.on_error', '550 5.0.0 go away']);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /must not refuse mail for good/);
  const leak = await runToEnd(['config'], { OVERQUOTA_BACKENDS: '[{"domains":["a.b"],"type":"doveadm","url":"http://x/","pasword":"p","password":"SECRETPW"}]' });
  assert.equal(leak.code, 78);
  assert.match(leak.stderr, /unknown key "pasword"/);
  assert.doesNotMatch(leak.stderr, /SECRETPW/);
  const shown = await runToEnd(['config', '--redis.url', 'redis://u:REDISPW@h:1', '--doveadm.api_key', 'APIKEY']);
  assert.doesNotMatch(shown.stdout, /REDISPW|APIKEY/);
});
