/*
 * `overquota quota-service` start-up checks, as a real process: a listener beyond loopback that
 * would offer POST /invalidate to anyone (redis.url set, no token) is a configuration error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runOverquota } from './helpers/overquota.js';

/** Far longer than a start-up check takes; a service that started instead is stopped then. */
const STARTED_MS = 10_000;

test('off loopback with redis.url and no token the quota service refuses to start: exit 78 and the reason', async () => {
  // Port 0 and an unreachable Redis: the check comes before either is used.
  const qs = runOverquota(['quota-service', '--quota_service.listen', '0.0.0.0:0', '--redis.url', 'redis://127.0.0.1:1']);
  const exited = new Promise<number | null>((resolve) => qs.proc.once('exit', resolve));
  const timer = setTimeout(() => void qs.stop(), STARTED_MS);
  try {
    assert.equal(await exited, 78, `stderr: ${qs.stderr()}`);
  } finally {
    clearTimeout(timer);
    await qs.stop();
  }
  assert.match(qs.stderr(), /quota_service\.token: required when quota_service\.listen \(0\.0\.0\.0:0\) is not on loopback/);
  assert.match(qs.stderr(), /POST \/invalidate/);
});
