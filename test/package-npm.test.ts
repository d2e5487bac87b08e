/*
 * The npm package, as a new operator gets it: `npm pack` in a fresh clone (no dist/ yet) makes a
 * tarball with the built command and nothing of the development tree, and `npm install -g` of that
 * tarball puts a working `overquota` on PATH: it prints its version and serves policy requests.
 * Runs on whichever node runs the tests (.ci/run: the machine's, then the pinned LTS).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { cloneLikeCopy, REPO, run, runOk } from './helpers/package.js';
import { runOverquota, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';

const VERSION = (JSON.parse(await fs.readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const LIMIT = 100_000;

describe('npm pack in a fresh clone, then npm install -g of the tarball', () => {
  let tmp: TempDir;
  let files: string[];
  let prefix: string;
  /** This node first on PATH: the installed command's "#!/usr/bin/env node" runs on it. */
  let env: Record<string, string>;

  before(async () => {
    tmp = await tempDir('overquota-npm-');
    const clone = path.join(tmp.path, 'clone');
    await cloneLikeCopy(clone);
    const packed = await runOk('npm', ['pack', '--silent', '--pack-destination', tmp.path], { cwd: clone, timeoutMs: 180_000 });
    const tarball = path.join(tmp.path, packed.trim().split('\n').pop()!);
    files = (await runOk('tar', ['-tzf', tarball])).split('\n').filter(Boolean);
    prefix = path.join(tmp.path, 'prefix');
    env = { PATH: `${path.join(prefix, 'bin')}:${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };
    // From npm's cache when it has the dependencies (npm ci filled it), else from the registry.
    await runOk('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], {
      env: { ...process.env, ...env },
      timeoutMs: 300_000,
    });
  });
  after(async () => {
    await tmp?.cleanup();
  });

  it('packs the built command, the Postfix snippets and the README, and no sources, tests, benchmarks or source maps', () => {
    for (const needed of ['package/package.json', 'package/dist/cli.js', 'package/dist/config/schema.js', 'package/postfix/master.cf', 'package/README.md']) {
      assert.ok(files.includes(needed), `${needed} is in the tarball`);
    }
    const stray = files.filter((f) => /^package\/(src|test|bench|scripts|packaging|\.ci)\//.test(f) || /\.(map|ts)$/.test(f));
    assert.deepEqual(stray, []);
  });

  it('puts overquota on PATH, and it prints its version', async () => {
    const which = await runOk('sh', ['-c', 'command -v overquota'], { env: { ...process.env, ...env } });
    assert.equal(which.trim(), path.join(prefix, 'bin', 'overquota'));
    const version = await run('overquota', ['--version'], { env: { ...process.env, ...env } });
    assert.equal(version.code, 0, version.stderr);
    assert.equal(version.stdout.trim(), VERSION);
  });

  it('the installed command serves policy requests: 452 4.2.2 for a full mailbox, DUNNO for one with room', async () => {
    const mail = path.join(tmp.path, 'mail');
    await fs.mkdir(mail);
    await fs.writeFile(path.join(mail, 'full'), Buffer.alloc(LIMIT + 1));
    await fs.writeFile(path.join(mail, 'room'), Buffer.alloc(10));
    let frontend: Running | undefined;
    let client: PolicyClient | undefined;
    try {
      frontend = runOverquota(['frontend', '--policy.listen', 'inet:127.0.0.1:0', '--store.path', mail, '--store.limit', String(LIMIT)], env, ['overquota']);
      const ready = await frontend.waitForLog((l) => l.msg === 'frontend ready');
      client = await PolicyClient.connect((ready.policy as string[])[0]!);
      assert.equal(await client.ask(rcpt('full@example.com')), '452 4.2.2 Mailbox full, try again later');
      assert.equal(await client.ask(rcpt('room@example.com')), 'DUNNO');
    } finally {
      client?.close();
      assert.equal(await frontend?.stop(), 0);
    }
  });
});
