/*
 * The short fuzz run, part of npm test: every target of test/fuzz/ replays its corpus, then
 * checks FUZZ_TEST_RUNS generated cases (a new seed each time, printed with any failure so that
 * `npm run fuzz -- --target T --seed S --path P` replays it). The long run is `npm run fuzz`.
 * Must never: time anything (no timing assertions in npm test; the decoders' work per byte is
 * checked by their byte counters), or write to the corpus.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TARGETS } from './fuzz/all.js';
import { runTarget } from './fuzz/run.js';

/** Cases per target: enough to meet each bound and quirk the generators aim at, ~3 s for all. */
const FUZZ_TEST_RUNS = 10_000;

for (const target of TARGETS) {
  test(`fuzz ${target.name}: its corpus and ${FUZZ_TEST_RUNS} random inputs keep every property (${target.about})`, async () => {
    const report = await runTarget(target, { runs: FUZZ_TEST_RUNS });
    assert.equal(report.failures.length, 0, `\n${report.failures.join('\n\n')}`);
    assert.equal(report.runs, FUZZ_TEST_RUNS);
  });
}
