import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import os from 'node:os';
import { runToEnd } from './helpers/overquota.js';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'oq-cli-'));
  await fs.mkdir(path.join(dir, 'mail'));
  await fs.writeFile(path.join(dir, 'mail', 'full'), Buffer.alloc(5000));
  await fs.writeFile(path.join(dir, 'mail', 'room'), Buffer.alloc(100));
});
after(() => fs.rm(dir, { recursive: true, force: true }));

/** Runs with a clean environment: no OVERQUOTA_* from the caller leaks in. */
const clean = (env: Record<string, string> = {}) => {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OVERQUOTA_') && v !== undefined) base[k] = v;
  return { ...base, ...env };
};
const config = async (args: string[] = [], env: Record<string, string> = {}) => {
  const r = await runToEnd(['config', ...args], clean(env));
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Record<string, any>;
};

test('with no configuration at all the embedded defaults are the seed setup', async () => {
  const s = await config();
  assert.deepEqual(s.policy.listen, ['inet:127.0.0.1:10033']);
  assert.equal(s.source.type, 'local');
  assert.equal(s.store.type, 'mbox');
  assert.equal(s.store.path, '/var/mail');
  assert.equal(s.store.limit, 200 * 1024 * 1024);
  assert.equal(s.quota_service.listen, '127.0.0.1:10035');
  assert.equal(s.replies.under_quota, 'DUNNO');
  assert.equal(s.replies.over_quota, '452 4.2.2 Mailbox full, try again later');
  assert.equal(s.replies.on_error, 'DUNNO');
});

test('flags override env, env overrides the file, the file overrides the defaults', async () => {
  const file = path.join(dir, 'c.json');
  await fs.writeFile(file, JSON.stringify({ log: { level: 'warn' }, store: { path: '/from/file', limit: '1G' }, latency_budget: '5s' }));
  const s = await config(['--config', file, '--latency_budget', '700ms'], { OVERQUOTA_STORE_PATH: '/from/env', OVERQUOTA_LATENCY_BUDGET: '3s' });
  assert.equal(s.log.level, 'warn');
  assert.equal(s.store.limit, 1024 ** 3);
  assert.equal(s.store.path, '/from/env');
  assert.equal(s.latency_budget, 700);
  const viaEnv = await config([], { OVERQUOTA_CONFIG: file });
  assert.equal(viaEnv.store.path, '/from/file');
});

test('a table of backends can come from the environment as JSON', async () => {
  const s = await config([], { OVERQUOTA_BACKENDS: '[{"domains":["example.com",".example.org"],"type":"http","url":"http://10.0.0.5:10035/quota?u={key}"}]' });
  assert.deepEqual(s.backends[0].domains, ['example.com', '.example.org']);
  assert.equal(s.backends[0].url, 'http://10.0.0.5:10035/quota?u={key}');
});

test('secrets are redacted when the configuration is printed', async () => {
  const r = await runToEnd(['config', '--source.token', 'hunter2', '--quota_service.token', 'hunter3'], clean());
  assert.doesNotMatch(r.stdout, /hunter/);
  assert.equal((JSON.parse(r.stdout) as any).source.token, '[redacted]');
});

test('an invalid setting stops start-up, naming the setting, the value and what is allowed', async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [['--replies.over_quota', '452'], {}, /replies\.over_quota: .*all-numeric action as OK.*value was "452"/],
    [[], { OVERQUOTA_REPLIES_OVER_QUOTA: '452 5.2.2 Mailbox full' }, /replies\.over_quota: .*does not match 452/],
    [['--policy.listen', 'tcp:1.2.3.4:5'], {}, /policy\.listen: must be inet:HOST:PORT/],
    [['--latency_budget', 'soon'], {}, /latency_budget: must be a duration.*value was "soon"/],
    [['--store.type', 'mh'], {}, /store\.type: must be one of the possible values: \["mbox","maildir","doveadm"\]/],
    [['--recipient.mailbox_key', 'user'], {}, /recipient\.mailbox_key: must use at least one of \{local\}/],
    [[], { OVERQUOTA_BACKENDS: '[{"domains":["Example.com"],"type":"http","url":"http://x/?u={key}"}]' }, /backends: .*lower case/],
    [[], { OVERQUOTA_BACKENDS: '[{"domains":["example.com"],"type":"http","url":"http://x/quota"}]' }, /backends: .*must contain \{key\}/],
  ];
  for (const [args, env, why] of cases) {
    const r = await runToEnd(['frontend', ...args], clean(env));
    assert.equal(r.code, 78, `${args.join(' ')} ${JSON.stringify(env)}: ${r.stderr}`);
    assert.match(r.stderr, why);
  }
});

test('an unknown key in the config file is refused', async () => {
  const file = path.join(dir, 'typo.json');
  await fs.writeFile(file, JSON.stringify({ replys: { over_quota: 'x' } }));
  const r = await runToEnd(['config', '--config', file], clean());
  assert.equal(r.code, 78);
  assert.match(r.stderr, /replys/);
});

test('boolean settings read true/false, yes/no, on/off and 1/0 in any case, and refuse anything else', async () => {
  for (const [spelling, value] of [['0', false], ['no', false], ['OFF', false], ['False', false], ['1', true], ['yes', true], ['On', true], ['TRUE', true]] as const) {
    assert.equal((await config([], { OVERQUOTA_DRY_RUN: spelling })).dry_run, value, `OVERQUOTA_DRY_RUN=${spelling}`);
    assert.equal((await config(['--dry_run', spelling])).dry_run, value, `--dry_run ${spelling}`);
  }
  for (const junk of ['maybe', '', 'nope', '2']) {
    const r = await runToEnd(['config'], clean({ OVERQUOTA_DRY_RUN: junk }));
    assert.equal(r.code, 78, `OVERQUOTA_DRY_RUN=${junk}: ${r.stderr}`);
    assert.match(r.stderr, /dry_run: must be true or false \(also yes\/no, on\/off, 1\/0\)/);
  }
});

test('a count is a whole number: a suffix, a decimal or an exponent stops start-up instead of being cut', async () => {
  for (const junk of ['10k', '1e3', '12.7', '4096x', '0x10', '-5']) {
    for (const [args, env] of [[[], { OVERQUOTA_CACHE_MAX_ENTRIES: junk }], [['--cache.max_entries', junk], {}]] as const) {
      const r = await runToEnd(['config', ...args], clean(env));
      assert.equal(r.code, 78, `${junk}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`cache\\.max_entries: must be a whole number.*value was "${junk.replace('.', '\\.')}"`));
    }
  }
  assert.equal((await config([], { OVERQUOTA_CACHE_MAX_ENTRIES: '5000' })).cache.max_entries, 5000);
  // Sizes take the documented binary suffixes.
  const sized = await config(['--policy.max_request_size', '64k'], { OVERQUOTA_POLICY_MAX_LINE_LENGTH: '2K' });
  assert.equal(sized.policy.max_request_size, 65536);
  assert.equal(sized.policy.max_line_length, 2048);
  const cut = await runToEnd(['config', '--policy.max_request_size', '12.7k'], clean());
  assert.equal(cut.code, 78);
  assert.match(cut.stderr, /policy\.max_request_size: must be a size/);
});

test('an OVERQUOTA_ variable that names no setting stops start-up, naming the variable', async () => {
  const r = await runToEnd(['config'], clean({ OVERQUOTA_CACHE_MAX_ENTRY: '5000', OVERQUOTA_DRYRUN: 'yes' }));
  assert.equal(r.code, 78);
  assert.match(r.stderr, /OVERQUOTA_CACHE_MAX_ENTRY: names no setting/);
  assert.match(r.stderr, /OVERQUOTA_DRYRUN: names no setting/);
  // The project's own scripts' variables reach the daemons they start and are no typo.
  assert.equal((await config([], { OVERQUOTA_BENCH_RESULTS: dir })).dry_run, false);
});

test('a JSON syntax error in the config file is named by file, line and column, without quoting secrets', async () => {
  const file = path.join(dir, 'broken.json');
  await fs.writeFile(file, '{\n  "source": { "token": "hunter2" },\n  "log": { "level": "info", },\n  "dry_run": true\n}\n');
  const r = await runToEnd(['config', '--config', file], clean());
  assert.equal(r.code, 78);
  assert.match(r.stderr, new RegExp(`config file ${file.replaceAll('.', '\\.')}, line 3, column 29: not valid JSON \\(unexpected "}"\\)`));
  assert.doesNotMatch(r.stderr, /hunter2/);
  // A token V8 names no position for (an unquoted word) is found all the same.
  await fs.writeFile(file, '{"log": {"level": info}}');
  assert.match((await runToEnd(['config', '--config', file], clean())).stderr, /line 1, column 19: not valid JSON \(unexpected "i"\)/);
  await fs.writeFile(file, '{"log": {"level": "info"}');
  assert.match((await runToEnd(['config', '--config', file], clean())).stderr, /line 1, column 26: not valid JSON \(unexpected end of file\)/);
});

test('the config file may carry // and /* */ comments (the packaged files are commented); errors keep their line and column', async () => {
  const file = path.join(dir, 'commented.json');
  await fs.writeFile(file, '{\n  // Log level: warn logs no decisions\n  "log": { "level": "warn" /* quiet */ },\n  "store": { "path": "/srv//mail" } // two slashes in a string stay\n}\n');
  const r = await runToEnd(['config', '--config', file], clean());
  assert.equal(r.code, 0, r.stderr);
  const settings = JSON.parse(r.stdout);
  assert.equal(settings.log.level, 'warn');
  assert.equal(settings.store.path, '/srv//mail');
  await fs.writeFile(file, '{\n  /* a comment */ "log": { "level": "warn", },\n}\n');
  assert.match((await runToEnd(['config', '--config', file], clean())).stderr, /line 2, column 45: not valid JSON \(unexpected "}"\)/);
});

test('an unknown flag is a usage error, not silently ignored', async () => {
  const r = await runToEnd(['frontend', '--policy.lisen', 'inet:127.0.0.1:1'], clean());
  assert.equal(r.code, 64);
  assert.match(r.stderr, /unknown option --policy\.lisen/);
});

test('--version prints the package version; --help lists commands and, per command, every setting', async () => {
  const pkg = JSON.parse(await fs.readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  assert.equal((await runToEnd(['--version'], clean())).stdout.trim(), pkg.version);
  const help = await runToEnd(['--help'], clean());
  for (const cmd of ['frontend', 'quota-service', 'check', 'config']) assert.match(help.stdout, new RegExp(`^  ${cmd} `, 'm'));
  for (const cmd of ['frontend', 'quota-service', 'check']) {
    const h = await runToEnd([cmd, '--help'], clean());
    assert.equal(h.code, 0);
    assert.match(h.stdout, /--replies\.over_quota {2}OVERQUOTA_REPLIES_OVER_QUOTA/);
    assert.match(h.stdout, /--policy\.listen {2}OVERQUOTA_POLICY_LISTEN/);
  }
});

const store = () => ['--store.path', path.join(dir, 'mail'), '--store.limit', '1000'];

test('check prints verdict, usage, limit, source and the exact reply Postfix would give', async () => {
  const r = await runToEnd(['check', 'Full+x@Example.com', ...store()], clean());
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^verdict +over_quota/m);
  assert.match(r.stdout, /^usage +5000 bytes \(500%\)/m);
  assert.match(r.stdout, /^limit +1000 bytes/m);
  assert.match(r.stdout, /^source +mbox:/m);
  assert.match(r.stdout, /^policy reply +action=452 4\.2\.2 Mailbox full, try again later$/m);
  assert.match(r.stdout, /^Postfix says +452 4\.2\.2 <full@example\.com>: Recipient address rejected: Mailbox full, try again later$/m);
});

test('check with --size uses the message size, and exits 0 when the mail would pass', async () => {
  const fits = await runToEnd(['check', 'room@example.com', '--size', '800', ...store()], clean());
  assert.equal(fits.code, 0);
  assert.match(fits.stdout, /^verdict +under_quota/m);
  const big = await runToEnd(['check', 'room@example.com', '--size', '5000', '--json', ...store()], clean());
  assert.equal(big.code, 1);
  const j = JSON.parse(big.stdout) as Record<string, unknown>;
  assert.equal(j.verdict, 'too_large');
  assert.equal(j.reply, '552 5.2.3 Message is larger than the mailbox quota');
});

test('check reports a source failure with its code and exits 2', async () => {
  const r = await runToEnd(['check', 'a@example.com', '--source.type', 'http', '--source.url', 'http://127.0.0.1:9/quota?u={key}'], clean());
  assert.equal(r.code, 2);
  assert.match(r.stdout, /^error +SOURCE_UNREACHABLE/m);
  assert.match(r.stdout, /^policy reply +action=DUNNO$/m);
});

test('check without an address is a usage error', async () => {
  const r = await runToEnd(['check'], clean());
  assert.equal(r.code, 64);
  assert.match(r.stderr, /check needs an ADDRESS/);
});

test('the README configuration reference names every setting with its env var and default', async () => {
  const { describeSettings } = await import('../src/config/schema.js');
  const readme = await fs.readFile(new URL('../README.md', import.meta.url), 'utf8');
  for (const s of describeSettings()) {
    assert.ok(readme.includes(`| \`${s.path}\` | \`${s.env}\` | \`${JSON.stringify(s.default)}\` |`), `README lacks ${s.path}`);
  }
});

test('the README puts the policy service, the milter, the quota service and the admin endpoint on ports of their own', async () => {
  const { describeSettings } = await import('../src/config/schema.js');
  const readme = await fs.readFile(new URL('../README.md', import.meta.url), 'utf8');
  const defaultPort = (setting: string) => /:(\d+)"?\]?$/.exec(JSON.stringify(describeSettings().find((s) => s.path === setting)!.default))![1];
  const mentioned = (pattern: RegExp) => [...readme.matchAll(pattern)].map((m) => m[1]!);
  const admin = new Set(mentioned(/admin\.listen`, e\.g\. `127\.0\.0\.1:(\d+)`/g));
  for (const port of mentioned(/http:\/\/127\.0\.0\.1:(\d+)\/invalidate\?address=/g)) admin.add(port);
  const milter = new Set(mentioned(/--milter\.listen inet:127\.0\.0\.1:(\d+)/g));
  assert.equal(admin.size, 1, `one admin port: ${[...admin].join(', ')}`);
  assert.equal(milter.size, 1, `one milter port: ${[...milter].join(', ')}`);
  const ports = [defaultPort('policy.listen'), defaultPort('quota_service.listen'), [...milter][0], [...admin][0]];
  assert.equal(new Set(ports).size, 4, `policy, quota service, milter, admin: ${ports.join(', ')}`);
});

test('.ci/run runs exactly the README test command', async () => {
  const ci = await fs.readFile(new URL('../.ci/run', import.meta.url), 'utf8');
  const readme = await fs.readFile(new URL('../README.md', import.meta.url), 'utf8');
  assert.match(readme, /^npm test +#/m);
  assert.match(ci, /^npm test$/m);
});
