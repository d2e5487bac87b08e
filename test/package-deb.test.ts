/*
 * The Debian package as an operator installs it: `npm run package` (scripts/package.sh) builds
 * overquota_VERSION_amd64.deb; lintian finds no error or warning; installed with dpkg -i into a
 * clean Debian 12 and 13 root (debootstrap, cached; an overlay keeps the cache clean), after the
 * packages of its Depends that the root lacks (from the Debian mirror, as apt would fetch them;
 * cached by scripts/debian-root.sh --debs), it needs nothing from this host, runs both daemons
 * exactly as their units say (ExecStart, User=, Group=, SupplementaryGroups=) with the shipped
 * configuration, answered from outside the root, and reloads with the units' ExecReload command;
 * its logrotate snippet rotates; dpkg --remove keeps the configuration and dpkg --purge leaves only
 * what Debian keeps (the system user). Needs root (chroot, mount), dpkg-dev, lintian, debootstrap,
 * logrotate (scripts/install-deps.sh), and the Debian mirror the first time.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { tempDir, type TempDir } from './helpers/tmp.js';
import { REPO, run, runOk, scratchDebianRoot, single, SLOW_COMMAND_MS, unitDirectives, UNITS, type ScratchRoot } from './helpers/package.js';
import { runOverquota, runToEnd, type Running } from './helpers/overquota.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';
import { describeSettings } from '../src/config/schema.js';

const VERSION = (JSON.parse(await fs.readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const NODE_LTS = (await runOk('bash', [path.join(REPO, 'scripts', 'node-lts.sh'), '--version'])).trim();
/** The shipped config's default limit is 200 MiB: a sparse mbox just over it is a full mailbox. */
const DEFAULT_LIMIT = 200 * 1024 * 1024;
const FULL_MBOX_BYTES = DEFAULT_LIMIT + 1024 * 1024;
/** The PATH systemd gives a unit, and nothing else of this environment. */
const UNIT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

let tmp: TempDir;
let deb: string;

before(async () => {
  tmp = await tempDir('overquota-deb-');
  deb = (await runOk('bash', [path.join(REPO, 'scripts', 'package.sh'), '--out', tmp.path], { cwd: REPO, timeoutMs: SLOW_COMMAND_MS })).trim();
});
after(async () => {
  await tmp?.cleanup();
});

/** One file of the package's tree. */
const fileInDeb = async (member: string): Promise<Buffer> => {
  const out = path.join(tmp.path, path.basename(member));
  await runOk('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -xOf - "$2" > "$3"', 'sh', deb, member, out], { timeoutMs: 120_000 });
  return fs.readFile(out);
};

describe('npm run package: overquota_VERSION_amd64.deb', () => {
  it('is named for its version and architecture', () => {
    assert.equal(path.basename(deb), `overquota_${VERSION}_amd64.deb`);
  });

  it('lintian finds no error and no warning in it', async () => {
    const lintian = await run('lintian', ['--fail-on', 'error,warning', deb], { timeoutMs: SLOW_COMMAND_MS });
    const complaints = lintian.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
    assert.deepEqual(complaints, [], lintian.stdout + lintian.stderr);
    assert.equal(lintian.code, 0, lintian.stdout + lintian.stderr);
  });

  it('holds the application with its production dependencies only, the pinned Node.js runtime, the command, units, configuration, logrotate snippet and manual page', async () => {
    const paths = (await runOk('dpkg-deb', ['--contents', deb])).split('\n').map((l) => l.split(/\s+/).slice(5).join(' ').replace(/^\.\//, '/'));
    for (const needed of [
      '/usr/bin/overquota',
      '/usr/lib/overquota/node',
      '/usr/lib/overquota/app/package.json',
      '/usr/lib/overquota/app/dist/cli.js',
      '/usr/lib/overquota/app/node_modules/pino/package.json',
      '/etc/overquota/frontend.json',
      '/etc/overquota/quota-service.json',
      '/etc/logrotate.d/overquota',
      ...UNITS.map((u) => `/usr/lib/systemd/system/${u}`),
      '/usr/share/man/man8/overquota.8.gz',
      '/usr/share/doc/overquota/copyright',
      '/usr/share/doc/overquota/changelog.gz',
    ]) {
      assert.ok(paths.includes(needed), `${needed} is in the package`);
    }
    const development = paths.filter((p) => /\/node_modules\/(typescript|tsx|esbuild|fast-check|@types)\//.test(p) || /^\/usr\/lib\/overquota\/app\/(src|test|bench)\//.test(p));
    assert.deepEqual(development, []);
    const conffiles = await runOk('dpkg-deb', ['--info', deb, 'conffiles']);
    assert.deepEqual(conffiles.trim().split('\n').sort(), ['/etc/logrotate.d/overquota', '/etc/overquota/frontend.json', '/etc/overquota/quota-service.json']);
    const depends = (await runOk('dpkg-deb', ['--field', deb, 'Depends'])).trim();
    assert.doesNotMatch(depends, /nodejs/, 'the host node is not needed');
    assert.match(depends, /libc6/);
  });

  it('overquota(8) lists every setting with its variable, and man reads it without a warning', async () => {
    const page = gunzipSync(await fileInDeb('./usr/share/man/man8/overquota.8.gz')).toString('utf8');
    const missing = describeSettings().filter((s) => !page.includes(`\\-\\-${s.path.replaceAll('-', '\\-')}`) || !page.includes(s.env));
    assert.deepEqual(missing.map((s) => s.path), []);
    const file = path.join(tmp.path, 'overquota.8');
    await fs.writeFile(file, page);
    const man = await run('man', ['--warnings', '-l', '-Tutf8', file], { env: { ...process.env, MANWIDTH: '80' } });
    assert.equal(man.code, 0, man.stderr);
    assert.equal(man.stderr, '');
    assert.match(man.stdout, /OVERQUOTA\(8\)/);
  });

  it('its /etc/overquota files are the built-in defaults, commented: overquota config reads them and prints the defaults', async () => {
    const defaults = await runToEnd(['config']);
    assert.equal(defaults.code, 0, defaults.stderr);
    for (const file of ['frontend.json', 'quota-service.json']) {
      const shipped = path.join(REPO, 'packaging', 'etc', file);
      assert.match(await fs.readFile(shipped, 'utf8'), /^\s*\/\/ /m, `${file} has comments`);
      const loaded = await runToEnd(['config', '--config', shipped]);
      assert.equal(loaded.code, 0, loaded.stderr);
      assert.deepEqual(JSON.parse(loaded.stdout), JSON.parse(defaults.stdout), file);
    }
  });

  for (const [suite, release] of [
    ['bookworm', 'Debian 12'],
    ['trixie', 'Debian 13'],
  ] as const) {
    describe(`installed with dpkg -i into a clean ${release} root`, () => {
      let scratch: ScratchRoot;
      let root: string;
      /** The root as it was before overquota went in (its dependencies installed): what purge returns to. */
      let baseline: Map<string, string>;
      const inRoot = (...args: string[]) => runOk('chroot', [root, ...args], { env: { PATH: UNIT_PATH } });

      before(async () => {
        scratch = await scratchDebianRoot(path.join(tmp.path, `scratch-${suite}`), suite);
        root = scratch.root;
        // What `apt install ./overquota_*.deb` would add first: the Depends the clean root lacks.
        const depends = (await runOk('dpkg-deb', ['--field', deb, 'Depends'])).split(',').map((d) => d.trim().split(/[\s|(:]/)[0]!);
        const debs = (await runOk('bash', [path.join(REPO, 'scripts', 'debian-root.sh'), '--debs', suite, ...depends], { timeoutMs: SLOW_COMMAND_MS })).trim();
        const needed = (await fs.readdir(debs)).filter((f) => f.endsWith('.deb'));
        if (needed.length > 0) {
          await fs.mkdir(path.join(root, 'tmp', 'depends'));
          for (const f of needed) await fs.copyFile(path.join(debs, f), path.join(root, 'tmp', 'depends', f));
          await inRoot('dpkg', '-i', ...needed.map((f) => `/tmp/depends/${f}`));
          await fs.rm(path.join(root, 'tmp', 'depends'), { recursive: true });
        }
        baseline = await snapshot(scratch.changes);
        await fs.copyFile(deb, path.join(root, 'tmp', path.basename(deb)));
        await inRoot('dpkg', '-i', `/tmp/${path.basename(deb)}`);
        await fs.rm(path.join(root, 'tmp', path.basename(deb)));
      });
      after(async () => {
        await scratch?.remove();
      });

      /**
       * Starts a daemon as its installed unit says: ExecStart's words, as User= and Group= with
       * SupplementaryGroups=, a bare environment, inside the root. env: settings the test needs
       * (a free port instead of the shipped one).
       */
      async function startAsUnit(unit: string, env: string[], ready: string): Promise<{ daemon: Running; line: Record<string, unknown> }> {
        const d = unitDirectives(await fs.readFile(path.join(root, 'usr/lib/systemd/system', unit), 'utf8'));
        const groups = d.get('SupplementaryGroups') ?? [];
        const command = [
          'env', '-i', `PATH=${UNIT_PATH}`, ...env,
          'chroot', root,
          'setpriv', `--reuid=${single(d, 'User')}`, `--regid=${single(d, 'Group')}`, groups.length ? `--groups=${groups.join(',')}` : '--clear-groups', '--',
          ...single(d, 'ExecStart').split(/\s+/),
        ];
        const daemon = runOverquota([], {}, command);
        return { daemon, line: await daemon.waitForLog((l) => l.msg === ready) };
      }

      /** The uid and groups a running process has, from /proc. */
      async function credentials(pid: number): Promise<{ uid: number; groups: number[] }> {
        const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
        return {
          uid: Number(/^Uid:\s+(\d+)/m.exec(status)![1]),
          groups: /^Groups:\s*(.*)$/m.exec(status)![1]!.trim().split(/\s+/).filter(Boolean).map(Number),
        };
      }

      const idOf = async (database: 'passwd' | 'group', name: string) => Number((await inRoot('getent', database, name)).split(':')[2]);

      it('creates the system user overquota, and the configuration is readable by root and group overquota only', async () => {
        const entry = (await inRoot('getent', 'passwd', 'overquota')).trim().split(':');
        assert.ok(Number(entry[2]) < 1000, `a system uid: ${entry.join(':')}`);
        assert.equal(entry[6], '/usr/sbin/nologin');
        const gid = await idOf('group', 'overquota');
        for (const file of ['frontend.json', 'quota-service.json']) {
          const st = await fs.stat(path.join(root, 'etc/overquota', file));
          assert.equal(st.mode & 0o777, 0o640, file);
          assert.equal(st.uid, 0, file);
          assert.equal(st.gid, gid, file);
        }
      });

      it('runs its own Node.js runtime (the pinned LTS), not the host\'s', async () => {
        assert.equal((await inRoot('/usr/lib/overquota/node', '--version')).trim(), `v${NODE_LTS}`);
        assert.equal((await inRoot('overquota', '--version')).trim(), VERSION);
        assert.equal(await fs.stat(path.join(root, 'usr/bin/node')).catch(() => null), null, 'the clean root has no node of its own');
      });

      it('the frontend, started as its unit says with the shipped configuration, answers a policy request from outside the root', async () => {
        // Sparse, owned by another user and private to it, as Postfix's local(8) makes one: the
        // daemons only stat it.
        await fs.writeFile(path.join(root, 'var/mail/full'), '', { mode: 0o600 });
        await fs.truncate(path.join(root, 'var/mail/full'), FULL_MBOX_BYTES);
        await fs.chown(path.join(root, 'var/mail/full'), 4242, await idOf('group', 'mail'));
        // The admin endpoint is on by default (127.0.0.1:10036): here on a free port, never a standard one.
        const { daemon, line } = await startAsUnit('overquota-frontend.service', ['OVERQUOTA_POLICY_LISTEN=inet:127.0.0.1:0', 'OVERQUOTA_ADMIN_LISTEN=127.0.0.1:0'], 'frontend ready');
        let client: PolicyClient | undefined;
        try {
          assert.equal((await credentials(daemon.proc.pid!)).uid, await idOf('passwd', 'overquota'));
          client = await PolicyClient.connect((line.policy as string[])[0]!);
          assert.equal(await client.ask(rcpt('full@example.com')), '452 4.2.2 Mailbox full, try again later');
          assert.equal(await client.ask(rcpt('room@example.com')), 'DUNNO');
          // prom-client is in the package: the metrics count what was just decided.
          const metrics = await (await fetch(`http://${String(line.admin)}/metrics`)).text();
          assert.match(metrics, /^overquota_decisions_total\{face="policy",verdict="over_quota"\} 1$/m);
          assert.equal((await fetch(`http://${String(line.admin)}/ready`)).status, 200);
        } finally {
          client?.close();
          assert.equal(await daemon.stop(), 0, daemon.stderr());
        }
      });

      it('systemctl reload\'s command (ExecReload, run inside the root) makes the running frontend re-read its alias map', async () => {
        await fs.writeFile(path.join(root, 'tmp/virtual'), 'info@example.com ann@example.com\n', { mode: 0o644 });
        const { daemon } = await startAsUnit('overquota-frontend.service', ['OVERQUOTA_POLICY_LISTEN=inet:127.0.0.1:0', 'OVERQUOTA_ADMIN_LISTEN=', 'OVERQUOTA_ALIASES_FILE=/tmp/virtual'], 'frontend ready');
        try {
          const reload = single(unitDirectives(await fs.readFile(path.join(root, 'usr/lib/systemd/system/overquota-frontend.service'), 'utf8')), 'ExecReload');
          // systemd puts the main process's pid for $MAINPID and finds the program on its own PATH.
          await inRoot(...reload.replaceAll('$MAINPID', String(daemon.proc.pid)).split(/\s+/));
          const reloaded = await daemon.waitForLog((l) => l.msg === 'alias map reloaded');
          assert.equal(reloaded.entries, 1);
        } finally {
          assert.equal(await daemon.stop(), 0, daemon.stderr());
          await fs.rm(path.join(root, 'tmp/virtual'));
        }
      });

      it('the quota service, started as its unit says (group mail) with the shipped configuration, answers from the mail spool', async () => {
        const { daemon, line } = await startAsUnit('overquota-quota-service.service', ['OVERQUOTA_QUOTA_SERVICE_LISTEN=127.0.0.1:0'], 'quota service ready');
        try {
          const who = await credentials(daemon.proc.pid!);
          assert.equal(who.uid, await idOf('passwd', 'overquota'));
          assert.ok(who.groups.includes(await idOf('group', 'mail')), `groups ${who.groups.join(',')}`);
          const answer = await fetch(`http://${String(line.listen)}/quota?u=full`);
          assert.equal((await answer.text()).trim(), `OVERQUOTA full ${FULL_MBOX_BYTES} ${DEFAULT_LIMIT}`);
        } finally {
          assert.equal(await daemon.stop(), 0, daemon.stderr());
        }
      });

      it('its logrotate snippet rotates a log.file under /var/log/overquota as user overquota', async () => {
        const logs = path.join(root, 'var/log/overquota');
        const uid = await idOf('passwd', 'overquota');
        const gid = await idOf('group', 'overquota');
        await fs.writeFile(path.join(logs, 'frontend.log'), '{"msg":"decision"}\n');
        await fs.chown(path.join(logs, 'frontend.log'), uid, gid);
        // This host's logrotate, seeing the root's users and /var/log (a private mount namespace:
        // the host is not touched). The root has no systemd running, so postrotate signals nothing.
        const state = path.join(tmp.path, `logrotate-${suite}.state`);
        const script = [
          'set -e',
          `mount --bind "${root}/etc/passwd" /etc/passwd`,
          `mount --bind "${root}/etc/group" /etc/group`,
          `mount --bind "${root}/var/log" /var/log`,
          `logrotate --force --state "${state}" "${root}/etc/logrotate.d/overquota"`,
        ].join('\n');
        const rotated = await run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script]);
        assert.equal(rotated.code, 0, rotated.stderr);
        assert.equal(await fs.readFile(path.join(logs, 'frontend.log.1'), 'utf8'), '{"msg":"decision"}\n');
        const fresh = await fs.stat(path.join(logs, 'frontend.log'));
        assert.equal(fresh.size, 0);
        assert.equal(fresh.uid, uid);
        assert.equal(fresh.mode & 0o777, 0o640);
      });

      it('dpkg --remove keeps the configuration and the user; then dpkg --purge leaves nothing but the system user and dpkg\'s own records', async () => {
        await inRoot('dpkg', '--remove', 'overquota');
        assert.equal((await inRoot('dpkg-query', '--showformat', '${Status}', '--show', 'overquota')).trim(), 'deinstall ok config-files');
        assert.equal(await fs.stat(path.join(root, 'usr/bin/overquota')).catch(() => null), null, 'the command is gone');
        for (const file of ['frontend.json', 'quota-service.json']) {
          assert.ok((await fs.stat(path.join(root, 'etc/overquota', file))).isFile(), `${file} is kept`);
        }
        assert.match(await inRoot('getent', 'passwd', 'overquota'), /^overquota:/);

        await inRoot('dpkg', '--purge', 'overquota');
        await fs.rm(path.join(root, 'var/mail/full'));
        const left = await leftovers(scratch.changes, scratch.clean, baseline);
        assert.deepEqual(left, []);
        assert.match(await inRoot('getent', 'passwd', 'overquota'), /^overquota:/, 'Debian keeps system users');
      });
    });
  }
});

/** What dpkg and useradd may leave: the user and group databases (and their lock), dpkg's state and log. */
const KEPT = [/^etc\/(passwd|group|shadow|gshadow)-?$/, /^etc\/\.pwd\.lock$/, /^var\/lib\/dpkg\//, /^var\/log\/(dpkg\.log|lastlog|faillog)$/, /^var\/cache\/debconf\//];

/** Every path of overlayfs's upper layer with what it is: a folder, a whiteout, a link's target, a file's mode and content hash. */
async function snapshot(changes: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const walk = async (dir: string) => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      found.set(path.relative(changes, full), await signature(full));
      if (entry.isDirectory()) await walk(full);
    }
  };
  await walk(changes);
  return found;
}

async function signature(file: string): Promise<string> {
  const st = await fs.lstat(file);
  if (st.isDirectory()) return 'folder';
  if (st.isSymbolicLink()) return `link ${await fs.readlink(file)}`;
  if (!st.isFile()) return 'whiteout';
  return `file ${(st.mode & 0o7777).toString(8)} ${createHash('sha256').update(await fs.readFile(file)).digest('hex')}`;
}

/**
 * Paths that differ from the root before the install (the clean root and, in the upper layer, the
 * baseline: the package's dependencies) and are not KEPT: files added or changed (overlayfs's
 * upper layer), files removed from it (whiteouts), and folders that it does not have (a folder of
 * the clean root appears in the upper layer whenever something in it changed).
 */
async function leftovers(changes: string, clean: string, baseline: Map<string, string>): Promise<string[]> {
  const found: string[] = [];
  for (const [relative, now] of await snapshot(changes)) {
    if (baseline.get(relative) === now) continue;
    if (now === 'folder') {
      const inClean = await fs.stat(path.join(clean, relative)).catch(() => null);
      if (!inClean && !baseline.has(relative) && !KEPT.some((k) => k.test(relative + '/'))) found.push(`${relative}/`);
    } else if (!KEPT.some((k) => k.test(relative))) {
      found.push(now === 'whiteout' ? `${relative} (removed from the clean root)` : relative);
    }
  }
  return found;
}
