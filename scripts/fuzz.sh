#!/usr/bin/env bash
# scripts/fuzz.sh — `npm run fuzz`: the long fuzz run (test/fuzz/main.ts). Every target replays its
# corpus (test/fuzz/corpus/<target>/), then checks 1,000,000 generated cases, each timed; new kinds
# of failure and slow inputs are kept in the corpus; then the slow-input probes compare the time
# per byte at two sizes. Arguments pass through:
#   npm run fuzz -- --runs 100000 --target policy-decoder --seed 123 --path 42 --no-probes
# About 7 minutes for all seven targets at 1,000,000 cases (393 s measured on the shared 2-core
# machine, load 4-6). The short run (10,000 cases each) is test/fuzz.test.ts, part of npm test.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx test/fuzz/main.ts "$@"
