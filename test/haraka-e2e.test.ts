/*
 * A real Haraka (npm `Haraka`, pinned in helpers/haraka.ts) with this repository's
 * packages/haraka-plugin-overquota, asking a real `overquota frontend` over one persistent policy
 * connection. Also: the plugin package is what `npm publish` in its folder would publish.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PLUGIN_DIR, startHaraka, type HarakaInstance } from './helpers/haraka.js';
import { rcptCases, startQuotaWorld, type QuotaWorld } from './helpers/rcpt-cases.js';
import { REPO, runOk } from './helpers/package.js';
import { sendEnvelope } from './helpers/smtp.js';

const versionOf = async (dir: string): Promise<string> => (JSON.parse(await fs.readFile(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version;

describe('the haraka-plugin-overquota package', () => {
  it('has the version of overquota, and packs its code, its default config/overquota.ini and README.md', async () => {
    assert.equal(await versionOf(PLUGIN_DIR), await versionOf(REPO));
    const packed = JSON.parse(await runOk('npm', ['pack', '--dry-run', '--json'], { cwd: PLUGIN_DIR })) as { name: string; files: { path: string }[] }[];
    assert.equal(packed[0]!.name, 'haraka-plugin-overquota');
    assert.deepEqual(packed[0]!.files.map((f) => f.path).sort(), ['README.md', 'config/overquota.ini', 'index.js', 'package.json']);
  });
});

describe('Haraka with haraka-plugin-overquota -> overquota policy service', () => {
  let world: QuotaWorld;
  let haraka: HarakaInstance;
  before(async () => {
    world = await startQuotaWorld(['--admin.listen', '127.0.0.1:0']);
    haraka = await startHaraka({ overquotaIni: `[main]\nhost=127.0.0.1\nport=${world.policyPort}\n` });
  });
  after(async () => {
    await haraka?.stop();
    await world?.stop();
  });

  it('keeps one policy connection across SMTP sessions (overquota counts one open after two sessions have ended)', async () => {
    for (const rcpt of ['full@example.com', 'room@example.com']) {
      const r = await sendEnvelope({ port: haraka.smtpPort, from: 'sender@test.org', rcpts: [rcpt] });
      assert.ok(r.rcpt[0]!.code === 452 || r.rcpt[0]!.code === 250, r.transcript);
    }
    const ready = await world.frontend.waitForLog((l) => l.msg === 'frontend ready');
    const metrics = await (await fetch(`http://${String(ready.admin)}/metrics`)).text();
    assert.match(metrics, /^overquota_open_connections\{face="policy"\} 1$/m);
  });

  it('a quoted local part is the same mailbox: "full"@example.com gets 452', async () => {
    const r = await sendEnvelope({ port: haraka.smtpPort, from: 'sender@test.org', rcpts: ['"full"@example.com'] });
    assert.equal(r.rcpt[0]!.code, 452, r.transcript);
  });

  it('a recipient no rcpt plugin takes keeps its 550: overquota is asked only about recipients Haraka took (rcpt_ok)', async () => {
    // full@other.org: not in host_list; its local part names the full mailbox of the store.
    const r = await sendEnvelope({ port: haraka.smtpPort, from: 'sender@test.org', rcpts: ['full@other.org'] });
    assert.equal(r.rcpt[0]!.code, 550, r.transcript);
    assert.ok(!world.frontend.logs.some((l) => l.recipient === 'full@other.org'), 'overquota was asked about full@other.org');
  });

  rcptCases({
    smtpPort: () => haraka.smtpPort,
    world: () => world,
    log: () => haraka.log(),
    passedUnchecked: /overquota gave no answer \([^)]*\): <full@example\.com> passed unchecked/,
  });
});
