/*
 * `npm run fuzz`: the long run. Every target (or those named): its corpus, then --runs generated
 * cases (1,000,000 by default), each case timed (a slow one is kept in the corpus), then the
 * slow-input probes (scaling.ts). Prints one line per target with its time, and every failure
 * with the seed and path that replay it. Exit status 1 when anything failed.
 *
 *   npm run fuzz -- [--runs N] [--target NAME]... [--seed S] [--path P] [--no-probes]
 *
 * Must never: run inside npm test (test/fuzz.test.ts runs the short run), or exit 0 after a failure.
 */
import { parseArgs } from 'node:util';
import { TARGETS } from './all.js';
import { runTarget } from './run.js';
import { MAX_PER_BYTE_GROWTH, PROBES, runProbe } from './scaling.js';

const DEFAULT_RUNS = 1_000_000;

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    target: { type: 'string', multiple: true },
    seed: { type: 'string' },
    path: { type: 'string' },
    'no-probes': { type: 'boolean' },
  },
});
const runs = values.runs === undefined ? DEFAULT_RUNS : Number(values.runs);
const names = values.target ?? TARGETS.map((t) => t.name);
const unknown = names.filter((n) => !TARGETS.some((t) => t.name === n));
if (!Number.isSafeInteger(runs) || runs < 1 || unknown.length > 0 || (values.path !== undefined && values.seed === undefined)) {
  console.error(`usage: npm run fuzz -- [--runs N] [--target NAME]... [--seed S [--path P]] [--no-probes]\ntargets: ${TARGETS.map((t) => t.name).join(' ')}`);
  process.exit(2);
}

let failed = false;
const started = performance.now();
for (const target of TARGETS.filter((t) => names.includes(t.name))) {
  const r = await runTarget(target, { runs, seed: values.seed === undefined ? undefined : Number(values.seed), path: values.path, record: true });
  const perCase = ((r.ms * 1000) / Math.max(1, r.runs)).toFixed(1);
  console.log(`${r.failures.length ? 'FAIL' : 'ok  '} ${r.target.padEnd(16)} ${r.corpusCases} corpus + ${r.runs} cases in ${(r.ms / 1000).toFixed(1)} s (${perCase} us/case, seed ${r.seed})  ${target.about}`);
  for (const f of r.failures) console.log(`  ${f.replaceAll('\n', '\n  ')}`);
  failed ||= r.failures.length > 0;
}
if (!values['no-probes']) {
  for (const probe of PROBES.filter((p) => names.includes(p.target))) {
    const r = runProbe(probe);
    const bad = !(r.growth <= MAX_PER_BYTE_GROWTH);
    console.log(`${bad ? 'FAIL' : 'ok  '} slow-input ${probe.target}: ${probe.name}: ${r.smallMs.toFixed(1)} ms at ${probe.small} bytes, ${r.largeMs.toFixed(1)} ms at 16x; time per byte x${r.growth.toFixed(2)} (bound x${MAX_PER_BYTE_GROWTH})`);
    failed ||= bad;
  }
}
console.log(`${failed ? 'FAILED' : 'passed'} in ${((performance.now() - started) / 1000).toFixed(0)} s`);
process.exit(failed ? 1 : 0);
