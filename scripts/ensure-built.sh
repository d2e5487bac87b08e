#!/usr/bin/env bash
# Installs the npm dependencies when missing or out of date, then compiles src/ into dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
npx tsc -p tsconfig.json
