/*
 * The per-user limits file: size syntax, unlimited markers, comments, and bad lines reported
 * with file:line while the previous table stays in force.
 * These tests must never touch files outside their own temporary directory.
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LimitsFile, limitFromFile, parseLimits } from '../src/stores/limits.js';
import { parseBytes as parseSize } from '../src/config/formats.js';

test('sizes are binary: K, M, G, T, with optional B or iB, in any case', () => {
  assert.equal(parseSize('1024'), 1024);
  assert.equal(parseSize('1K'), 1024);
  assert.equal(parseSize('200M'), 200 * 1048576);
  assert.equal(parseSize('200MiB'), 200 * 1048576);
  assert.equal(parseSize('200mb'), 200 * 1048576);
  assert.equal(parseSize('2G'), 2 * 1024 ** 3);
  assert.equal(parseSize('3T'), 3 * 1024 ** 4);
  assert.equal(parseSize('512B'), 512);
  assert.equal(parseSize('0'), 0);
});

test('fractions, negatives, unknown units and overflowing sizes are not sizes', () => {
  for (const text of ['1.5G', '-1', '', 'M', '10X', '10 KB extra', '1e6', '0x10', '200iB', '99999999999999T', '-']) {
    assert.equal(parseSize(text), null, text);
  }
});

test('lines give a size and an optional message count; comments and blank lines are ignored', () => {
  const { limits, errors } = parseLimits(
    ['# the users', '', 'alice 200M', '  bob@example.com\t1G  5000  # big box', 'carol 0', 'dave - -', 'erin 10K 0', ''].join('\n'),
  );
  assert.deepEqual(errors, []);
  assert.deepEqual(limits.get('alice'), { bytes: 200 * 1048576, messages: null });
  assert.deepEqual(limits.get('bob@example.com'), { bytes: 1024 ** 3, messages: 5000 });
  assert.deepEqual(limits.get('carol'), { bytes: null, messages: null }, '0 is unlimited');
  assert.deepEqual(limits.get('dave'), { bytes: null, messages: null }, '- is unlimited');
  assert.deepEqual(limits.get('erin'), { bytes: 10240, messages: null });
  assert.equal(limits.size, 5);
});

test('bad lines are collected with their line numbers and text', () => {
  const { errors } = parseLimits(['alice 200M', 'bob 1.5G', 'carol', 'dave 1M 10 extra', 'erin 1M many', 'alice 1G'].join('\n'));
  assert.deepEqual(
    errors.map((e) => [e.line, e.text]),
    [
      [2, 'bob 1.5G'],
      [3, 'carol'],
      [4, 'dave 1M 10 extra'],
      [5, 'erin 1M many'],
      [6, 'alice 1G'],
    ],
  );
  assert.match(errors[0]!.reason, /bad size "1.5G"/);
  assert.match(errors[4]!.reason, /duplicate user "alice" \(first at line 1\)/);
});

test('a file loads, answers limitFor, and names file:line for each bad line', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'overquota-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'limits');
  await writeFile(file, 'alice 100M\nbob 2G 10\n');
  const limits = new LimitsFile();
  assert.deepEqual(await limits.load(file), []);
  assert.deepEqual(limits.limitFor('alice'), { bytes: 100 * 1048576, messages: null });
  assert.deepEqual(limits.limitFor('bob'), { bytes: 2 * 1024 ** 3, messages: 10 });
  assert.equal(limits.limitFor('nobody'), undefined);

  await writeFile(file, 'alice 300M\n# fine\nbob 2Q\n');
  const errors = await limits.reload();
  assert.equal(errors.length, 1);
  assert.deepEqual(limits.describeErrors(), [`${file}:3: bad size "2Q" (integer with optional K, M, G or T; 0 or - for unlimited): bob 2Q`]);
  // The file with a mistake changed nothing: alice keeps the previous limit.
  assert.deepEqual(limits.limitFor('alice'), { bytes: 100 * 1048576, messages: null });

  await writeFile(file, 'alice 300M\n');
  assert.deepEqual(await limits.reload(), []);
  assert.deepEqual(limits.describeErrors(), []);
  assert.deepEqual(limits.limitFor('alice'), { bytes: 300 * 1048576, messages: null });
  assert.equal(limits.limitFor('bob'), undefined, 'removed users lose their entry');
});

test('an unreadable limits file throws and keeps the previous table', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'overquota-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const limits = new LimitsFile();
  await writeFile(path.join(dir, 'limits'), 'alice 1M\n');
  await limits.load(path.join(dir, 'limits'));
  await assert.rejects(limits.load(path.join(dir, 'missing')), { code: 'ENOENT' });
  assert.deepEqual(limits.limitFor('alice'), { bytes: 1048576, messages: null });
  await assert.rejects(new LimitsFile().reload(), /before load/);
});

test('a store falls back to the default limit when the file does not name the user', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'overquota-limits-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'limits'), 'alice -\n');
  const file = new LimitsFile();
  await file.load(path.join(dir, 'limits'));
  assert.deepEqual(limitFromFile(file, 'alice', 5000), { bytes: null, messages: null }, 'an explicit unlimited wins');
  assert.deepEqual(limitFromFile(file, 'bob', 5000), { bytes: 5000, messages: null });
  assert.deepEqual(limitFromFile(undefined, 'bob', null), { bytes: null, messages: null });
});
