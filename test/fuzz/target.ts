/*
 * What a fuzz target is, and its corpus on disk.
 *
 * A target names the code it exercises, generates inputs (fast-check arbitraries), checks the
 * properties every input must keep (throwing on a violation), and writes an input to JSON and
 * back, so that the inputs that once broke a property (crashes, violations, slow inputs) stay in
 * test/fuzz/corpus/<target>/*.json and are replayed first on every run.
 *
 * Must never: write to the corpus on its own (only the long run records, see run.ts), or treat
 * an exception it did not expect as a pass.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Arbitrary } from 'fast-check';

export interface Target<T> {
  name: string;
  /** One line for the run's report: what is exercised. */
  about: string;
  arbitrary: Arbitrary<T>;
  /** Throws when a property is violated (an AssertionError), or lets a crash through. */
  check(input: T): void | Promise<void>;
  toJson(input: T): unknown;
  fromJson(json: unknown): T;
}

/** A target whose input type no longer matters to the runner. */
export type AnyTarget = Target<unknown>;

export function erase<T>(t: Target<T>): AnyTarget {
  return t as unknown as AnyTarget;
}

/** A target whose input is plain JSON already (strings, numbers, records): kept as it is. */
export function jsonTarget<T>(t: Omit<Target<T>, 'toJson' | 'fromJson'>): Target<T> {
  return { ...t, toJson: (i) => i, fromJson: (j) => j as T };
}

export interface CorpusEntry {
  /** Why the input is kept: what it broke, or what it guards. */
  note: string;
  input: unknown;
}

export const CORPUS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus');

export function readCorpus(target: string): { file: string; entry: CorpusEntry }[] {
  const dir = path.join(CORPUS_DIR, target);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  return names.sort().map((n) => {
    const file = path.join(dir, n);
    return { file, entry: JSON.parse(readFileSync(file, 'utf8')) as CorpusEntry };
  });
}

/** Writes one entry; returns its path. The name says why it was kept (crash-, slow-) and the seed. */
export function writeCorpus(target: string, name: string, entry: CorpusEntry): string {
  const dir = path.join(CORPUS_DIR, target);
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  writeFileSync(file, `${JSON.stringify(entry, null, 2)}\n`);
  return file;
}

/*
 * Bytes in the corpus are latin1 text: one character per byte, so protocol text stays readable
 * and every other byte is a \u00XX escape in the JSON. A corpus input may also give its bytes as
 * parts with a repeat count, so a 64 KiB input stays a few lines.
 */
export type BytesJson = string | { text: string; repeat?: number }[];

export function bytesToJson(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
}

export function bytesFromJson(j: BytesJson): Buffer {
  if (typeof j === 'string') return Buffer.from(j, 'latin1');
  return Buffer.concat(j.map((p) => Buffer.from(p.text.repeat(p.repeat ?? 1), 'latin1')));
}

/** A decoder target's input: bytes (as latin1 text in JSON), how to cut them, and its own limits. */
export interface BytesInput {
  bytes: Buffer;
  cuts: number[];
  /** Feed a byte at a time whatever the size (corpus inputs too large for that by default). */
  bytewise?: boolean;
}

/** A decoder target: its input's bytes written as latin1 text, everything else as it is. */
export function bytesTarget<T extends BytesInput>(t: Omit<Target<T>, 'toJson' | 'fromJson'>): Target<T> {
  return {
    ...t,
    toJson: (i) => ({ ...i, bytes: bytesToJson(i.bytes) }),
    fromJson: (j) => {
      const o = j as Omit<T, 'bytes' | 'cuts'> & { bytes: BytesJson; cuts?: number[] };
      return { ...o, cuts: o.cuts ?? [], bytes: bytesFromJson(o.bytes) } as unknown as T;
    },
  };
}
