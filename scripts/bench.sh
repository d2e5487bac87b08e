#!/usr/bin/env bash
# scripts/bench.sh — `npm run bench`: note the start of a run, build once, then run every benchmark
# (short scenario files on bench/harness.ts) with --write: each rewrites its own section of
# BENCHMARKS.md (between its bench:NAME markers) and leaves its figures and target checks in
# bench/results/NAME.json (OVERQUOTA_BENCH_RESULTS; git ignores the directory):
#   bench/backscatter.ts  bounces and false defers, Postfix -> LMTP -> Dovecot with the quota plugin, six
#                         configurations in five seeded scenarios, and bench/backscatter.svg (~3 min;
#                         root, postfix, dovecot-core, dovecot-lmtpd, redis-server)
#   bench/policy.ts       item 1: policy requests/s and latency at 50 and 200 connections: the fixed
#                         server, the same reading requests with overquota's decoder alone,
#                         overquota warm (defaults, decisions: all, log warn; at 50 also the
#                         defaults without metrics and without reservations), every lookup a miss,
#                         Dovecot quota-status, 5 interleaved rounds (~12 min; root, dovecot-core)
#   bench/postfix.ts      items 2 and 3: Postfix smtp-source msgs/s with no check, each policy server,
#                         the overquota milter and a pymilter, 6 interleaved rounds (~4 min; root,
#                         postfix, dovecot-core; installs python3-milter when missing)
#   bench/milter-wire.ts  milter transactions/s against a C libmilter milter and the pymilter, each
#                         pinned to its own core (~2 min; installs libmilter-dev when missing)
#   bench/rss.ts          item 4: frontend RSS with 1000 idle + 100 busy connections up to 1M requests
#                         (~30 s; ulimit -n raised to 8192 if lower: ~2,300 descriptors)
#   bench/cluster.ts      backend requests/s as frontends sharing one Redis go 1 -> 2 -> 4 (~1 min)
#   bench/stores.ts       lookups/s and latency per quota store, a 100k-message Maildir cold and warm,
#                         Dovecot's doveadm HTTP (~1 min)
# then bench/summary.ts --write, also when some failed: ONE table of the headline figures and every
# target with its verdict, naming the benches whose results are missing, with the machine, the
# commit, the date and the load average at the start. About 25 minutes on the 2-core machine of
# BENCHMARKS.md. `node --import tsx bench/summary.ts [--write]` prints (writes) it again.
# Extra arguments go to bench/policy.ts, e.g. `npm run bench -- --duration 3 --rounds 1`.
# A benchmark that fails does not stop the next ones; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export OVERQUOTA_BENCH_RESULTS="$PWD/bench/results"
# A new run: empties bench/results, notes the start time, the load average and the commit.
node --import tsx bench/summary.ts --start || exit 1
npm run build || exit 1
status=0
node --import tsx bench/backscatter.ts --write || status=1
node --import tsx bench/policy.ts --write "$@" || status=1
node --import tsx bench/postfix.ts --write || status=1
node --import tsx bench/milter-wire.ts --write || status=1
(n=$(ulimit -n); [ "$n" = unlimited ] || [ "$n" -ge 8192 ] || ulimit -n 8192; node --import tsx bench/rss.ts --write) || status=1
node --import tsx bench/cluster.ts --write || status=1
node --import tsx bench/stores.ts --write || status=1
node --import tsx bench/summary.ts --write || status=1
exit "$status"
