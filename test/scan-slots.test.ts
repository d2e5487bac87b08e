/*
 * The bound on Maildir recounts at once: a scan beyond it waits for a slot (first come, first
 * served), never is refused; a waiter whose caller gives up leaves the queue without taking a slot.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScanSlots } from '../src/stores/maildir/scan-slots.js';
import type { SourceError } from '../src/quota.js';

const live = () => new AbortController().signal;

test('at most max scans run at once; the others wait and all finish, in the order they came', async () => {
  const slots = new ScanSlots(2);
  let running = 0;
  let most = 0;
  const started: number[] = [];
  const releases: (() => void)[] = [];
  const runs = Array.from({ length: 6 }, (_, i) =>
    slots.run(live(), async (waited) => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await new Promise<void>((r) => releases.push(r));
      running--;
      return waited;
    }),
  );
  while (releases.length < 2) await new Promise((r) => setImmediate(r));
  assert.deepEqual(slots.busy, { running: 2, waiting: 4 });
  while (started.length < 6) {
    releases.shift()?.();
    await new Promise((r) => setImmediate(r));
  }
  for (const r of releases) r();
  assert.deepEqual(await Promise.all(runs), [false, false, true, true, true, true]);
  assert.deepEqual(started, [0, 1, 2, 3, 4, 5]);
  assert.equal(most, 2);
  assert.deepEqual(slots.busy, { running: 0, waiting: 0 });
});

test('a waiter whose caller gives up leaves with SOURCE_TIMEOUT and takes no slot', async () => {
  const slots = new ScanSlots(1);
  let release!: () => void;
  const first = slots.run(live(), () => new Promise<void>((r) => (release = r)));
  const impatient = new AbortController();
  const gaveUp = slots.run(impatient.signal, async () => 'ran');
  const patient = slots.run(live(), async () => 'ran');
  impatient.abort();
  await assert.rejects(gaveUp, (e: SourceError) => e.code === 'SOURCE_TIMEOUT');
  assert.deepEqual(slots.busy, { running: 1, waiting: 1 });
  release();
  await first;
  assert.equal(await patient, 'ran');
  assert.deepEqual(slots.busy, { running: 0, waiting: 0 });
});
