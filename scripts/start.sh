#!/usr/bin/env bash
# `npm start`: build if needed, then run the frontend on its embedded defaults (policy service on
# inet:127.0.0.1:10033, quota from /var/mail read as mbox, 200 MiB each). Extra words are passed on,
# e.g. `npm start -- --config /etc/overquota.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-built.sh >&2
# Node's flags as the Debian package runs it (packaging/bin/overquota says why).
exec node --optimize-for-size --v8-pool-size=1 dist/cli.js frontend "$@"
