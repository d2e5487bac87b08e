/*
 * One milter conversation: negotiation, macros per stage, the envelope, and a reply per command.
 *
 * The MTA drives; we answer only what needs an answer. We ask to skip every step we do not use
 * (HELO, headers, EOH, body, UNKNOWN; DATA is answered, see SKIP), not to be answered where the
 * protocol allows (connect, MAIL), and, in v6, for the macros we log ("i", the queue id). Each returned bit is a subset of
 * what the MTA offered (Postfix: "request mask conflict"; Sendmail refuses the filter).
 * MTA quirks handled here: Postfix sends macros for steps we skipped, empty macro lists, and
 * several ABORTs in a row; Sendmail may send no ABORT after an accepted message; QUIT_NC keeps
 * the socket for a new connection.
 * Macros are kept for the known stages only, within MAX_MACROS and MAX_MACRO_BYTES per connection:
 * past them the session throws MACROS_OVER_LIMIT (the server drops the connection and logs it).
 * Each message (MAIL to end of message) is one transaction for reservations (cache/
 * reservations.ts): its accepted recipients count against their mailboxes until stored; at end of
 * message they take the real size ({msg_size}, where the MTA sends it: Sendmail does); a message
 * aborted before its end, or a connection lost in the middle of one, gives them up.
 *
 * Speed (bench/milter-wire.ts: 50 connections, warm cache, frontend and load client on a core
 * each): each stage's MACRO packet is kept as it came and read in place when a macro is asked
 * for; CONTINUE and "no reply" are shared constant outputs; only RCPT returns a promise. Before,
 * every macro list was decoded into a map, each CONTINUE a new packet, each packet a promise:
 * ~45 µs of frontend CPU per transaction against ~36 µs now, 21,600 against 25,000-29,000
 * transactions/s (most of what is left is the kernel's write(2) of each reply).
 */
import { Action, Cmd, MACRO_STAGES, MAX_MACRO_BYTES, MAX_MACROS, MAX_VERSION, MIN_VERSION, Proto, Stage } from './constants.js';
import { countMacros, decodeConnect, decodeOptneg, encodeOptneg, findMacro, firstString, MilterProtocolError, splitStrings, type ConnectInfo, type OptionNegotiation, type Packet } from './codec.js';
import { CONTINUE_PACKET, encodeRcptReply, rcptReplyFor, type RcptReply } from './render.js';
import type { Reply } from '../../core/replies.js';

/**
 * Steps we never use. DATA is not among them, and is answered: with DATA skipped, Postfix still
 * sends the DATA macros as a lone packet nobody answers, and its next write (end of message) then
 * waits for our delayed TCP ACK (Nagle): 40 ms per message, measured (BENCHMARKS.md, milter).
 */
const SKIP = Proto.NOHELO | Proto.NOHDRS | Proto.NOEOH | Proto.NOBODY | Proto.NOUNKNOWN;
/** Steps we see but never answer (v6): CONNECT and MAIL only feed the log and the size. */
const NO_REPLY = Proto.NR_CONN | Proto.NR_MAIL | Proto.NR_HELO | Proto.NR_HDR | Proto.NR_EOH | Proto.NR_BODY | Proto.NR_UNKN;
/** Macros wanted through the v6 symbol list. */
const SYMBOLS = new Map<number, string>([
  [Stage.ENVFROM, 'i'],
  [Stage.ENVRCPT, 'i {rcpt_mailer}'],
  [Stage.EOM, 'i {msg_size}'],
]);

/** Stage order: a command clears the macros of the stages after it. */
const STAGES: readonly string[] = MACRO_STAGES;
/** Index in STAGES of each command code; -1 for a code that is no stage. */
const STAGE_INDEX = new Int8Array(256).fill(-1);
STAGES.forEach((stage, i) => (STAGE_INDEX[stage.charCodeAt(0)] = i));

/** One stage's MACRO packet as it came (its list, after the code, read in place: codec.ts findMacro) and how many macros it holds. */
interface StageMacros {
  data: Buffer;
  count: number;
}

export interface RcptContext {
  queueId: string | undefined;
  client: ConnectInfo | null;
  sender: string | undefined;
  size: number;
  /** The message's transaction, unique in this process (reservations). */
  txn: string;
}

/** What a session tells the decision core about a message besides its recipients. */
export interface MessageEvents {
  /** The message ended and is `bytes` long. */
  messageSize(txn: string, bytes: number): void;
  /** The message will not be delivered (aborted before its end, connection lost). */
  giveUp(txn: string): void;
}

/** Sessions in this process, for transaction names. */
let sessions = 0;
/**
 * Transaction names are unique on this host across processes and restarts, like Postfix's
 * instance (smtpd's pid and a time): reservations in Redis are named HOST/TXN, and two milter
 * frontends on one host (or one restarted within reservations.ttl) must not take each other's
 * reservation for their own, nor release it at an ABORT.
 */
const PROCESS_TAG = `${process.pid.toString(36)}.${Date.now().toString(36)}`;

/** Decides one recipient; returns its reply (core/replies.ts), rendered here. Must not throw. */
export type RcptDecider = (recipient: string, ctx: RcptContext) => Reply | Promise<Reply>;

export type SessionOutput = Readonly<{ reply: Buffer | null; close?: boolean; note?: string }>;

/** The outputs of most packets, shared: nothing is allocated for them. */
const NOTHING: SessionOutput = Object.freeze({ reply: null });
const CONTINUE: SessionOutput = Object.freeze({ reply: CONTINUE_PACKET });

export class MilterSession {
  private negotiated: OptionNegotiation | null = null;
  /** By stage index (STAGES); with their totals, for MAX_MACROS and MAX_MACRO_BYTES. */
  private readonly macros: (StageMacros | undefined)[] = STAGES.map(() => undefined);
  private macroCount = 0;
  private macroBytes = 0;
  private client: ConnectInfo | null = null;
  private sender: string | undefined;
  private size = 0;
  /** "m<session>.<message>" from MAIL until the message ends or is given up; null outside one. */
  private txn: string | null = null;
  private readonly id = ++sessions;
  private messages = 0;

  constructor(
    private readonly decide: RcptDecider,
    private readonly events: MessageEvents | null = null,
  ) {}

  get version(): number | null {
    return this.negotiated?.version ?? null;
  }

  /**
   * The answer to one packet. Only a RCPT whose mailbox is not in the memory tier waits (for its
   * decision): every other packet is answered at once, without a promise, so the server need not
   * wait a turn for it.
   */
  handle(p: Packet): SessionOutput | Promise<SessionOutput> {
    if (p.command === Cmd.OPTNEG) return { reply: this.negotiate(p.data) };
    if (!this.negotiated) throw new MilterProtocolError('OUT_OF_ORDER', `command ${JSON.stringify(p.command)} before option negotiation`);
    switch (p.command) {
      case Cmd.MACRO:
        this.keepMacros(p.data);
        return NOTHING;
      case Cmd.CONNECT:
        this.client = decodeConnect(p.data);
        this.clearAfter(Cmd.CONNECT);
        return this.ack(Proto.NR_CONN);
      case Cmd.HELO:
        this.clearAfter(Cmd.HELO);
        return this.ack(Proto.NR_HELO);
      case Cmd.MAIL: {
        const [from, ...args] = splitStrings(p.data);
        this.giveUpMessage();
        this.sender = from;
        this.size = sizeArgument(args);
        this.txn = `m${PROCESS_TAG}.${this.id}.${++this.messages}`;
        this.clearAfter(Cmd.MAIL);
        return this.ack(Proto.NR_MAIL);
      }
      case Cmd.RCPT:
        return this.rcpt(p.data);
      case Cmd.DATA:
        return this.ack(Proto.NR_DATA);
      case Cmd.HEADER:
        return this.ack(Proto.NR_HDR);
      case Cmd.EOH:
        return this.ack(Proto.NR_EOH);
      case Cmd.BODY:
        return this.ack(Proto.NR_BODY);
      case Cmd.UNKNOWN:
        return this.ack(Proto.NR_UNKN);
      case Cmd.BODYEOB: {
        // End of message: nothing to change; continue here means accept.
        const size = Number(this.macro('{msg_size}'));
        if (this.txn !== null && Number.isSafeInteger(size) && size > 0) this.events?.messageSize(this.txn, size);
        this.txn = null;
        this.resetMessage();
        return CONTINUE;
      }
      case Cmd.ABORT:
        this.giveUpMessage();
        this.resetMessage();
        return NOTHING;
      case Cmd.QUIT_NC:
        this.giveUpMessage();
        this.clearAfter(null);
        this.client = null;
        this.resetMessage();
        return NOTHING;
      case Cmd.QUIT:
        this.giveUpMessage();
        return { reply: null, close: true };
      default:
        throw new MilterProtocolError('UNKNOWN_COMMAND', `unknown command byte 0x${p.command.charCodeAt(0).toString(16).padStart(2, '0')}`);
    }
  }

  private negotiate(data: Buffer): Buffer {
    const offer = decodeOptneg(data);
    if (offer.version < MIN_VERSION) {
      throw new MilterProtocolError('MALFORMED_PACKET', `the MTA speaks milter version ${offer.version}; at least ${MIN_VERSION} is needed`);
    }
    const version = Math.min(MAX_VERSION, offer.version);
    const withSymbols = version >= 6 && (offer.actions & Action.SETSYMLIST) !== 0;
    this.negotiated = {
      version,
      actions: withSymbols ? Action.SETSYMLIST : 0,
      protocol: (SKIP | (version >= 6 ? NO_REPLY : 0)) & offer.protocol,
    };
    return encodeOptneg(this.negotiated, withSymbols ? SYMBOLS : new Map());
  }

  /** Continue, unless the MTA agreed not to wait for an answer to this step. */
  private ack(noReplyBit: number): SessionOutput {
    return this.negotiated!.protocol & noReplyBit ? NOTHING : CONTINUE;
  }

  private rcpt(data: Buffer): SessionOutput | Promise<SessionOutput> {
    this.clearAfter(Cmd.RCPT);
    const recipient = firstString(data);
    // With RCPT_REJ (we do not ask for it) Postfix also shows recipients it already refused.
    if (this.macro('{rcpt_mailer}') === 'error') return CONTINUE;
    // A RCPT outside MAIL..end (Sendmail after an early accept) still gets a transaction of its own.
    this.txn ??= `m${PROCESS_TAG}.${this.id}.${++this.messages}`;
    const decided = this.decide(recipient, { queueId: this.macro('i'), client: this.client, sender: this.sender, size: this.size, txn: this.txn });
    return decided instanceof Promise ? decided.then(rcptOutput) : rcptOutput(decided);
  }

  /** Keeps a MACRO packet in place of its stage's last one, within the bounds. */
  private keepMacros(data: Buffer): void {
    if (data.length === 0) throw new MilterProtocolError('MALFORMED_PACKET', 'MACRO packet without a command code');
    const i = STAGE_INDEX[data[0]!]!;
    if (i < 0) return;
    const stage = STAGES[i]!;
    const last = this.macros[i];
    // The byte bound first: it also bounds the counting.
    const bytes = this.macroBytes - (last ? last.data.length - 1 : 0) + data.length - 1;
    if (bytes > MAX_MACRO_BYTES) throw macrosOverLimit(stage, `${bytes} bytes`);
    const kept = { data, count: countMacros(data, 1) };
    const count = this.macroCount - (last?.count ?? 0) + kept.count;
    if (count > MAX_MACROS) throw macrosOverLimit(stage, `${count} macros`);
    this.macros[i] = kept;
    this.macroBytes = bytes;
    this.macroCount = count;
  }

  /** A macro's value: the latest stage that has it wins. */
  private macro(name: string): string | undefined {
    for (let i = STAGES.length - 1; i >= 0; i--) {
      const m = this.macros[i];
      const v = m && findMacro(m.data, name, 1);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** Forgets the macros of the stages after this command's (all of them for null). */
  private clearAfter(command: string | null): void {
    for (let i = command === null ? 0 : STAGE_INDEX[command.charCodeAt(0)]! + 1; i < STAGES.length; i++) {
      const m = this.macros[i];
      if (!m) continue;
      this.macroBytes -= m.data.length - 1;
      this.macroCount -= m.count;
      this.macros[i] = undefined;
    }
  }

  /**
   * The connection ended (or the message was aborted) before the message's end: what its
   * recipients reserved will not arrive. The server calls this when the socket closes.
   */
  giveUpMessage(): void {
    if (this.txn === null) return;
    this.events?.giveUp(this.txn);
    this.txn = null;
  }

  /** Back to "after HELO": connection macros and client info stay for the next message. */
  private resetMessage(): void {
    this.sender = undefined;
    this.size = 0;
    this.clearAfter(Cmd.HELO);
  }
}

function rcptOutput(decided: Reply): SessionOutput {
  const reply: RcptReply = rcptReplyFor(decided);
  return { reply: encodeRcptReply(reply), note: reply.kind === 'continue' ? reply.note : undefined };
}

function macrosOverLimit(stage: string, what: string): MilterProtocolError {
  return new MilterProtocolError('MACROS_OVER_LIMIT', `macros for stage ${JSON.stringify(stage)} bring this connection to ${what}, over the limit of ${MAX_MACROS} macros or ${MAX_MACRO_BYTES} bytes`);
}

/** The ESMTP SIZE= of MAIL FROM, 0 when absent or not a number. */
export function sizeArgument(args: string[]): number {
  for (const a of args) {
    const m = /^SIZE=(\d{1,15})$/i.exec(a.trim());
    if (m) return Number(m[1]);
  }
  return 0;
}
