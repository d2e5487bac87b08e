/*
 * String generators shared by the text targets: the characters that matter to an MTA, a file
 * system, a log line or one of our parsers, mixed with anything else Unicode has (lone surrogates
 * included, which fast-check's own units leave out).
 * Must never: grow into a target of its own; properties live in the targets.
 */
import fc from 'fast-check';

/** Each one breaks, or once broke, something somewhere: framing, paths, look-alikes, case folding, NFKC. */
export const SPECIAL_CHARS = [
  '\0', '\r', '\n', '\r\n', '\t', ' ', '\x0b', '\x1b', '\x7f', '\x85', '\u00a0', '\u2028', '\u2029', '\u200b', '\u202e', '\ufeff',
  '.', '..', '/', '\\', '@', '+', '-', '_', '%', '%%', '<', '>', '"', '=', '{', '}', ':', ';', ',', '*', '?', '~', '$',
  '\ufffd', '\ud800', '\udfff', '\ud83d\ude00', 'é', 'e\u0301', 'İ', 'ß', 'ﬁ', 'Ω', '\u0130\u0130',
  '\u2215', '\u2044', '\uff0f', '\uff3c', '\uff0e', '\u2024', '\u2025', '\u2026', '\u3002', '\u2488', '\u0338',
];

/** One unit of text: mostly ASCII (controls included), often a special, sometimes any code point. */
export const anyChar: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 1 }) },
  { weight: 3, arbitrary: fc.constantFrom(...SPECIAL_CHARS) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
);

/** Text built from `pieces` (default anyChar), up to `maxLength` pieces. */
export function textOf(maxLength: number, pieces: fc.Arbitrary<string> = anyChar): fc.Arbitrary<string> {
  return fc.array(pieces, { maxLength, size: 'medium' }).map((p) => p.join(''));
}

/** Text about `bytes` UTF-8 bytes long, to cross a byte bound at every alignment (ASCII, 2-, 3- and 4-byte characters, '%'). */
export function nearBound(bytes: number): fc.Arbitrary<string> {
  return fc
    .tuple(textOf(2), fc.constantFrom('a', 'é', '€', '😀', '%'), fc.integer({ min: -8, max: 8 }), textOf(4))
    .map(([head, ch, skew, tail]) => head + ch.repeat(Math.max(0, Math.ceil((bytes + skew) / Buffer.byteLength(ch)))) + tail);
}
