/*
 * Our own trouble while answering (a handler that throws or rejects, an answer that cannot be
 * rendered) must drop only that connection, with a log line, never leave it waiting for an answer
 * that cannot come (Postfix would wait out its 100 s timeout). Real sockets, in-process server.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { startPolicyServer, type RunningPolicyServer } from '../src/faces/policy/server.js';
import { parseListenAddress, type ListenAddress } from '../src/config/listen.js';
import type { PolicyHandler } from '../src/faces/policy/connection.js';
import type { PolicyRequest } from '../src/faces/policy/codec.js';
import { PolicyClient, rcpt } from './helpers/policy-client.js';

const servers: RunningPolicyServer[] = [];
const clients: PolicyClient[] = [];
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
});

/** A server whose answer for each recipient is given by `answer`; returns it and its log lines. */
async function serverAnswering(answer: (recipient: string) => string | Promise<string>) {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  const handle: PolicyHandler = (request: PolicyRequest) => answer(request.get('recipient') ?? '');
  const server = await startPolicyServer({
    listeners: [parseListenAddress('inet:127.0.0.1:0') as ListenAddress],
    socketMode: 0o666,
    idleTimeoutMs: 600_000,
    limits: { maxLineLength: 2048, maxAttributes: 100, maxRequestSize: 65536 },
    handle,
    logger,
    shutdownGraceMs: 1000,
  });
  servers.push(server);
  const connect = async () => {
    const c = await PolicyClient.connect(server.addresses[0]!);
    clients.push(c);
    return c;
  };
  return { lines, connect };
}

/** Throws, rejects, or answers with a reply that cannot be rendered, by recipient. */
const troubled = (recipient: string): string | Promise<string> => {
  if (recipient === 'throws@x') throw new Error('handler bug (sync)');
  if (recipient === 'rejects@x') return new Promise((_, reject) => setTimeout(() => reject(new Error('handler bug (async)')), 20));
  if (recipient === 'unrenderable@x') return Promise.resolve(Symbol('not an action') as unknown as string);
  return recipient === 'slow@x' ? new Promise((resolve) => setTimeout(() => resolve('DUNNO'), 20)) : 'DUNNO';
};

for (const recipient of ['throws@x', 'rejects@x', 'unrenderable@x']) {
  test(`a handler in trouble (${recipient}) drops that connection without a reply, logs an error, and others go on`, async () => {
    const { lines, connect } = await serverAnswering(troubled);
    const good = await connect();
    const bad = await connect();
    assert.equal(await good.ask(rcpt('slow@x')), 'DUNNO');
    await assert.rejects(bad.ask(rcpt(recipient)), /closed the connection without a reply/);
    const logged = lines.find((l) => l.level === 50 && /connection dropped without a reply/.test(String(l.msg)));
    assert.ok(logged, JSON.stringify(lines));
    assert.equal(await good.ask(rcpt('someone@x')), 'DUNNO');
  });
}

test('trouble with a pipelined request drops the connection after the answers before it', async () => {
  const { lines, connect } = await serverAnswering(troubled);
  const c = await connect();
  const received: string[] = [];
  c.socket.on('data', (d: string) => received.push(d));
  const body = (r: string) => Object.entries(rcpt(r)).map(([k, v]) => `${k}=${v}\n`).join('') + '\n';
  c.socket.write(body('slow@x') + body('rejects@x') + body('slow@x'));
  await c.closed;
  assert.equal(received.join(''), 'action=DUNNO\n\n');
  assert.ok(lines.some((l) => l.level === 50));
});
