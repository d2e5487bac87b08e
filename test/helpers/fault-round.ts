/*
 * Test helper for the fault matrix: send a round of policy requests to a running frontend, as
 * Postfix does (a few persistent connections, one request at a time on each), time each answer,
 * and list what a mail admin would call wrong: no answer, a closed connection, a 5XX, an answer
 * that is neither the right one nor the configured on_error one, or one later than the bound.
 *
 * Also the settings the matrix's files share: budgets, the distinct on_error reply, the full and
 * roomy mailboxes and their right answers. It must never hang a test: an answer not come within
 * `giveUpMs` is recorded as missing.
 */
import { PolicyClient, rcpt } from './policy-client.js';
import type { Running } from './overquota.js';

export interface Ask {
  recipient: string;
  /** The answers allowed: the right one and/or the on_error one. */
  allowed: string[];
  /** More request attributes (instance, size); a function is called for each request sent. */
  extra?: Record<string, string | number> | (() => Record<string, string | number>);
}

export interface Answered {
  recipient: string;
  allowed: string[];
  /** The action, or null when none came. */
  reply: string | null;
  /** Why there was no reply (the connection closed, or nothing within giveUpMs). */
  failure?: string;
  ms: number;
}

export interface RoundOptions {
  /** Connections used at once; each sends every ask, in order. */
  connections: number;
  /** An answer later than this is "missing". */
  giveUpMs: number;
}

/** A sequence number for `instance`, so each ask is its own transaction (reservations). */
let instances = 0;
export const nextInstance = (): string => `fault.${process.pid}.${++instances}`;

export async function askRound(listener: string, asks: Ask[], o: RoundOptions): Promise<Answered[]> {
  const results: Answered[] = [];
  await Promise.all(
    Array.from({ length: o.connections }, async () => {
      let client: PolicyClient | null = null;
      for (const ask of asks) {
        const started = performance.now();
        const answered = (reply: string | null, failure?: string): void => {
          results.push({ recipient: ask.recipient, allowed: ask.allowed, reply, ms: Math.round(performance.now() - started), ...(failure ? { failure } : {}) });
        };
        try {
          client ??= await PolicyClient.connect(listener);
          const extra = typeof ask.extra === 'function' ? ask.extra() : ask.extra;
          answered(await withGiveUp(client.ask(rcpt(ask.recipient, extra)), o.giveUpMs));
        } catch (err) {
          answered(null, (err as Error).message);
          client?.close();
          client = null;
        }
      }
      client?.close();
    }),
  );
  return results;
}

function withGiveUp<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Postfix reads a reply starting 5XX (or REJECT) as a permanent refusal. */
const PERMANENT = /^(5\d\d|REJECT)\b/i;

/** What is wrong with a round, one readable line each (empty: all good). */
export function problemsOf(answers: Answered[], boundMs: number): string[] {
  const problems: string[] = [];
  for (const a of answers) {
    const who = `${a.recipient} after ${a.ms} ms`;
    if (a.reply === null) problems.push(`${who}: no answer (${a.failure})`);
    else if (PERMANENT.test(a.reply)) problems.push(`${who}: permanent refusal "${a.reply}"`);
    else if (!a.allowed.includes(a.reply)) problems.push(`${who}: "${a.reply}", expected one of ${JSON.stringify(a.allowed)}`);
    if (a.reply !== null && a.ms > boundMs) problems.push(`${who}: later than ${boundMs} ms`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// The matrix's common settings: short bounds keep the whole matrix well under a minute.

/** The frontends' latency_budget in the matrix. */
export const BUDGET_MS = 1000;
/** Their source.timeout: under the budget, so a dead source is given up on before it. */
export const SOURCE_TIMEOUT_MS = 800;
/**
 * Allowed lateness beyond the budget, as the test measures it (connect, the client's own turn,
 * two cores shared with other test runs). Generous on purpose: the bug this bound catches is a
 * session held for the source's 5 s, or forever, not a few milliseconds.
 */
export const SLACK_MS = 500;
export const BOUND_MS = BUDGET_MS + SLACK_MS;
/** Missing, not just late. */
export const GIVE_UP_MS = BUDGET_MS + 5000;

/** A distinct on_error reply: any answer given because of our trouble shows up as this text. */
export const ON_ERROR = '451 4.3.0 overquota trouble';
export const FULL = '452 4.2.2 Mailbox full, try again later';
export const ROOM = 'DUNNO';

/** Every mailbox's limit; "full..." mailboxes are past it, "room..." ones far below. */
export const LIMIT_BYTES = 65536;
export const FULL_USAGE = 70000;
export const ROOM_USAGE = 1000;

/** The right answer for a mailbox as the seed's quota.cgi (and our quota service) words it. */
export function rightText(user: string): string {
  return user.startsWith('full') ? `OVERQUOTA ${user} ${FULL_USAGE} ${LIMIT_BYTES}\n` : `OK ${user} ${ROOM_USAGE} ${LIMIT_BYTES}\n`;
}

/** A frontend's flags in the matrix, before the source's. */
export function matrixFrontendArgs(extra: string[]): string[] {
  return [
    '--policy.listen', 'inet:127.0.0.1:0',
    '--replies.on_error', ON_ERROR,
    '--latency_budget', `${BUDGET_MS}ms`,
    '--source.timeout', `${SOURCE_TIMEOUT_MS}ms`,
    ...extra,
  ];
}

/** Full, room, full at `domain` (each connection of a round sends all three), each allowed the answers given. */
export function fullAndRoom(domain: string, allowed: { full: string[]; room: string[] }, extra?: () => Record<string, string | number>): Ask[] {
  const ask = (local: 'full' | 'room'): Ask => ({ recipient: `${local}@${domain}`, allowed: allowed[local], ...(extra ? { extra } : {}) });
  return [ask('full'), ask('room'), ask('full')];
}

/**
 * The frontend's decision lines about `recipients` decided at `since` (epoch ms) or later, once
 * there are `count` of them: lines are written up to 50 ms after the answer, so an earlier
 * round's may still arrive; their own time tells them apart.
 */
export async function decisionsSince(fe: Running, since: number, recipients: string[], count: number): Promise<Record<string, unknown>[]> {
  const by = Date.now() + 2000;
  for (;;) {
    const lines = fe.logs.filter((l) => l.msg === 'decision' && Number(l.time) >= since && recipients.includes(String(l.recipient)));
    if (lines.length >= count || Date.now() > by) return lines;
    await new Promise((r) => setTimeout(r, 20));
  }
}
