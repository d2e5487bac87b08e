import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { HttpSource } from '../src/sources/http.js';
import { QuotaCache } from '../src/cache/quota-cache.js';
import { QuotaChecker } from '../src/core/checker.js';
import { Router } from '../src/sources/router.js';
import { SourceError, type QuotaSource } from '../src/quota.js';
import { startBackend, cgiAnswer, type Answer } from './helpers/http-backend.js';

const QUOTA = 200 * 1024 * 1024;
const toClose: { close(): Promise<void> }[] = [];
after(async () => {
  for (const c of toClose) await c.close();
});

async function sourceFor(answer: Answer, opts: { token?: string; path?: string } = {}) {
  const backend = await startBackend(answer);
  const source = new HttpSource({ urlTemplate: backend.url(opts.path), token: opts.token, maxConnections: 4 });
  toClose.push(source, backend);
  return { backend, source };
}

function checkerFor(source: QuotaSource, budgetMs = 300) {
  return new QuotaChecker(new Router(source, new Map()), new QuotaCache({ maxEntries: 1000, memoryTtlMs: 60_000, ttl: { under_quota: 30_000, over_quota: 10_000, unknown: 60_000, near_limit: 2000, near_limit_ratio: 0.1 } }), {
    rules: { delimiters: '+', lowercaseLocalPart: true, keyTemplate: '{local}' },
    replies: { under_quota: 'DUNNO', over_quota: '452 4.2.2 Mailbox full, try again later', too_large: '552 5.2.3 Too large', unknown: 'DUNNO', on_error: 'DUNNO' },
    dryRun: false,
    latencyBudgetMs: budgetMs,
    sourceTimeoutMs: budgetMs,
  });
}

const signal = () => new AbortController().signal;

test("the seed quota.cgi's OK and OVERQUOTA answers are understood unchanged", async () => {
  const { source } = await sourceFor(cgiAnswer({ alice: 1000, bob: QUOTA + 1 }, QUOTA));
  assert.deepEqual(await source.lookup('alice', signal()), { kind: 'found', usageBytes: 1000, limitBytes: QUOTA, usageMessages: null, limitMessages: null, overQuota: false });
  const bob = await source.lookup('bob', signal());
  assert.equal(bob.kind === 'found' && bob.overQuota, true);
});

test('the full decision over a quota.cgi backend: full mailbox gets 452 4.2.2, room gets DUNNO', async () => {
  const { source } = await sourceFor(cgiAnswer({ alice: 1000, bob: QUOTA + 1 }, QUOTA));
  const checker = checkerFor(source);
  assert.equal((await checker.check('<bob@example.com>', 0)).reply.words, '452 4.2.2 Mailbox full, try again later');
  assert.equal((await checker.check('<alice@example.com>', 0)).reply.words, 'DUNNO');
  assert.equal((await checker.check('<alice@example.com>', QUOTA)).reply.words, '452 4.2.2 Mailbox full, try again later');
});

test('our quota service JSON is understood, with message counts', async () => {
  const { source } = await sourceFor((_u, _q, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ user: 'a', state: 'ok', usage: { bytes: 10, messages: 2 }, limit: { bytes: 100_000, messages: 2 } }));
  });
  const state = await source.lookup('a', signal());
  assert.deepEqual(state, { kind: 'found', usageBytes: 10, limitBytes: 100_000, usageMessages: 2, limitMessages: 2, overQuota: false });
});

test('404 UNKNOWN from our service is an unknown mailbox, a plain 404 page is an error', async () => {
  const { source } = await sourceFor((url, _q, res) => {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end(url.searchParams.get('u') === 'ghost' ? 'UNKNOWN ghost\n' : '<html>Not Found</html>');
  });
  assert.deepEqual(await source.lookup('ghost', signal()), { kind: 'unknown' });
  await assert.rejects(source.lookup('x', signal()), (e: SourceError) => e.code === 'SOURCE_HTTP_STATUS');
});

test('garbage, HTTP errors and oversized answers become errors, never a verdict of room', async () => {
  const answers: Record<string, Answer> = {
    html: (_u, _q, res) => res.end('<html><body>Internal error</body></html>'),
    status: (_u, _q, res) => {
      res.writeHead(500);
      res.end('boom');
    },
    json: (_u, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"state":"ok","usage":{"bytes":-5}}');
    },
    huge: (_u, _q, res) => res.end('OK a 1 2 ' + 'x'.repeat(100_000)),
  };
  const codes: Record<string, string> = { html: 'SOURCE_BAD_ANSWER', status: 'SOURCE_HTTP_STATUS', json: 'SOURCE_BAD_ANSWER', huge: 'SOURCE_BAD_ANSWER' };
  for (const [name, answer] of Object.entries(answers)) {
    const { source } = await sourceFor(answer);
    await assert.rejects(source.lookup('a', signal()), (e: SourceError) => e instanceof SourceError && e.code === codes[name], name);
    const decision = await checkerFor(source).check('a@x', 0);
    assert.equal(decision.verdict.kind, 'error', name);
    assert.equal(decision.reply.words, 'DUNNO', name);
  }
});

test('a backend that never answers gets the on_error reply when the latency budget is spent', async () => {
  const { source } = await sourceFor(() => {
    /* never answers */
  });
  const decision = await checkerFor(source, 200).check('a@x', 0);
  assert.equal(decision.verdict.kind, 'error');
  assert.equal(decision.error?.code, 'SOURCE_TIMEOUT');
  assert.equal(decision.reply.words, 'DUNNO');
});

test('a backend that is down is an unreachable error', async () => {
  const { source, backend } = await sourceFor(cgiAnswer({}, QUOTA));
  await backend.close();
  const decision = await checkerFor(source).check('a@x', 0);
  assert.equal(decision.error?.code, 'SOURCE_UNREACHABLE');
  assert.equal(decision.reply.words, 'DUNNO');
});

test('concurrent lookups of one cold mailbox cost the backend one request, and the answer is cached', async () => {
  const { source, backend } = await sourceFor((url, _q, res) => {
    setTimeout(() => cgiAnswer({ alice: 5 }, QUOTA)(url, _q, res), 50);
  });
  const checker = checkerFor(source, 2000);
  const decisions = await Promise.all(Array.from({ length: 50 }, () => checker.check('alice@example.com', 0)));
  assert.equal(backend.requests.length, 1);
  assert.deepEqual(new Set(decisions.map((d) => d.cache)), new Set(['miss', 'shared']));
  assert.equal((await checker.check('Alice+x@example.com', 0)).cache, 'hit');
  assert.equal(backend.requests.length, 1);
});

test('errors are not cached: the next lookup asks again', async () => {
  let calls = 0;
  const { source, backend } = await sourceFor((url, q, res) => {
    calls++;
    if (calls === 1) {
      res.writeHead(503);
      res.end('busy');
    } else cgiAnswer({ a: 1 }, QUOTA)(url, q, res);
  });
  const checker = checkerFor(source);
  assert.equal((await checker.check('a@x', 0)).verdict.kind, 'error');
  assert.equal((await checker.check('a@x', 0)).verdict.kind, 'under_quota');
  assert.equal(backend.requests.length, 2);
});

test('the mailbox key is URL-encoded and the bearer token is sent', async () => {
  const { source, backend } = await sourceFor(cgiAnswer({}, QUOTA), { token: 's3cret' });
  await source.lookup('a&c=d/é+x%', signal());
  const seen = new URL(backend.requests[0]!.url, 'http://x');
  assert.equal(seen.searchParams.get('u'), 'a&c=d/é+x%');
  assert.equal(backend.requests[0]!.authorization, 'Bearer s3cret');
});

test('an answer naming another mailbox is a bad answer (on_error), never a verdict for the mailbox asked', async () => {
  const answers: Record<string, Answer> = {
    text: (_u, _q, res) => res.end('OVERQUOTA someoneelse 5000 1000000\n'),
    unknown: (_u, _q, res) => {
      res.writeHead(404);
      res.end('UNKNOWN someoneelse\n');
    },
    json: (_u, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ user: 'someoneelse', state: 'overquota', usage: { bytes: 5000 }, limit: { bytes: 1_000_000 } }));
    },
    'json without user': (_u, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ state: 'overquota', usage: { bytes: 5000 }, limit: { bytes: 1_000_000 } }));
    },
  };
  for (const [name, answer] of Object.entries(answers)) {
    const { source } = await sourceFor(answer);
    await assert.rejects(source.lookup('alice', signal()), (e: SourceError) => e.code === 'SOURCE_BAD_ANSWER' && /not the mailbox asked|names no user/.test(e.message), name);
    const decision = await checkerFor(source).check('alice@example.com', 2_000_000);
    assert.deepEqual([decision.verdict.kind, decision.reply.words], ['error', 'DUNNO'], name);
  }
});

test('a limit too small to be a quota is not believed: "OK user 0 1" gives on_error, never the permanent 552', async () => {
  const answers: Record<string, Answer> = {
    text: (url, _q, res) => res.end(`OK ${url.searchParams.get('u')} 0 1\n`),
    json: (url, _q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ user: url.searchParams.get('u'), state: 'ok', usage: { bytes: 0 }, limit: { bytes: 511 } }));
    },
  };
  for (const [name, answer] of Object.entries(answers)) {
    const { source } = await sourceFor(answer);
    const decision = await checkerFor(source).check('alice@example.com', 5000);
    assert.deepEqual([decision.verdict.kind, decision.error?.code, decision.reply.words], ['error', 'SOURCE_BAD_ANSWER', 'DUNNO'], name);
    assert.match(decision.error!.message, /limit of (1|511) bytes/, name);
  }
  // 0 still means no limit, and the smallest plausible limit is believed.
  const { source } = await sourceFor((url, _q, res) => res.end(url.searchParams.get('u') === 'none' ? 'OK none 5 0\n' : `OK ${url.searchParams.get('u')} 0 512\n`));
  assert.equal((await checkerFor(source).check('none@example.com', 5000)).verdict.kind, 'under_quota');
  assert.equal((await checkerFor(source).check('small@example.com', 5000)).verdict.kind, 'too_large');
});

test('a busy answer (503 with Retry-After) is asked again within the budget, not turned into on_error', async () => {
  let calls = 0;
  const { source, backend } = await sourceFor((url, q, res) => {
    calls++;
    if (calls <= 3) {
      res.writeHead(503, { 'retry-after': '1' });
      res.end('ERROR busy, try again\n');
    } else cgiAnswer({ full: QUOTA }, QUOTA)(url, q, res);
  });
  const decision = await checkerFor(source, 5000).check('full@example.com', 0);
  assert.equal(decision.reply.words, '452 4.2.2 Mailbox full, try again later');
  assert.equal(backend.requests.length, 4);
});

test('a backend busy until the budget is spent gets on_error, after asking more than once', async () => {
  const { source, backend } = await sourceFor((_u, _q, res) => {
    res.writeHead(503, { 'retry-after': '1' });
    res.end('ERROR busy, try again\n');
  });
  const decision = await checkerFor(source, 300).check('full@example.com', 0);
  assert.deepEqual([decision.verdict.kind, decision.reply.words], ['error', 'DUNNO']);
  assert.ok(backend.requests.length > 1, `asked ${backend.requests.length} times`);
  await assert.rejects(source.lookup('full', AbortSignal.timeout(100)), (e: SourceError) => e.code === 'SOURCE_BUSY' || e.code === 'SOURCE_TIMEOUT');
});
