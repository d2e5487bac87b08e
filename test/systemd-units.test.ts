/*
 * The systemd units of the Debian package (packaging/systemd/): systemd's own checker accepts them,
 * their sandbox keeps systemd-analyze's exposure score under 2.0 (the README records it), they
 * run the daemons as user overquota with the shipped config, reload with SIGHUP, and a
 * configuration or usage error (exit 78 / 64, checked against the real command) is not
 * restarted in a loop. Runs on this host's systemd-analyze (no systemd needs to be running).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { REPO, run, single, UNIT_DIR, UNITS, unitDirectives } from './helpers/package.js';
import { runToEnd } from './helpers/overquota.js';

/** The exposure the README promises at most ("systemd-analyze security": 0 safe, 10 exposed). */
const EXPOSURE_GOAL = 2.0;

const unitText = (unit: string) => fs.readFile(path.join(UNIT_DIR, unit), 'utf8');

describe('systemd units overquota-frontend.service and overquota-quota-service.service', () => {
  let tmp: TempDir;
  before(async () => {
    tmp = await tempDir('overquota-units-');
  });
  after(async () => {
    await tmp?.cleanup();
  });

  it('systemd-analyze verify accepts both, with nothing to say', async () => {
    // verify insists that ExecStart's program exists and that Documentation's man page opens:
    // this host has neither installed, so a stand-in program and the generated page take
    // their place (the package test runs the real /usr/bin/overquota).
    const standIn = path.join(tmp.path, 'overquota');
    await fs.writeFile(standIn, '#!/bin/sh\n', { mode: 0o755 });
    await fs.mkdir(path.join(tmp.path, 'man', 'man8'), { recursive: true });
    const page = await run(process.execPath, ['--import', 'tsx', path.join(REPO, 'scripts', 'manpage.ts')], { cwd: REPO });
    assert.equal(page.code, 0, page.stderr);
    await fs.writeFile(path.join(tmp.path, 'man', 'man8', 'overquota.8'), page.stdout);
    for (const unit of UNITS) {
      const text = (await unitText(unit)).replace(/^ExecStart=\/usr\/bin\/overquota /m, `ExecStart=${standIn} `);
      await fs.writeFile(path.join(tmp.path, unit), text);
    }
    const verify = await run('systemd-analyze', ['verify', ...UNITS], { cwd: tmp.path, env: { ...process.env, MANPATH: path.join(tmp.path, 'man') } });
    assert.equal(verify.code, 0, verify.stderr);
    assert.equal(verify.stderr, '');
  });

  for (const unit of UNITS) {
    it(`${unit}: systemd-analyze security rates its exposure below ${EXPOSURE_GOAL.toFixed(1)}`, async () => {
      const security = await run('systemd-analyze', ['security', '--offline=yes', '--no-pager', path.join(UNIT_DIR, unit)]);
      assert.equal(security.code, 0, security.stderr);
      const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(security.stdout);
      assert.ok(m, security.stdout);
      assert.ok(Number(m[1]) < EXPOSURE_GOAL, `exposure ${m[1]}:\n${security.stdout}`);
    });
  }

  it('run the daemons as user overquota with the shipped config, reload with SIGHUP, and start the frontend before Postfix', async () => {
    for (const [unit, command] of [
      ['overquota-frontend.service', 'frontend'],
      ['overquota-quota-service.service', 'quota-service'],
    ] as const) {
      const d = unitDirectives(await unitText(unit));
      assert.equal(single(d, 'ExecStart'), `/usr/bin/overquota ${command} --config /etc/overquota/${command}.json`);
      assert.equal(single(d, 'User'), 'overquota');
      assert.equal(single(d, 'Type'), 'exec');
      assert.equal(single(d, 'ExecReload'), 'kill -HUP $MAINPID');
      assert.equal(single(d, 'NoNewPrivileges'), 'yes');
      assert.equal(single(d, 'ProtectSystem'), 'strict');
      assert.equal(single(d, 'CapabilityBoundingSet'), '');
      assert.equal(single(d, 'RestrictAddressFamilies'), 'AF_UNIX AF_INET AF_INET6');
      assert.ok(d.has('SystemCallFilter'));
    }
    const frontend = unitDirectives(await unitText('overquota-frontend.service'));
    assert.equal(single(frontend, 'Before'), 'postfix.service');
    assert.equal(frontend.get('ReadWritePaths'), undefined, 'the frontend writes nothing but its logs');
    const quota = unitDirectives(await unitText('overquota-quota-service.service'));
    assert.equal(single(quota, 'ReadWritePaths'), '-/var/mail', 'the quota service writes the mail store only (maildirsize)');
    assert.equal(single(quota, 'SupplementaryGroups'), 'mail');
  });

  it('do not restart on the exit statuses of a configuration error and a usage error', async () => {
    const config = await runToEnd(['frontend', '--policy.listen', 'nonsense']);
    const usage = await runToEnd(['frontend', 'unexpected-word']);
    assert.equal(config.code, 78, config.stderr);
    assert.equal(usage.code, 64, usage.stderr);
    for (const unit of UNITS) {
      const d = unitDirectives(await unitText(unit));
      assert.equal(single(d, 'Restart'), 'on-failure');
      assert.deepEqual(single(d, 'RestartPreventExitStatus').split(/\s+/).sort(), [String(config.code), String(usage.code)].sort());
    }
  });
});
