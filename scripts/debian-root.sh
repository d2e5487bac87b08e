#!/usr/bin/env bash
# scripts/debian-root.sh [SUITE] — prints the path of a clean, minimal Debian root (debootstrap
# --variant=minbase; SUITE bookworm (Debian 12, the default) or trixie (Debian 13)), making it the
# first time. The package test (test/package-deb.test.ts) installs the .deb into an overlay over
# it, so the root itself is never changed and one copy serves every run: nothing in it comes from
# this host.
# scripts/debian-root.sh --debs SUITE PACKAGE... — prints a folder holding the .debs of the
# PACKAGEs and of everything they need that the clean root lacks (none when it has them all), as
# `apt install` in the root would fetch them from the mirror: the package's Depends, installed
# with dpkg -i before it, as apt would, and offline on every later run.
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/overquota/debian/SUITE/root (outside the repository, ~130 MB)
# and SUITE/debs/PACKAGE+PACKAGE/. Making a root takes about 25-30 s on this kind of machine
# (measured: bookworm 26 s and 29 s, trixie 25 s, from the Debian mirror apt uses here);
# afterwards this script returns at once. Fetching the .debs (apt-get update in a throwaway
# overlay of the root, which is never changed) takes about 7 s once (measured: bookworm 7.0 s,
# trixie 6.6 s).
# Needs root and debootstrap (scripts/install-deps.sh installs it). Safe to run concurrently
# (flock); a half-made root or folder is never returned (the stamp file is written last).
set -euo pipefail

DEBS=no
if [[ ${1:-} == --debs ]]; then
  DEBS=yes
  shift
  [[ $# -ge 2 ]] || {
    printf 'usage: debian-root.sh --debs SUITE PACKAGE...\n' >&2
    exit 64
  }
fi
SUITE=${1:-bookworm}
[[ $# -gt 0 ]] && shift
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
[[ $DEBS == yes ]] || {
  printf '%s\n' "$root"
  exit 0
}

# The folder is named for the sorted package list, so a changed Depends gets its own.
debs=$dir/debs/$(printf '%s\n' "$@" | sort -u | paste -sd+)
if [[ ! -e $debs/complete ]]; then
  mkdir -p -- "$dir/debs"
  exec 8>"$dir/debs/.lock"
  flock -w 600 8 || die "timed out waiting for the lock $dir/debs/.lock"
  if [[ ! -e $debs/complete ]]; then
    scratch=$(mktemp -d "$dir/debs/.fetch.XXXXXX")
    mkdir -- "$scratch/upper" "$scratch/work" "$scratch/merged"
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/merged"
    trap 'umount --lazy "$scratch/merged"; rm -rf -- "$scratch"' EXIT
    if ! { chroot "$scratch/merged" apt-get -q update &&
      chroot "$scratch/merged" apt-get -q install --download-only --yes --no-install-recommends "$@"; } >"$dir/debs/fetch.log" 2>&1; then
      tail -n 20 "$dir/debs/fetch.log" >&2
      die "fetching $* for $SUITE failed (log: $dir/debs/fetch.log)"
    fi
    rm -rf -- "$debs"
    mkdir -p -- "$debs"
    find "$scratch/merged/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -- {} "$debs/" \;
    touch -- "$debs/complete"
  fi
fi
printf '%s\n' "$debs"
