#!/usr/bin/env bash
# scripts/exim-unpack.sh [DIR] — make sure an unpacked (NOT installed) Exim 4 tree exists at DIR/root,
# for the private Exim instances the tests start (test/helpers/exim.ts).
#
# `apt-get install exim4-daemon-light` would remove postfix (both are mail-transport-agent), so the
# .debs are only downloaded (`apt-get download exim4-daemon-light exim4-config`) and extracted with
# `dpkg -x`. The daemon is then DIR/root/usr/sbin/exim4; exim4-config brings Debian's RCPT ACL
# (DIR/root/etc/exim4/conf.d/acl/30_exim4-config_check_rcpt), which the tests read to check where
# the README says our snippet goes. Its shared libraries must be installed on the host: all but
# libidn12 come with a Debian base system, and scripts/install-deps.sh installs that one.
#
# DIR defaults to $OVERQUOTA_EXIM_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/overquota/exim
# (outside the repository, kept across test runs).
# Idempotent and safe to run concurrently (flock): silent exit 0 when the tree is complete and the
# daemon's libraries are found. Otherwise, as root with apt-get, downloads and unpacks it (running
# `apt-get update` once if the download fails); on failure prints what is missing and exits 1.
set -euo pipefail

DIR=${1:-${OVERQUOTA_EXIM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/overquota/exim}}
ROOT=$DIR/root
DAEMON=usr/sbin/exim4
DEBIAN_RCPT_ACL=etc/exim4/conf.d/acl/30_exim4-config_check_rcpt
PACKAGES=(exim4-daemon-light exim4-config)

die() {
  printf 'exim-unpack: %s\n' "$@" >&2
  exit 1
}

complete() { [[ -x $ROOT/$DAEMON && -f $ROOT/$DEBIAN_RCPT_ACL ]]; }

# The daemon's libraries come from the host: name the missing ones (and the usual package).
check_libraries() {
  local missing
  missing=$(ldd "$ROOT/$DAEMON" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ')
  [[ -z $missing ]] && return 0
  die "$ROOT/$DAEMON needs libraries this host lacks: $missing" \
    "install them (libidn.so.12 is Debian's libidn12): apt-get install libidn12"
}

if complete; then
  check_libraries
  exit 0
fi

how="as root: mkdir -p $ROOT && cd \$(mktemp -d) && apt-get download ${PACKAGES[*]} && for d in *.deb; do dpkg -x \"\$d\" $ROOT; done"
if [[ $(id -u) -ne 0 ]]; then
  die "unpacked Exim missing ($ROOT/$DAEMON); run this script as root, or" "  $how" \
    "(never 'apt-get install exim4-daemon-light': it removes postfix)"
fi
for tool in apt-get dpkg flock; do
  command -v "$tool" >/dev/null 2>&1 || die "unpacked Exim missing ($ROOT/$DAEMON) and '$tool' not found; on Debian: $how"
done

mkdir -p -- "$DIR" || die "cannot create $DIR"
# Concurrent test processes: one unpacks, the others wait and then find the tree complete.
exec 9>"$DIR/.lock"
flock -w 300 9 || die "timed out waiting for the lock $DIR/.lock"
if complete; then
  check_libraries
  exit 0
fi

# shellcheck source=scripts/debs.sh
source "$(dirname "$0")/debs.sh"
download_and_extract Exim

# Swap the complete tree in (a partial older tree, if any, is replaced).
rm -rf -- "$ROOT"
mv -- "$work/root" "$ROOT"
complete || die "the packages ${PACKAGES[*]} do not contain $DAEMON and $DEBIAN_RCPT_ACL (unexpected layout)"
check_libraries
