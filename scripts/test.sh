#!/usr/bin/env bash
# `npm test`: the whole suite. Installs the Debian packages the tests drive when missing (as root;
# otherwise says what to install), builds, type-checks the tests, and runs every test file with
# node's test runner. The tests start their own Postfix, quota services and frontends on free
# loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/ensure-built.sh
npx tsc -p tsconfig.check.json
exec node --import tsx --test test/*.test.ts
