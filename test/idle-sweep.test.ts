/*
 * The idle sweep of the policy and milter listeners (runtime/idle.ts): a connection that owes
 * nothing is closed once its idle_timeout has passed, one that owes a reply never is, and an
 * idle_timeout of 0 closes nothing (as socket.setTimeout(0) did for the milter before the sweep).
 * The faces' own tests show it on real connections (policy-server, milter-server).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { IdleSweep, type IdleEntry } from '../src/runtime/idle.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Two connections read from once, at the start: one idle, one waiting for its answer. */
function watch(timeoutMs: number) {
  const live = new Map<net.Socket, IdleEntry>();
  const [idle, owing] = [{ name: 'idle' } as unknown as net.Socket, { name: 'owing' } as unknown as net.Socket];
  const closed: net.Socket[] = [];
  const sweep = new IdleSweep(timeoutMs, live, (s) => s !== owing, (s) => (closed.push(s), live.delete(s)));
  live.set(idle, { lastTick: sweep.now });
  live.set(owing, { lastTick: sweep.now });
  return { sweep, closed, idle };
}

test('an idle connection is closed after its timeout; one that owes a reply is not', async () => {
  const { sweep, closed, idle } = watch(50);
  await sleep(400);
  sweep.stop();
  assert.deepEqual(closed, [idle]);
});

test('idle_timeout 0 closes nothing', async () => {
  const { sweep, closed } = watch(0);
  await sleep(200);
  sweep.stop();
  assert.deepEqual(closed, []);
});
