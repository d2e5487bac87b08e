/*
 * One milter conversation: negotiation, macros per stage, the envelope, and a reply per command.
 *
 * The MTA drives; we answer only what needs an answer. We ask to skip every step we do not use
 * (HELO, headers, EOH, body, DATA, UNKNOWN), not to be answered where the protocol allows (connect,
 * MAIL), and, in v6, for the macros we log ("i", the queue id). Each returned bit is a subset of
 * what the MTA offered (Postfix: "request mask conflict"; Sendmail refuses the filter).
 * MTA quirks handled here: Postfix sends macros for steps we skipped, empty macro lists, and
 * several ABORTs in a row; Sendmail may send no ABORT after an accepted message; QUIT_NC keeps
 * the socket for a new connection.
 */
import { Action, Cmd, MAX_VERSION, MIN_VERSION, Proto, Reply, Stage } from './constants.js';
import {
  decodeConnect,
  decodeMacros,
  decodeOptneg,
  encodeOptneg,
  encodePacket,
  MilterProtocolError,
  splitStrings,
  type ConnectInfo,
  type OptionNegotiation,
  type Packet,
} from './codec.js';
import { encodeRcptReply, rcptReplyFor, type RcptReply } from './reply.js';

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
]);

/** Stage order: a command clears the macros of the stages after it. */
const STAGES = ['C', 'H', 'M', 'R', 'T', 'L', 'N', 'B', 'E'];

export interface RcptContext {
  queueId: string | undefined;
  client: ConnectInfo | null;
  sender: string | undefined;
  size: number;
}

/** Decides one recipient; returns the action in Postfix access(5) words. Must not throw. */
export type RcptDecider = (recipient: string, ctx: RcptContext) => Promise<string>;

export type SessionOutput = { reply: Buffer | null; close?: boolean; note?: string };

export class MilterSession {
  private negotiated: OptionNegotiation | null = null;
  private readonly macros = new Map<string, Map<string, string>>();
  private client: ConnectInfo | null = null;
  private sender: string | undefined;
  private size = 0;

  constructor(private readonly decide: RcptDecider) {}

  get version(): number | null {
    return this.negotiated?.version ?? null;
  }

  async handle(p: Packet): Promise<SessionOutput> {
    if (p.command === Cmd.OPTNEG) return { reply: this.negotiate(p.data) };
    if (!this.negotiated) throw new MilterProtocolError('OUT_OF_ORDER', `command ${JSON.stringify(p.command)} before option negotiation`);
    switch (p.command) {
      case Cmd.MACRO: {
        const { stage, macros } = decodeMacros(p.data);
        this.macros.set(stage, macros);
        return { reply: null };
      }
      case Cmd.CONNECT:
        this.client = decodeConnect(p.data);
        this.clearAfter('C');
        return this.ack(Proto.NR_CONN);
      case Cmd.HELO:
        this.clearAfter('H');
        return this.ack(Proto.NR_HELO);
      case Cmd.MAIL: {
        const [from, ...args] = splitStrings(p.data);
        this.sender = from;
        this.size = sizeArgument(args);
        this.clearAfter('M');
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
      case Cmd.BODYEOB:
        // End of message: nothing to change; continue here means accept.
        this.resetMessage();
        return { reply: encodePacket(Reply.CONTINUE) };
      case Cmd.ABORT:
        this.resetMessage();
        return { reply: null };
      case Cmd.QUIT_NC:
        this.macros.clear();
        this.client = null;
        this.resetMessage();
        return { reply: null };
      case Cmd.QUIT:
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
    if (this.negotiated!.protocol & noReplyBit) return { reply: null };
    return { reply: encodePacket(Reply.CONTINUE) };
  }

  private async rcpt(data: Buffer): Promise<SessionOutput> {
    this.clearAfter('R');
    const [recipient = ''] = splitStrings(data);
    // With RCPT_REJ (we do not ask for it) Postfix also shows recipients it already refused.
    if (this.macro('{rcpt_mailer}') === 'error') return { reply: encodePacket(Reply.CONTINUE) };
    const action = await this.decide(recipient, { queueId: this.macro('i'), client: this.client, sender: this.sender, size: this.size });
    const reply: RcptReply = rcptReplyFor(action);
    return { reply: encodeRcptReply(reply), note: reply.kind === 'continue' ? reply.note : undefined };
  }

  private macro(name: string): string | undefined {
    for (let i = STAGES.length - 1; i >= 0; i--) {
      const v = this.macros.get(STAGES[i]!)?.get(name);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  private clearAfter(stage: string): void {
    for (const s of STAGES.slice(STAGES.indexOf(stage) + 1)) this.macros.delete(s);
  }

  /** Back to "after HELO": connection macros and client info stay for the next message. */
  private resetMessage(): void {
    this.sender = undefined;
    this.size = 0;
    for (const s of STAGES.slice(STAGES.indexOf('M'))) this.macros.delete(s);
  }
}

/** The ESMTP SIZE= of MAIL FROM, 0 when absent or not a number. */
export function sizeArgument(args: string[]): number {
  for (const a of args) {
    const m = /^SIZE=(\d{1,15})$/i.exec(a.trim());
    if (m) return Number(m[1]);
  }
  return 0;
}
