/*
 * Builds milter packets as an MTA sends them, for codec and session tests.
 */
import { encodePacket } from '../../src/faces/milter/codec.js';

export function optneg(version = 6, actions = 0x1ff, protocol = 0x1fffff): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32BE(version, 0);
  b.writeUInt32BE(actions, 4);
  b.writeUInt32BE(protocol, 8);
  return encodePacket('O', b);
}

export const strings = (...s: string[]) => Buffer.from(s.map((x) => `${x}\0`).join(''), 'utf8');

export const macro = (stage: string, ...pairs: string[]) => encodePacket('D', Buffer.concat([Buffer.from(stage, 'latin1'), strings(...pairs)]));

export function connect(host = 'client.example.org', address = '192.0.2.10', port = 40000): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port, 0);
  return encodePacket('C', Buffer.concat([strings(host), Buffer.from('4'), p, strings(address)]));
}

export const helo = (name = 'client.example.org') => encodePacket('H', strings(name));
export const mail = (from: string, ...args: string[]) => encodePacket('M', strings(from, ...args));
export const rcpt = (to: string, ...args: string[]) => encodePacket('R', strings(to, ...args));
export const abort = () => encodePacket('A');
export const quit = () => encodePacket('Q');
export const quitNc = () => encodePacket('K');
export const eob = () => encodePacket('E');
