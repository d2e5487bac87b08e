#!/usr/bin/env bash
# scripts/bench.sh — `npm run bench`: build, then measure policy requests/s and latency of
# `overquota frontend` against the minimal server in bench/fixed-server.ts, and record the
# figures in BENCHMARKS.md. Extra arguments go to bench/policy.ts, e.g.
#   npm run bench -- --duration 5 --rounds 2
# About 45 s with the defaults (4 runs of 2 s warm-up + 8 s measured).
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build
exec node --import tsx bench/policy.ts --write "$@"
