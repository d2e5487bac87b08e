import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseQuotaGet } from '../src/sources/doveadm.js';
import { SourceError } from '../src/quota.js';

test("doveadm's quotaGet answer: STORAGE KiB become bytes, MESSAGE counts are kept", () => {
  const body = '[["doveadmResponse",[{"root":"User quota","type":"STORAGE","value":"1354","limit":"1024","percent":"132"},{"root":"User quota","type":"MESSAGE","value":"6","limit":"-","percent":"0"}],"q"]]';
  assert.deepEqual(parseQuotaGet(body), { kind: 'found', usageBytes: 1354 * 1024, limitBytes: 1024 * 1024, usageMessages: 6, limitMessages: null, overQuota: false });
});

test('"-" is unlimited; no rows at all is a mailbox without quota', () => {
  const s = parseQuotaGet('[["doveadmResponse",[{"root":"User quota","type":"STORAGE","value":"10","limit":"-","percent":"0"}],"q"]]');
  assert.equal(s.kind === 'found' && s.limitBytes, null);
  assert.deepEqual(parseQuotaGet('[["doveadmResponse",[],"q"]]'), { kind: 'found', usageBytes: 0, limitBytes: null, usageMessages: null, limitMessages: null, overQuota: false });
});

test('with several quota roots the fullest one decides', () => {
  const body = JSON.stringify([['doveadmResponse', [
    { root: 'User quota', type: 'STORAGE', value: '100', limit: '1000' },
    { root: 'Domain quota', type: 'STORAGE', value: '9000', limit: '9500' },
  ], 'q']]);
  const s = parseQuotaGet(body);
  assert.equal(s.kind === 'found' && s.limitBytes, 9500 * 1024);
});

test('exit code 67 is an unknown mailbox, 75 is busy (asked again), garbage is an error', () => {
  assert.deepEqual(parseQuotaGet('[["error",{"type":"exitCode","exitCode":67},"q"]]'), { kind: 'unknown' });
  assert.throws(() => parseQuotaGet('[["error",{"type":"exitCode","exitCode":75},"q"]]'), (e: SourceError) => e.code === 'SOURCE_BUSY');
  for (const bad of ['<html>', '{}', '[["doveadmResponse",[{"type":"STORAGE","value":"-1","limit":"5"}],"q"]]', '[["surprise"]]']) {
    assert.throws(() => parseQuotaGet(bad), (e: SourceError) => e.code === 'SOURCE_BAD_ANSWER', bad);
  }
});

test('an answer tagged with another mailbox than the one asked is a bad answer', () => {
  const body = (tag: string) => `[["doveadmResponse",[{"root":"User quota","type":"STORAGE","value":"10","limit":"20","percent":"50"}],${JSON.stringify(tag)}]]`;
  assert.equal(parseQuotaGet(body('alice'), 'doveadm', 'alice').kind, 'found');
  assert.throws(() => parseQuotaGet(body('bob'), 'doveadm', 'alice'), (e: SourceError) => e.code === 'SOURCE_BAD_ANSWER' && /not the mailbox asked/.test(e.message));
  assert.throws(() => parseQuotaGet('[["error",{"type":"exitCode","exitCode":67},"bob"]]', 'doveadm', 'alice'), (e: SourceError) => e.code === 'SOURCE_BAD_ANSWER');
});
