/*
 * Runs one fuzz target: its corpus first, then `runs` generated cases (fast-check).
 *
 * Short run (npm test): stops at the first failing case, shrinks it, and reports the seed and
 * path that replay it (`npm run fuzz -- --target T --seed S --path P`).
 * Long run (record: true, npm run fuzz): goes on through every case, so that a known bug does
 * not stop the million cases at the tenth; it keeps the first input of each kind of failure
 * not already failing in the corpus as crash-seed<seed>-run<n>.json (unshrunk: replay with
 * --path <n>), and times every case: one over SLOW_CASE_MS is kept as slow-seed<seed>-run<n>.json.
 * Must never: write to the corpus unless asked, or report a pass when a case failed.
 */
import fc from 'fast-check';
import { readCorpus, writeCorpus, type AnyTarget } from './target.js';

/**
 * A generous bound on one generated case in the long run: inputs are at most a few KiB, checked
 * in well under a millisecond each; a case 250 ms long is super-linear work, not a GC pause.
 */
export const SLOW_CASE_MS = 250;
/** Kinds of failure (and slow inputs) kept per run: the first few tell the story. */
const MAX_KEPT = 5;

export interface RunOptions {
  runs: number;
  seed?: number;
  /** fast-check's counterexample path: replay that one case (with its seed) instead of `runs`. */
  path?: string;
  /** Long run: go on after a failure, time each case, keep new failing and slow inputs in the corpus. */
  record?: boolean;
}

export interface RunReport {
  target: string;
  corpusCases: number;
  runs: number;
  seed: number;
  ms: number;
  /** What failed, each a paragraph a person can act on; empty on success. */
  failures: string[];
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** A failure's kind: its first line with the quoted values and numbers taken out. */
function kindOf(err: unknown): string {
  return describe(err)
    .split('\n')[0]!
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '…')
    .replace(/\d+/g, 'N');
}

export async function runTarget(target: AnyTarget, opts: RunOptions): Promise<RunReport> {
  const started = performance.now();
  const failures: string[] = [];
  const knownKinds = new Set<string>();

  const corpus = readCorpus(target.name);
  for (const { file, entry } of corpus) {
    try {
      await target.check(target.fromJson(entry.input));
    } catch (err) {
      knownKinds.add(kindOf(err));
      failures.push(`corpus ${file} (${entry.note}):\n  ${describe(err)}`);
    }
  }

  const seed = opts.seed ?? (Date.now() ^ (Math.random() * 0x100000000)) | 0;
  // With a path, fast-check starts at that case and would go on from there: replay just the one.
  const numRuns = opts.path === undefined ? opts.runs : 1;
  const replay = (path: string) => `npm run fuzz -- --target ${target.name} --seed ${seed} --path ${path} --runs ${opts.runs}`;
  if (!opts.record) {
    const details = await fc.check(
      fc.asyncProperty(target.arbitrary, async (input) => {
        await target.check(input);
      }),
      { numRuns, seed, path: opts.path },
    );
    if (details.failed) {
      const input = details.counterexample?.[0];
      failures.push(
        `generated case failed after ${details.numRuns} runs (seed ${seed}, path ${details.counterexamplePath}); replay: ${replay(details.counterexamplePath ?? '')}\n` +
          `  input: ${input === undefined ? '?' : JSON.stringify(target.toJson(input)).slice(0, 2000)}\n  ${describe(details.errorInstance)}`,
      );
    }
    return { target: target.name, corpusCases: corpus.length, runs: details.numRuns, seed, ms: performance.now() - started, failures };
  }

  const kinds = new Map<string, { run: number; count: number; input: unknown; err: unknown }>();
  const slow: { run: number; ms: number; input: unknown }[] = [];
  let run = opts.path === undefined ? 0 : Number(opts.path.split(':')[0]);
  const details = await fc.check(
    fc.asyncProperty(target.arbitrary, async (input) => {
      const n = run++;
      const t0 = performance.now();
      try {
        await target.check(input);
      } catch (err) {
        const kind = kindOf(err);
        const seen = kinds.get(kind);
        if (seen) seen.count++;
        else if (kinds.size < MAX_KEPT) kinds.set(kind, { run: n, count: 1, input: target.toJson(input), err });
      }
      const ms = performance.now() - t0;
      if (ms > SLOW_CASE_MS && slow.length < MAX_KEPT) slow.push({ run: n, ms, input: target.toJson(input) });
    }),
    { numRuns, seed, path: opts.path },
  );
  if (details.failed) failures.push(`the runner itself failed: ${describe(details.errorInstance)}`);
  for (const [kind, k] of kinds) {
    const head = `${k.count} generated case(s) failed: ${describe(k.err).split('\n')[0]}\n  first at run ${k.run}; replay: ${replay(String(k.run))}\n  input: ${JSON.stringify(k.input).slice(0, 2000)}`;
    if (knownKinds.has(kind)) {
      failures.push(`${head}\n  (the same kind of failure as a corpus input above: not kept again)`);
    } else {
      const file = writeCorpus(target.name, `crash-seed${seed}-run${k.run}`, { note: `found by npm run fuzz: ${describe(k.err).split('\n')[0]}`, input: k.input });
      failures.push(`${head}\n  ${describe(k.err)}\n  kept in ${file}`);
    }
  }
  for (const s of slow) {
    const file = writeCorpus(target.name, `slow-seed${seed}-run${s.run}`, { note: `took ${s.ms.toFixed(0)} ms (over ${SLOW_CASE_MS} ms) in npm run fuzz`, input: s.input });
    failures.push(`slow input: run ${s.run} took ${s.ms.toFixed(0)} ms (over ${SLOW_CASE_MS} ms), kept in ${file}`);
  }
  return { target: target.name, corpusCases: corpus.length, runs: details.numRuns, seed, ms: performance.now() - started, failures };
}
