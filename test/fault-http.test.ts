/*
 * Fault matrix, quota sources (issue 11): one real `overquota frontend` process, one domain per
 * faulty backend, and for each fault a round of policy requests for a full and a roomy mailbox on
 * three persistent connections. Every answer must be the right one (452 for full, DUNNO for room)
 * or the distinct on_error reply, within latency_budget (plus slack); never a 5XX for our trouble,
 * never a connection left without a reply; the frontend still alive and answering at the end.
 *
 * Backends: refusing, never answering, answering after 5 s, garbage, HTTP 500, closing mid-body,
 * an endless body, naming another user, a tiny limit (all on loopback); a real quota service on a
 * test host of its own (a network namespace) whose link is cut, so packets are dropped, then
 * mended; a real quota service, and the frontend directly, facing a faulty doveadm.
 *
 * The time bound here is the behaviour itself (a hung SMTP session is the bug), measured with
 * generous slack; it is not a benchmark.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI, startFrontend, startQuotaServiceProcess, type Running } from './helpers/overquota.js';
import { startBackend, type Backend } from './helpers/http-backend.js';
import { startFaultServer, SLOW_ANSWER_MS, type Behaviour, type FaultRequest, type FaultServer } from './helpers/fault-servers.js';
import { startTestHost, type TestHost } from './helpers/netns.js';
import { freePort } from './helpers/ports.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { exited } from './helpers/supervised.js';
import {
  askRound, problemsOf, decisionsSince, fullAndRoom, matrixFrontendArgs, rightText, type Ask,
  BOUND_MS, GIVE_UP_MS, ON_ERROR, FULL, ROOM, FULL_USAGE, ROOM_USAGE, LIMIT_BYTES,
} from './helpers/fault-round.js';

type Frontend = Running & { listeners: string[] };

const CONNECTIONS = 3;
/** The quota service's port on its own test host (a fresh namespace: nothing else listens there). */
const FAR_PORT = 18035;
const RIGHT = { full: [FULL], room: [ROOM] };
const RIGHT_OR_ON_ERROR = { full: [FULL, ON_ERROR], room: [ROOM, ON_ERROR] };
const ON_ERROR_ONLY = { full: [ON_ERROR], room: [ON_ERROR] };

const text = (body: string, status = 200): Behaviour => ({ kind: 'answer', status, type: 'text/plain', body });

/**
 * The broken HTTP backends: what each does, and the error code the decision line must name (the
 * operator's clue). Each answer they could give is wrong, so on_error is the only right reply.
 */
const HTTP_FAULTS: { name: string; behaviour?: (req: FaultRequest) => Behaviour; code: string }[] = [
  { name: 'refusing', code: 'SOURCE_UNREACHABLE' },
  { name: 'silent', behaviour: () => ({ kind: 'silent' }), code: 'SOURCE_TIMEOUT' },
  { name: 'slow', behaviour: (r) => ({ ...text(rightText(r.user)), delayMs: SLOW_ANSWER_MS } as Behaviour), code: 'SOURCE_TIMEOUT' },
  { name: 'garbage', behaviour: () => ({ kind: 'answer', status: 200, type: 'text/html', body: '<html><body>Service Temporarily Unavailable</body></html>' }), code: 'SOURCE_BAD_ANSWER' },
  // A 500 whose body looks like a good answer: the status, not the body, decides.
  { name: 'status500', behaviour: (r) => text(rightText(r.user), 500), code: 'SOURCE_HTTP_STATUS' },
  { name: 'midbody', behaviour: (r) => ({ kind: 'mid-body', body: rightText(r.user) }), code: 'SOURCE_UNREACHABLE' },
  { name: 'endless', behaviour: () => ({ kind: 'endless' }), code: 'SOURCE_BAD_ANSWER' },
  { name: 'trickle', behaviour: () => ({ kind: 'endless', everyMs: 50 }), code: 'SOURCE_TIMEOUT' },
  { name: 'wronguser', behaviour: () => text(rightText('someone-else')), code: 'SOURCE_BAD_ANSWER' },
  { name: 'tinylimit', behaviour: (r) => text(r.user.startsWith('full') ? `OVERQUOTA ${r.user} 5000 1\n` : `OK ${r.user} 0 1\n`), code: 'SOURCE_BAD_ANSWER' },
];

/** A doveadm quotaGet answer (STORAGE in KiB), tagged with `tag`. */
function quotaGetAnswer(user: string, tag: string): string {
  const kib = Math.ceil((user.endsWith('full') ? FULL_USAGE : ROOM_USAGE) / 1024);
  return JSON.stringify([['doveadmResponse', [{ root: 'User quota', type: 'STORAGE', value: String(kib), limit: String(LIMIT_BYTES / 1024), percent: '0' }], tag]]);
}

/** doveadm faults, chosen by the mailbox asked: "<fault>-full" / "<fault>-room"; "good-..." answers right. */
const DOVEADM_FAULTS: { name: string; behaviour: (user: string) => Behaviour; code: string; viaService: string }[] = [
  { name: 'silent', behaviour: () => ({ kind: 'silent' }), code: 'SOURCE_TIMEOUT', viaService: 'SOURCE_TIMEOUT' },
  { name: 'status500', behaviour: () => text('Internal Server Error\n', 500), code: 'SOURCE_HTTP_STATUS', viaService: 'SOURCE_HTTP_STATUS' },
  { name: 'garbage', behaviour: () => text('<html>Bad Gateway</html>', 200), code: 'SOURCE_BAD_ANSWER', viaService: 'SOURCE_HTTP_STATUS' },
  { name: 'midbody', behaviour: (u) => ({ kind: 'mid-body', body: quotaGetAnswer(u, u) }), code: 'SOURCE_UNREACHABLE', viaService: 'SOURCE_HTTP_STATUS' },
  { name: 'endless', behaviour: () => ({ kind: 'endless' }), code: 'SOURCE_BAD_ANSWER', viaService: 'SOURCE_HTTP_STATUS' },
  { name: 'wronguser', behaviour: (u) => ({ kind: 'answer', status: 200, type: 'application/json', body: quotaGetAnswer(u, 'someone-else') }), code: 'SOURCE_BAD_ANSWER', viaService: 'SOURCE_HTTP_STATUS' },
];

function doveadmBehaviour(req: FaultRequest): Behaviour {
  let user = '';
  try {
    user = String((JSON.parse(req.body) as [[string, { user: string }, string]])[0][1].user);
  } catch {
    return text('bad request', 400);
  }
  const fault = DOVEADM_FAULTS.find((f) => user.startsWith(`${f.name}-`));
  if (fault) return fault.behaviour(user);
  return { kind: 'answer', status: 200, type: 'application/json', body: quotaGetAnswer(user, user) };
}

describe('fault matrix: quota sources', () => {
  let good: Backend;
  const faulty: FaultServer[] = [];
  let doveadm: FaultServer;
  let viaService: Running & { baseUrl: string };
  let far: TestHost;
  let farDir: TempDir;
  let fe: Frontend;

  /** One round at `domain`; asserts no problem, and that each on_error line names `code`. */
  async function round(domain: string, allowed: { full: string[]; room: string[] }, code?: string): Promise<void> {
    const from = Date.now();
    const asks: Ask[] = fullAndRoom(domain, allowed);
    const answers = await askRound(fe.listeners[0]!, asks, { connections: CONNECTIONS, giveUpMs: GIVE_UP_MS });
    assert.equal(answers.length, CONNECTIONS * asks.length);
    assert.deepEqual(problemsOf(answers, BOUND_MS), [], JSON.stringify(answers));
    if (code === undefined) return;
    const lines = await decisionsSince(fe, from, [...new Set(asks.map((a) => a.recipient))], answers.length);
    const errors = lines.filter((l) => l.action === ON_ERROR).map((l) => l.error);
    assert.equal(errors.length, answers.filter((a) => a.reply === ON_ERROR).length, 'every on_error answer has its log line');
    assert.deepEqual([...new Set(errors)], errors.length ? [code] : [], 'the log line names what went wrong');
  }

  before(async () => {
    good = await startBackend((url, _req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(rightText(url.searchParams.get('u') ?? ''));
    });
    const backends: { domains: string[]; type: string; url: string }[] = [{ domains: ['good.test'], type: 'http', url: good.url() }];
    for (const f of HTTP_FAULTS) {
      let url: string;
      if (f.behaviour) {
        const server = await startFaultServer(f.behaviour);
        faulty.push(server);
        url = server.url('/cgi-bin/quota.cgi?u={key}');
      } else {
        url = `http://127.0.0.1:${await freePort()}/cgi-bin/quota.cgi?u={key}`; // nobody listens there
      }
      backends.push({ domains: [`${f.name}.test`], type: 'http', url });
    }

    doveadm = await startFaultServer(doveadmBehaviour);
    viaService = await startQuotaServiceProcess(['--store.type', 'doveadm', '--doveadm.url', doveadm.url('/doveadm/v1'), '--doveadm.password', 'secret']);
    backends.push({ domains: ['dove.test'], type: 'http', url: `${viaService.baseUrl}/quota?u={key}` });
    backends.push({ domains: ['dovedirect.test'], type: 'doveadm', url: doveadm.url('/doveadm/v1') });

    // A real quota service over an mbox spool, on a test host of its own.
    far = await startTestHost();
    farDir = await tempDir('overquota-fault-far-');
    const spool = join(farDir.path, 'mail');
    await mkdir(spool);
    await writeFile(join(spool, 'full'), Buffer.alloc(FULL_USAGE, 'x'));
    await writeFile(join(spool, 'room'), Buffer.alloc(ROOM_USAGE, 'x'));
    far.spawn([process.execPath, CLI, 'quota-service', '--quota_service.listen', `${far.address}:${FAR_PORT}`, '--store.type', 'mbox',
      '--store.path', spool, '--store.limit', String(LIMIT_BYTES), '--log.level', 'warn'], join(farDir.path, 'quota-service.log'));
    await waitHealthy(`http://${far.address}:${FAR_PORT}/health`, join(farDir.path, 'quota-service.log'));
    backends.push({ domains: ['far.test'], type: 'http', url: `http://${far.address}:${FAR_PORT}/quota?u={key}` });

    fe = await startFrontend(matrixFrontendArgs([
      '--source.type', 'http', '--source.url', good.url(),
      '--backends', JSON.stringify(backends),
      // Nothing cached: every request reaches its source (errors are never cached anyway).
      '--cache.ttl.under_quota', '0', '--cache.ttl.over_quota', '0', '--cache.ttl.near_limit', '0', '--cache.ttl.unknown', '0',
    ]));
  });

  after(async () => {
    await fe?.stop();
    await viaService?.stop();
    await far?.remove();
    await farDir?.cleanup();
    for (const s of faulty) await s.close();
    await doveadm?.close();
    await good?.close();
  });

  it('a good backend: every answer right (the control)', async () => {
    await round('good.test', RIGHT);
  });

  for (const f of HTTP_FAULTS) {
    it(`an HTTP backend ${describeFault(f.name)}: every answer the on_error reply, in time, logged as ${f.code}`, async () => {
      await round(`${f.name}.test`, ON_ERROR_ONLY, f.code);
    });
  }

  it('a quota service on its own host, link cut (packets dropped): on_error in time; link mended: right again', async () => {
    await round('far.test', RIGHT);
    await far.cut();
    try {
      await round('far.test', ON_ERROR_ONLY, 'SOURCE_TIMEOUT');
    } finally {
      await far.mend();
    }
    await round('far.test', RIGHT_OR_ON_ERROR);
    // Lookups left waiting on the dead link must not keep the backend unusable.
    const by = Date.now() + 10_000;
    let answers = await askRound(fe.listeners[0]!, fullAndRoom('far.test', RIGHT), { connections: 1, giveUpMs: GIVE_UP_MS });
    while (problemsOf(answers, BOUND_MS).length > 0 && Date.now() < by) {
      await new Promise((r) => setTimeout(r, 200));
      answers = await askRound(fe.listeners[0]!, fullAndRoom('far.test', RIGHT), { connections: 1, giveUpMs: GIVE_UP_MS });
    }
    assert.deepEqual(problemsOf(answers, BOUND_MS), [], 'right answers again within 10 s of the link being mended');
  });

  it('a quota service, and the frontend itself, facing a good doveadm: every answer right (the control)', async () => {
    await askGood();
  });

  for (const f of DOVEADM_FAULTS) {
    it(`doveadm ${describeFault(f.name)}: through the quota service and asked directly, every answer the on_error reply, in time`, async () => {
      const from = Date.now();
      const recipients = [`${f.name}-full@dove.test`, `${f.name}-room@dove.test`, `${f.name}-full@dovedirect.test`, `${f.name}-room@dovedirect.test`];
      const asks: Ask[] = recipients.map((recipient) => ({ recipient, allowed: [ON_ERROR] }));
      const answers = await askRound(fe.listeners[0]!, asks, { connections: CONNECTIONS, giveUpMs: GIVE_UP_MS });
      assert.deepEqual(problemsOf(answers, BOUND_MS), [], JSON.stringify(answers));
      const lines = await decisionsSince(fe, from, recipients, answers.length);
      const codes = (domain: string) => [...new Set(lines.filter((l) => String(l.recipient).endsWith(domain)).map((l) => l.error))];
      assert.deepEqual(codes('@dove.test'), [f.viaService]);
      assert.deepEqual(codes('@dovedirect.test'), [f.code]);
    });
  }

  it('doveadm never answering for 20 mailboxes at once (more than its 16 pooled connections): on_error in time, then the good mailboxes answered right at once', async () => {
    const asks: Ask[] = Array.from({ length: 20 }, (_, i) => ({ recipient: `silent-many${i}@dove.test`, allowed: [ON_ERROR] }));
    const answers = await Promise.all(asks.map((ask) => askRound(fe.listeners[0]!, [ask], { connections: 1, giveUpMs: GIVE_UP_MS })));
    assert.deepEqual(problemsOf(answers.flat(), BOUND_MS), [], JSON.stringify(answers));
    await askGood();
  });

  /** The good doveadm mailboxes, through the quota service and directly: right, in time. */
  async function askGood(): Promise<void> {
    const asks: Ask[] = [
      { recipient: 'good-full@dove.test', allowed: [FULL] },
      { recipient: 'good-room@dove.test', allowed: [ROOM] },
      { recipient: 'good-full@dovedirect.test', allowed: [FULL] },
      { recipient: 'good-room@dovedirect.test', allowed: [ROOM] },
    ];
    const answers = await askRound(fe.listeners[0]!, asks, { connections: CONNECTIONS, giveUpMs: GIVE_UP_MS });
    assert.deepEqual(problemsOf(answers, BOUND_MS), [], JSON.stringify(answers));
  }

  it('after the whole matrix: the frontend and the quota service still run, answer right, and wrote nothing to stderr', async () => {
    await round('good.test', RIGHT);
    await round('far.test', RIGHT);
    await askGood();
    assert.equal(exited(fe.proc), false);
    assert.equal(exited(viaService.proc), false);
    assert.equal(fe.stderr(), '');
    assert.equal(viaService.stderr(), '');
    const health = await fetch(`${viaService.baseUrl}/health`);
    assert.ok(health.status === 200 || health.status === 503, `quota service /health answered ${health.status}`);
  });
});

function describeFault(name: string): string {
  return {
    refusing: 'refusing connections',
    silent: 'never answering',
    slow: `answering after ${SLOW_ANSWER_MS / 1000} s`,
    garbage: 'answering garbage',
    status500: 'answering HTTP 500',
    midbody: 'closing mid-body',
    endless: 'sending an endless body',
    trickle: 'trickling an endless body, a few bytes at a time',
    wronguser: 'naming another user',
    tinylimit: 'naming a tiny limit',
  }[name] ?? name;
}

/** Polls GET url until 200 (bounded); the log file's tail in the error otherwise. */
async function waitHealthy(url: string, logFile: string): Promise<void> {
  const by = Date.now() + 10_000;
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(500) });
      if (res.status === 200) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > by) {
      const { readFile } = await import('node:fs/promises');
      throw new Error(`${url} not healthy within 10 s; ${logFile}:\n${await readFile(logFile, 'utf8').catch(() => '(none)')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
