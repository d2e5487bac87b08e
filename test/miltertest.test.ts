/*
 * OpenDKIM's miltertest (a fake MTA) runs the Lua scripts in test/milter/ against a real frontend.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFrontend, type Running } from './helpers/overquota.js';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { freePort } from './helpers/ports.js';

const scripts = path.join(path.dirname(fileURLToPath(import.meta.url)), 'milter');

function miltertest(script: string, port: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile('miltertest', ['-s', path.join(scripts, script), '-D', `port=${port}`], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
    );
  });
}

describe('miltertest scripts against `overquota frontend --milter.listen`', () => {
  let tmp: TempDir;
  let fe: Running;
  let port: number;
  before(async () => {
    tmp = await tempDir('overquota-miltertest-');
    await fs.writeFile(path.join(tmp.path, 'full'), Buffer.alloc(5000));
    await fs.writeFile(path.join(tmp.path, 'room'), Buffer.alloc(10));
    port = await freePort();
    fe = await startFrontend(['--policy.listen', 'inet:127.0.0.1:0', '--milter.listen', `inet:${port}@127.0.0.1`, '--store.path', tmp.path, '--store.limit', '1000']);
    await fe.waitForLog((l) => l.msg === 'milter service ready');
  });
  after(async () => {
    await fe?.stop();
    await tmp?.cleanup();
  });

  for (const script of ['negotiate.lua', 'rcpt.lua', 'abort-reuse.lua']) {
    it(`${script} passes`, async () => {
      const r = await miltertest(script, port);
      assert.equal(r.code, 0, r.output);
      assert.match(r.output, /^OK$/m);
    });
  }

  it('the decisions are logged with the milter face', async () => {
    const line = await fe.waitForLog((l) => l.msg === 'decision' && l.face === 'milter' && l.verdict === 'over_quota');
    assert.equal(line.mailbox, 'full');
    assert.equal(line.recipient, 'full@example.com');
  });
});
