/*
 * Milter protocol numbers (Sendmail's libmilter mfdef.h), named as there. Protocol versions 2 to 6.
 */

/** MTA -> milter commands. */
export const Cmd = {
  ABORT: 'A',
  BODY: 'B',
  CONNECT: 'C',
  MACRO: 'D',
  BODYEOB: 'E',
  HELO: 'H',
  QUIT_NC: 'K',
  HEADER: 'L',
  MAIL: 'M',
  EOH: 'N',
  OPTNEG: 'O',
  QUIT: 'Q',
  RCPT: 'R',
  DATA: 'T',
  UNKNOWN: 'U',
} as const;

/** milter -> MTA replies. */
export const Reply = {
  ACCEPT: 'a',
  CONTINUE: 'c',
  DISCARD: 'd',
  REJECT: 'r',
  TEMPFAIL: 't',
  REPLYCODE: 'y',
  OPTNEG: 'O',
} as const;

/** Actions the milter may take (SMFIF_*). */
export const Action = {
  ADDHDRS: 0x1,
  CHGBODY: 0x2,
  ADDRCPT: 0x4,
  DELRCPT: 0x8,
  CHGHDRS: 0x10,
  QUARANTINE: 0x20,
  CHGFROM: 0x40,
  ADDRCPT_PAR: 0x80,
  SETSYMLIST: 0x100,
} as const;

/** Protocol steps the milter can skip or not answer (SMFIP_*). */
export const Proto = {
  NOCONNECT: 0x1,
  NOHELO: 0x2,
  NOMAIL: 0x4,
  NORCPT: 0x8,
  NOBODY: 0x10,
  NOHDRS: 0x20,
  NOEOH: 0x40,
  NR_HDR: 0x80,
  NOUNKNOWN: 0x100,
  NODATA: 0x200,
  SKIP: 0x400,
  RCPT_REJ: 0x800,
  NR_CONN: 0x1000,
  NR_HELO: 0x2000,
  NR_MAIL: 0x4000,
  NR_RCPT: 0x8000,
  NR_DATA: 0x10000,
  NR_UNKN: 0x20000,
  NR_EOH: 0x40000,
  NR_BODY: 0x80000,
  HDR_LEADSPC: 0x100000,
} as const;

/** Macro stages of the v6 symbol list (SMFIM_*). */
export const Stage = { CONNECT: 0, HELO: 1, ENVFROM: 2, ENVRCPT: 3, DATA: 4, EOM: 5, EOH: 6 } as const;

export const MIN_VERSION = 2;
export const MAX_VERSION = 6;

/** libmilter's default data limit (MILTER_MAX_DATA_SIZE); we never negotiate the 256K/1M sizes. */
export const MAX_DATA_SIZE = 65535;

/**
 * Macro stages kept, in protocol order: the command codes libmilter accepts macros for (engine.c
 * st_macros: CONNECT, HELO, MAIL, RCPT, DATA, EOH, end of message). Macros for any other code
 * (Postfix has milter_unknown_command_macros) are accepted and not kept.
 */
export const MACRO_STAGES = ['C', 'H', 'M', 'R', 'T', 'N', 'E'] as const;

/**
 * Macros one connection may hold, over all kept stages (each stage's list replaces the last one,
 * as in libmilter). Postfix's defaults send about 20 short macros per session, Sendmail's about
 * 25, a few hundred bytes with TLS certificate names. Past either bound the MTA is not an MTA:
 * the connection is dropped and logged. Without a bound, one connection of tiny macros under 256
 * stage codes held 135-152 MB, and 24 of them ran the frontend out of heap (issue 11).
 */
export const MAX_MACROS = 256;
/** Bytes of macro data (names, values, their NULs) one connection may hold (see MAX_MACROS). */
export const MAX_MACRO_BYTES = 32 * 1024;
