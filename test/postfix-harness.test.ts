// Proves the real-Postfix test harness (test/helpers/postfix.ts, smtp.ts) works: a trivial policy
// server — over inet, and as a spawn(8) child on stdio — answers `452 4.2.2 Mailbox full` for
// full@ recipients, and Postfix passes that to our SMTP client; nothing is left running after.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { execFile, spawn } from 'node:child_process';
import { chmod, writeFile, access } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './helpers/ports.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { startPostfix, postfixUnavailable, type PostfixInstance } from './helpers/postfix.js';
import { sendEnvelope, simpleMessage } from './helpers/smtp.js';

const NODE_FOR_NOBODY = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath;
const FULL_ACTION = 'action=452 4.2.2 Mailbox full, try again later\n\n';
const unavailable = postfixUnavailable();
if (unavailable) throw new Error(`cannot run a private Postfix: ${unavailable}`);
const masterPids: number[] = [];
const instanceDirs: string[] = [];

/** Minimal inet policy server: persistent connections, `full@...` => 452, else DUNNO. */
async function startPolicyServer(): Promise<{ port: number; requests: Map<string, string>[]; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const requests: Map<string, string>[] = [];
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.setEncoding('utf8');
    let buf = '';
    let attrs = new Map<string, string>();
    sock.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === '') {
          requests.push(attrs);
          const rcpt = (attrs.get('recipient') ?? '').toLowerCase();
          sock.write(rcpt.startsWith('full@') ? FULL_ACTION : 'action=DUNNO\n\n');
          attrs = new Map();
        } else {
          const eq = line.indexOf('=');
          if (eq > 0) attrs.set(line.slice(0, eq), line.slice(eq + 1));
        }
      }
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    port,
    requests,
    close: async () => {
      // Postfix keeps policy connections open for up to 300 s: close() alone would wait for them.
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The same policy as a stdio program for spawn(8). It must never write to stderr. */
const SPAWN_POLICY_SCRIPT = `// Tiny spawn(8) policy server for test/postfix-harness.test.ts: full@ => 452, else DUNNO.
import { createInterface } from 'node:readline';
process.on('uncaughtException', () => process.exit(0));
process.stdout.on('error', () => process.exit(0));
let attrs = Object.create(null);
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (line === '') {
    const rcpt = String(attrs.recipient ?? '').toLowerCase();
    process.stdout.write(rcpt.startsWith('full@') ? ${JSON.stringify(FULL_ACTION)} : 'action=DUNNO\\n\\n');
    attrs = Object.create(null);
    return;
  }
  const eq = line.indexOf('=');
  if (eq > 0) attrs[line.slice(0, eq)] = line.slice(eq + 1);
});
rl.on('close', () => process.exit(0));
`;

function assertFullAndOk(result: Awaited<ReturnType<typeof sendEnvelope>>): void {
  const [full, ok] = result.rcpt;
  assert.equal(result.mail.code, 250, result.transcript);
  assert.ok(full && ok, result.transcript);
  assert.equal(full.code, 452, result.transcript);
  assert.match(full.text, /^4\.2\.2 /, result.transcript);
  assert.match(full.text, /Mailbox full/, result.transcript);
  assert.match(full.text, /<full@example\.com>/, result.transcript);
  assert.equal(ok.code, 250, result.transcript);
}

describe('postfix harness: check_policy_service inet:', () => {
  let policy: Awaited<ReturnType<typeof startPolicyServer>>;
  let pf: PostfixInstance;

  before(async () => {
    policy = await startPolicyServer();
    pf = await startPostfix({
      smtpdRecipientRestrictions: `check_policy_service inet:127.0.0.1:${policy.port}, permit_mynetworks, reject_unauth_destination`,
    });
    masterPids.push(pf.pid);
    instanceDirs.push(pf.dir);
  });
  after(async () => {
    await pf?.stop();
    await policy?.close();
  });

  it('answers 452 4.2.2 for full@ and 250 for ok@ in the same transaction', async () => {
    const r = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com', 'ok@example.com'] });
    assert.match(r.greeting, /^220 mta\.example\.com /);
    assertFullAndOk(r);
    assert.equal(r.data, undefined);
    const seen = policy.requests.map((a) => a.get('recipient'));
    assert.ok(seen.includes('full@example.com') && seen.includes('ok@example.com'), String(seen));
    assert.equal(policy.requests.at(-1)?.get('protocol_state'), 'RCPT');
  });

  it('accepts a message with DATA to ok@', async () => {
    const r = await sendEnvelope({
      port: pf.smtpPort,
      from: 'sender@test.org',
      mailArgs: 'SIZE=300',
      rcpts: ['ok@example.com'],
      data: simpleMessage('sender@test.org', 'ok@example.com', 'harness', '.leading dot line\nsecond line'),
    });
    assert.equal(r.rcpt[0]?.code, 250, r.transcript);
    assert.equal(r.data?.code, 250, r.transcript);
    assert.match(r.data?.text ?? '', /queued as/, r.transcript);
    assert.equal(policy.requests.at(-1)?.get('size'), '300');
    // delivered via discard:local
    await pf.waitForLog(/discard\[\d+\]: \w+: to=<ok@example\.com>.*status=sent/);
  });

  it('writes a maillog that records the reject', async () => {
    await access(join(pf.dir, 'maillog'));
    const line = await pf.waitForLog(/reject: RCPT from .*: 452 4\.2\.2 <full@example\.com>: Recipient address rejected: Mailbox full/);
    assert.match(line, /to=<full@example\.com>/);
    const log = await pf.maillog();
    assert.match(log, /postfix\/master\[\d+\]: daemon started/);
    assert.doesNotMatch(log, /warning:|fatal:|panic:/);
  });
});

describe('postfix harness: spawn(8) stdio policy (check_policy_service unix:private/policy)', () => {
  let scriptDir: TempDir;
  let pf: PostfixInstance;

  before(async () => {
    scriptDir = await tempDir('overquota-spawn-policy-');
    const script = join(scriptDir.path, 'policy.mjs');
    await writeFile(script, SPAWN_POLICY_SCRIPT);
    // spawn runs it as nobody: the directory and file must be readable by everyone.
    await chmod(scriptDir.path, 0o755);
    await chmod(script, 0o755);
    pf = await startPostfix({
      smtpdRecipientRestrictions: 'check_policy_service unix:private/policy, permit_mynetworks, reject_unauth_destination',
      extraMain: { policy_time_limit: '3600' },
      // nobody must be able to run node too: prefer the system one over e.g. a node under /root.
      extraMaster: [`policy unix - n n - 0 spawn user=nobody argv=${NODE_FOR_NOBODY} ${script}`],
    });
    masterPids.push(pf.pid);
    instanceDirs.push(pf.dir);
  });
  after(async () => {
    await pf?.stop();
    await scriptDir?.cleanup();
  });

  it('answers 452 4.2.2 for full@ and 250 for ok@', async () => {
    const r = await sendEnvelope({ port: pf.smtpPort, from: 'sender@test.org', rcpts: ['full@example.com', 'ok@example.com'] });
    assertFullAndOk(r);
    const r2 = await sendEnvelope({
      port: pf.smtpPort,
      from: 'sender@test.org',
      rcpts: ['ok@example.com'],
      data: simpleMessage('sender@test.org', 'ok@example.com'),
    });
    assert.equal(r2.data?.code, 250, r2.transcript);
    await pf.waitForLog(/reject: RCPT from .*452 4\.2\.2 <full@example\.com>/);
    assert.doesNotMatch(await pf.maillog(), /warning:|fatal:|panic:/);
  });
});

describe('postfix harness: cleanup', () => {
  it('stop() left no Postfix process and no instance directory', async () => {
    assert.equal(masterPids.length, 2);
    for (const pid of masterPids) {
      const left = await pgrepGroup(pid);
      assert.equal(left, '', `processes left in master's group ${pid}:\n${left}`);
    }
    for (const dir of instanceDirs) await assert.rejects(access(dir), `${dir} still exists`);
  });

  for (const mode of ['killed with SIGKILL', 'exiting without stop()'] as const) {
    it(`a test process ${mode} leaves no Postfix process and no directory`, async () => {
      const work = await tempDir('overquota-harness-orphan-');
      try {
        const helper = fileURLToPath(new URL('./helpers/postfix.ts', import.meta.url));
        const child = join(work.path, 'child.mts');
        await writeFile(
          child,
          `import { startPostfix } from ${JSON.stringify(helper)};\n` +
            `const pf = await startPostfix({ smtpdRecipientRestrictions: 'permit_mynetworks, reject_unauth_destination' });\n` +
            `process.stdout.write(JSON.stringify({ pid: pf.pid, dir: pf.dir }) + '\\n');\n` +
            (mode === 'killed with SIGKILL' ? `setInterval(() => {}, 1000);\n` : ''),
        );
        const proc = spawn(process.execPath, ['--import', 'tsx', child], {
          cwd: fileURLToPath(new URL('..', import.meta.url)),
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        let err = '';
        proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
        const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
        const info = await new Promise<{ pid: number; dir: string }>((resolve, reject) => {
          proc.stdout.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('\n')) resolve(JSON.parse(out) as { pid: number; dir: string });
          });
          void exited.then((code) => reject(new Error(`child exited ${code} before starting Postfix: ${err}`)));
        });
        if (mode === 'killed with SIGKILL') {
          assert.notEqual(await pgrepGroup(info.pid), '', 'master should be running');
          proc.kill('SIGKILL');
        }
        await exited;
        const by = Date.now() + 5000;
        while ((await pgrepGroup(info.pid)) !== '' && Date.now() < by) await delay(50);
        assert.equal(await pgrepGroup(info.pid), '', "master's process group still alive 5 s after the test process ended");
        while ((await exists(info.dir)) && Date.now() < by) await delay(50);
        assert.equal(await exists(info.dir), false, `${info.dir} not removed`);
      } finally {
        await work.cleanup();
      }
    });
  }
});

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const exists = (path: string): Promise<boolean> =>
  access(path).then(
    () => true,
    () => false,
  );

/** Processes in process group `pgid`, as `pid cmd` lines ('' if none). */
function pgrepGroup(pgid: number): Promise<string> {
  return new Promise((resolve) => {
    execFile('pgrep', ['-a', '-g', String(pgid)], (_err, stdout) => resolve(stdout.trim()));
  });
}
