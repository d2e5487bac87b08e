#!/usr/bin/env bash
# scripts/debian-root.sh [SUITE] — prints the path of a clean, minimal Debian root (debootstrap
# --variant=minbase; SUITE bookworm (Debian 12, the default) or trixie (Debian 13)), making it the
# first time. The package test (test/package-deb.test.ts) installs the .deb into an overlay over
# it, so the root itself is never changed and one copy serves every run: nothing in it comes from
# this host.
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/overquota/debian/SUITE/root (outside the repository, ~130 MB).
# Making one takes about 25-30 s on this kind of machine (measured: bookworm 26 s and 29 s, trixie
# 25 s, from the Debian mirror apt uses here); afterwards this script returns at once.
# Needs root and debootstrap (scripts/install-deps.sh installs it). Safe to run concurrently
# (flock); a half-made root is never returned (the stamp file is written last).
set -euo pipefail

SUITE=${1:-bookworm}
MIRROR=http://deb.debian.org/debian

die() {
  printf 'debian-root: %s\n' "$@" >&2
  exit 1
}

dir=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/overquota/debian/$SUITE
root=$dir/root
stamp=$dir/complete

if [[ ! -e $stamp ]]; then
  [[ $(id -u) -eq 0 ]] || die "a Debian root is made as root (debootstrap); run the tests as root"
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap (scripts/install-deps.sh does)"
  mkdir -p -- "$dir" || die "cannot create $dir"
  exec 9>"$dir/.lock"
  flock -w 600 9 || die "timed out waiting for the lock $dir/.lock"
  if [[ ! -e $stamp ]]; then
    rm -rf -- "$root" "$dir/debootstrap.log"
    if ! debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$dir/debootstrap.log" 2>&1; then
      tail -n 20 "$dir/debootstrap.log" >&2
      die "debootstrap $SUITE failed (log: $dir/debootstrap.log)"
    fi
    # Package lists and downloaded .debs are of no use to the tests: keep the cache small.
    rm -rf -- "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
    touch -- "$stamp"
  fi
fi
printf '%s\n' "$root"
