#!/usr/bin/env bash
# scripts/bench.sh — `npm run bench`: note the start of a run, build once, then run every benchmark
# with --write, each rewriting its own section of BENCHMARKS.md (between its bench:NAME markers) and
# leaving its figures and target checks in bench/results/NAME.json (OVERQUOTA_BENCH_RESULTS, see
# bench/results.ts; git ignores the directory):
#   bench/policy.ts   policy requests/s and latency of `overquota frontend` against the minimal
#                     server in bench/fixed-server.ts (about 50 s);
#   bench/cluster.ts  backend requests/s as frontends sharing one Redis go 1 -> 2 -> 4 (about 60 s);
#   bench/milter.ts   Postfix smtp-source msgs/s with the overquota milter, without a milter, and
#                     with a minimal pymilter doing the same check, medians of 3 interleaved rounds
#                     (about 70 s; needs root and the postfix package; installs python3-milter
#                     with apt-get when it is missing);
#   bench/milter-wire.ts  milter transactions/s from our own wire-protocol load client (50
#                     connections) against the overquota milter, a C milter on libmilter answering
#                     a fixed reply (the ceiling) and the pymilter, each pinned to its own core
#                     (about 2 minutes; installs libmilter-dev and python3-milter when missing);
#   bench/rss.ts      frontend RSS with 1000 idle + 100 busy policy connections, at 100k and 1M
#                     requests (about 30 s; ulimit -n raised to 8192 if lower: ~2,300 descriptors);
#   bench/stores.ts   lookups/s and latency per quota store: mbox, Maildir with maildirsize, a
#                     100k-message Maildir scanned cold and warm, Dovecot HTTP (about 65 s; Dovecot
#                     rows need root and dovecot-core);
#   bench/peers.ts    policy requests/s and latency at 50 and 200 connections: fixed server,
#                     overquota warm, overquota with every lookup a miss through the HTTP quota
#                     service, Dovecot quota-status, on one Maildir data set (3 rounds, about 4.5 minutes;
#                     needs root and dovecot-core);
#   bench/postfix-e2e.ts  Postfix smtp-source msgs/s with no policy check / the fixed server /
#                     overquota / Dovecot quota-status, medians of 6 interleaved rounds (about
#                     2.5 minutes; needs root, postfix and dovecot-core);
#   bench/backscatter.ts  what overquota is for: bounces (backscatter) and false defers per 1,000
#                     messages, Postfix -> LMTP -> Dovecot with the quota plugin, in five seeded
#                     scenarios (burst, burst in flight, slow fill, fan-out, freed space) for six
#                     configurations, and a chart in bench/backscatter.svg (about 3 minutes; needs
#                     root, postfix, dovecot-core, dovecot-lmtpd, redis-server);
# then bench/summary.ts --write, also when some of them failed: ONE table of the issue's figures
# and ratios (items 1-4) and every target with its verdict, naming the benches whose results are
# missing, printed and written into BENCHMARKS.md between the bench:summary markers, with the
# machine, the commit, the date and the load average at the start. About 11 minutes in all on the 2-core machine of BENCHMARKS.md.
# `node --import tsx bench/summary.ts [--write]` prints (writes) that table again from the last
# run's results.
# Extra arguments go to bench/policy.ts, e.g.
#   npm run bench -- --duration 5 --rounds 2
# A benchmark that fails does not stop the next ones; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export OVERQUOTA_BENCH_RESULTS="$PWD/bench/results"
# A new run: empties bench/results, notes the start time, the load average and the commit.
node --import tsx bench/summary.ts --start || exit 1
npm run build || exit 1
status=0
node --import tsx bench/policy.ts --write "$@" || status=1
node --import tsx bench/cluster.ts --write || status=1
node --import tsx bench/milter.ts --write || status=1
node --import tsx bench/milter-wire.ts --write || status=1
(n=$(ulimit -n); [ "$n" = unlimited ] || [ "$n" -ge 8192 ] || ulimit -n 8192; node --import tsx bench/rss.ts --write) || status=1
node --import tsx bench/stores.ts --write || status=1
node --import tsx bench/peers.ts --write || status=1
node --import tsx bench/postfix-e2e.ts --write || status=1
node --import tsx bench/backscatter.ts --write || status=1
node --import tsx bench/summary.ts --write || status=1
exit "$status"
