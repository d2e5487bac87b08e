/*
 * The systemd units of the Debian package (packaging/systemd/): systemd's own checker accepts them,
 * their sandbox keeps systemd-analyze's exposure score under 2.0 (the README records it), they
 * run the daemons as user overquota with the shipped config, reload with SIGHUP, and a
 * configuration or usage error (exit 78 / 64, checked against the real command) is not
 * restarted in a loop. Runs on this host's systemd-analyze (no systemd needs to be running).
 *
 * The sandbox itself cannot be applied here: there is no systemd as PID 1 to start a unit. So
 * what it would refuse is worked out instead: the system call filter, from the unit's
 * SystemCallFilter= lines as systemd.exec(5) merges them and the groups as this host's
 * `systemd-analyze syscall-filter` lists them, against the system calls the daemons really make
 * (strace, on this host's node); the writable folders, from ProtectSystem=strict and the unit's
 * exceptions, against the unix socket paths the documentation suggests. Needs strace and the
 * group postfix (scripts/install-deps.sh installs both).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { REPO, run, runOk, single, UNIT_DIR, UNITS, unitDirectives } from './helpers/package.js';
import { CLI, runOverquota, runToEnd, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';

/** The exposure the README promises at most ("systemd-analyze security": 0 safe, 10 exposed). */
const EXPOSURE_GOAL = 2.0;

const unitText = (unit: string) => fs.readFile(path.join(UNIT_DIR, unit), 'utf8');

/**
 * System calls our code makes on paths a run below may not reach, that the filter must allow:
 * socket_group and the maildirsize rewrite (the chown family, whichever one libc picks), the
 * rewrite's rename, a socket replaced at start, and a log file flushed to disk.
 */
const NEEDED_SYSCALLS = ['chown', 'fchown', 'fchownat', 'lchown', 'rename', 'renameat', 'renameat2', 'unlink', 'unlinkat', 'fsync', 'fdatasync', 'umask', 'bind', 'listen', 'accept4'];
/**
 * System calls the daemons make that the units refuse (EPERM) on purpose, with why that is harmless.
 */
const REFUSED_HARMLESSLY: Record<string, string> = {
  // Not in @system-service. V8 asks for a memory protection key at start; refused, as on a CPU
  // without them (EINVAL on this host), it goes on without one.
  pkey_alloc: 'V8 does without memory protection keys',
};
/**
 * The group Postfix's smtpd runs as, which the frontend unit's comment gives a unix socket
 * (policy.socket_group postfix); Postfix is installed for the other tests.
 */
const SOCKET_GROUP = 'postfix';

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

  it('run the daemons as user overquota with the shipped config, reload with SIGHUP, start the frontend before Postfix, and let the quota service write nothing by default', async () => {
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
    assert.equal(quota.get('ReadWritePaths'), undefined, 'mbox is only stat()ed: the default store /var/mail stays read-only (a Maildir drop-in adds its store)');
    assert.equal(single(quota, 'SupplementaryGroups'), 'mail');
  });

  it('start after the network is online, so that a listener on a private address can bind at boot', async () => {
    for (const unit of UNITS) {
      const d = unitDirectives(await unitText(unit));
      const words = (name: string) => (d.get(name) ?? []).flatMap((v) => v.split(/\s+/));
      assert.ok(words('After').includes('network-online.target'), `${unit}: After=network-online.target`);
      assert.ok(words('Wants').includes('network-online.target'), `${unit}: Wants=network-online.target (After= alone does not pull it in)`);
    }
  });

  it('the unix socket paths the documentation suggests are in folders the frontend unit may write (ProtectSystem=strict makes the rest read-only)', async () => {
    const text = await unitText('overquota-frontend.service');
    const d = unitDirectives(text);
    // The unit's own exceptions, and the drop-ins its comment tells the admin to add ("#     Directive=value").
    const dropIns = unitDirectives(text.split('\n').filter((l) => /^#\s{3,}[A-Za-z]+=/.test(l)).map((l) => l.replace(/^#\s+/, '')).join('\n'));
    const writable = [
      ...(d.get('RuntimeDirectory') ?? []).flatMap((v) => v.split(/\s+/)).map((dir) => `/run/${dir}`),
      ...(d.get('LogsDirectory') ?? []).flatMap((v) => v.split(/\s+/)).map((dir) => `/var/log/${dir}`),
      ...[...(d.get('ReadWritePaths') ?? []), ...(dropIns.get('ReadWritePaths') ?? [])].flatMap((v) => v.split(/\s+/)).map((p) => p.replace(/^-/, '')),
    ];
    const documents = ['README.md', 'postfix/exim/overquota.acl', 'packages/haraka-plugin-overquota/config/overquota.ini'];
    const suggested = new Set<string>();
    for (const doc of documents) {
      const body = await fs.readFile(path.join(REPO, doc), 'utf8');
      for (const m of body.matchAll(/(?:unix:|\bpath=|readsocket\{)(\/[\w./-]+[\w])/g)) if (!/\/PATH$|^\/path$/.test(m[1]!)) suggested.add(m[1]!);
    }
    assert.ok(suggested.has('/run/overquota/policy'), [...suggested].join(' '));
    const unreachable = [...suggested].filter((socket) => !writable.some((dir) => path.dirname(socket) === dir || path.dirname(socket).startsWith(`${dir}/`)));
    assert.deepEqual(unreachable, [], `writable: ${writable.join(' ')}`);
    assert.match(single(d, 'RuntimeDirectoryMode'), /^0?7[0-7]5$/, 'the MTA (Debian-exim, Haraka) can reach /run/overquota; the socket\'s mode and group decide who connects');
  });

  it('their system call filters allow every system call the daemons make, socket_group\'s lchown and the maildirsize rewrite included', async () => {
    const groups = await syscallGroups();
    const traced = new Map<string, Set<string>>([
      ['overquota-frontend.service', await traceFrontend(tmp.path)],
      ['overquota-quota-service.service', await traceQuotaService(tmp.path)],
    ]);
    assert.ok(traced.get('overquota-frontend.service')!.has('lchown'), 'the run set a socket group');
    assert.ok(traced.get('overquota-quota-service.service')!.has('rename'), 'the run rewrote a maildirsize');
    for (const unit of UNITS) {
      const allowed = filterOf(unitDirectives(await unitText(unit)).get('SystemCallFilter') ?? [], groups);
      const refused = [...new Set([...traced.get(unit)!, ...NEEDED_SYSCALLS])].filter((call) => !allowed(call) && !(call in REFUSED_HARMLESSLY)).sort();
      assert.deepEqual(refused, [], `${unit} would refuse them (EPERM)`);
      for (const call of Object.keys(REFUSED_HARMLESSLY)) assert.ok(!allowed(call), `${call} is allowed now: drop it from REFUSED_HARMLESSLY`);
    }
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

/** Every group `systemd-analyze syscall-filter` lists, with its members (system calls and @groups). */
async function syscallGroups(): Promise<Map<string, string[]>> {
  const groups = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of (await runOk('systemd-analyze', ['syscall-filter', '--no-pager'])).split('\n')) {
    const group = /^(@[\w-]+)$/.exec(line);
    const member = /^\s+(@?[\w-]+)$/.exec(line);
    if (group) groups.set(group[1]!, (current = []));
    else if (member && current) current.push(member[1]!);
    else if (!line.trim()) current = null;
  }
  assert.ok(groups.has('@system-service') && groups.has('@chown'), [...groups.keys()].join(' '));
  return groups;
}

/**
 * Whether a unit's SystemCallFilter= lines let a system call through, merged as systemd.exec(5)
 * says: the first line decides between an allow list and a deny list ("~"); each later line adds
 * its calls to that list when it is of the same kind and takes them out of it when it is not; an
 * empty value starts over. "name:errno" is the name.
 */
function filterOf(lines: string[], groups: Map<string, string[]>): (call: string) => boolean {
  const expand = (name: string, into: Set<string>): Set<string> => {
    const members = groups.get(name);
    if (!members) into.add(name.replace(/:.*$/, ''));
    else for (const m of members) expand(m, into);
    return into;
  };
  let allowList: boolean | null = null;
  const listed = new Set<string>();
  for (const line of lines) {
    if (line === '') {
      allowList = null;
      listed.clear();
      continue;
    }
    const deny = line.startsWith('~');
    allowList ??= !deny;
    for (const name of line.replace(/^~/, '').split(/\s+/).filter(Boolean)) {
      for (const call of expand(name, new Set())) {
        if (deny !== allowList) listed.add(call);
        else listed.delete(call);
      }
    }
  }
  return (call) => (allowList === null ? true : allowList === listed.has(call));
}

/** Starts overquota under strace -f (every thread); returns the daemon and the trace file. */
function traced(dir: string, name: string, args: string[]): { daemon: Running; trace: string } {
  const trace = path.join(dir, `${name}.strace`);
  return { daemon: runOverquota(args, {}, ['strace', '-f', '-qq', '-o', trace, process.execPath, CLI]), trace };
}

/**
 * Stops the traced daemon as systemd does (SIGTERM to the main process, not to strace, which
 * would detach and leave it running), then the names of the system calls it made.
 */
async function stopAndRead(daemon: Running, pid: number, trace: string): Promise<Set<string>> {
  const exited = new Promise<number | null>((resolve) => (daemon.proc.exitCode !== null ? resolve(daemon.proc.exitCode) : daemon.proc.once('exit', resolve)));
  process.kill(pid, 'SIGTERM');
  assert.equal(await exited, 0, daemon.stderr());
  const calls = new Set<string>();
  for (const m of (await fs.readFile(trace, 'utf8')).matchAll(/^\d+\s+([a-z_][a-z0-9_]*)\(/gm)) calls.add(m[1]!);
  return calls;
}

/**
 * The frontend through what a unit would see: unix policy and milter sockets with socket_group
 * (the drop-in the unit suggests), a policy request answered, SIGHUP re-reading the alias map,
 * SIGTERM. Returns the system calls it made.
 */
async function traceFrontend(dir: string): Promise<Set<string>> {
  const spool = path.join(dir, 'spool');
  await fs.mkdir(spool, { recursive: true });
  await fs.writeFile(path.join(spool, 'ann'), 'x'.repeat(100));
  const aliases = path.join(dir, 'virtual');
  await fs.writeFile(aliases, 'info@example.com ann@example.com\n');
  const { daemon, trace } = traced(dir, 'frontend', [
    'frontend',
    '--policy.listen', `unix:${path.join(dir, 'policy')}`, '--policy.socket_group', SOCKET_GROUP,
    '--milter.listen', `unix:${path.join(dir, 'milter')}`, '--milter.socket_group', SOCKET_GROUP,
    '--store.path', spool, '--aliases.file', aliases,
  ]);
  const ready = await daemon.waitForLog((l) => l.msg === 'frontend ready', 30_000);
  const gid = Number((await runOk('getent', ['group', SOCKET_GROUP])).split(':')[2]);
  assert.equal((await fs.lstat(path.join(dir, 'policy'))).gid, gid);
  const client = await PolicyClient.connect(`unix:${path.join(dir, 'policy')}`);
  try {
    assert.equal(await client.ask(rcpt('info@example.com')), 'DUNNO');
  } finally {
    client.close();
  }
  process.kill(ready.pid as number, 'SIGHUP');
  await daemon.waitForLog((l) => l.msg === 'alias map reloaded', 30_000);
  return stopAndRead(daemon, ready.pid as number, trace);
}

/**
 * The quota service on a Maildir++ store whose maildirsize is corrupt, so the lookup recounts and
 * rewrites it, then SIGHUP re-reading the limits file, SIGTERM. Returns the system calls it made.
 */
async function traceQuotaService(dir: string): Promise<Set<string>> {
  const maildir = path.join(dir, 'vmail', 'ann', 'Maildir');
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(maildir, sub), { recursive: true });
  await fs.writeFile(path.join(maildir, 'cur', '1700000000.M1P1.host,S=300:2,S'), 'x'.repeat(300));
  await fs.writeFile(path.join(maildir, 'maildirsize'), '5000S\n10 1\n-20 -1\n');
  const limits = path.join(dir, 'limits');
  await fs.writeFile(limits, 'ann 5000\n');
  const { daemon, trace } = traced(dir, 'quota-service', [
    'quota-service', '--quota_service.listen', '127.0.0.1:0',
    '--store.type', 'maildir', '--store.path', path.join(dir, 'vmail'), '--store.mailbox', '{user}/Maildir', '--store.limits_file', limits,
  ]);
  const ready = await daemon.waitForLog((l) => l.msg === 'quota service ready', 30_000);
  assert.equal((await (await fetch(`http://${String(ready.listen)}/quota?u=ann`)).text()).trim(), 'OK ann 300 5000');
  assert.equal(await fs.readFile(path.join(maildir, 'maildirsize'), 'utf8'), '5000S\n300 1\n', 'the recount rewrote maildirsize');
  process.kill(ready.pid as number, 'SIGHUP');
  await daemon.waitForLog((l) => l.msg === 'limits file reloaded', 30_000);
  return stopAndRead(daemon, ready.pid as number, trace);
}
