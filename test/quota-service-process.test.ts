/*
 * `overquota quota-service` as a process: limits file reload on SIGHUP, loopback by default.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startQuotaServiceProcess, runToEnd } from './helpers/overquota.js';
import { tempDir } from './helpers/tmp.js';

test('the limits file is re-read on SIGHUP; a broken edit keeps the previous limits', async () => {
  const tmp = await tempDir('overquota-qs-hup-');
  const mail = path.join(tmp.path, 'mail');
  await fs.mkdir(mail);
  await fs.writeFile(path.join(mail, 'alice'), Buffer.alloc(5000));
  const limits = path.join(tmp.path, 'limits');
  await fs.writeFile(limits, 'alice 1K\n');
  const qs = await startQuotaServiceProcess(['--store.path', mail, '--store.limits_file', limits]);
  try {
    const get = async () => (await fetch(`${qs.baseUrl}/quota?u=alice`)).text();
    assert.equal(await get(), 'OVERQUOTA alice 5000 1024\n');
    await fs.writeFile(limits, 'alice 1M\n');
    qs.proc.kill('SIGHUP');
    await qs.waitForLog((l) => l.msg === 'limits file reloaded');
    assert.equal(await get(), 'OK alice 5000 1048576\n');
    await fs.writeFile(limits, 'alice lots\n');
    qs.proc.kill('SIGHUP');
    await qs.waitForLog((l) => l.msg === 'limits file not reloaded: the previous limits stay in use');
    assert.equal(await get(), 'OK alice 5000 1048576\n');
  } finally {
    await qs.stop();
    await tmp.cleanup();
  }
});

test('the quota service listens on loopback unless told otherwise', async () => {
  const r = await runToEnd(['config']);
  assert.match((JSON.parse(r.stdout) as { quota_service: { listen: string } }).quota_service.listen, /^127\.0\.0\.1:/);
});
