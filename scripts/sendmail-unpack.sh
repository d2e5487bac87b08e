#!/usr/bin/env bash
# scripts/sendmail-unpack.sh [DIR] — make sure an unpacked (NOT installed) Sendmail tree exists at
# DIR/root, for the private Sendmail instances the tests start (test/helpers/sendmail.ts).
#
# `apt-get install sendmail-bin` would remove postfix (the packages conflict), so the .debs are only
# downloaded (`apt-get download sendmail-bin sendmail-cf m4`) and extracted with `dpkg -x`.
# The daemon is then DIR/root/usr/libexec/sendmail/sendmail, m4 is DIR/root/usr/bin/m4 and the
# cf macros are under DIR/root/usr/share/sendmail/cf.
#
# DIR defaults to $OVERQUOTA_SENDMAIL_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/overquota/sendmail
# (outside the repository, kept across test runs).
# Idempotent and safe to run concurrently (flock): silent exit 0 when the tree is complete.
# Otherwise, as root with apt-get, downloads and unpacks it (running `apt-get update` once if the
# download fails); on failure prints what is missing and exits 1. Also checks for `unshare`
# (util-linux), which the harness needs to give Sendmail a dotted hostname.
set -euo pipefail

default_dir() {
  if [[ -n ${OVERQUOTA_SENDMAIL_CACHE:-} ]]; then
    printf '%s\n' "$OVERQUOTA_SENDMAIL_CACHE"
  else
    printf '%s\n' "${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/overquota/sendmail"
  fi
}

DIR=${1:-$(default_dir)}
ROOT=$DIR/root
# Everything the harness uses from the tree.
REQUIRED=(
  usr/libexec/sendmail/sendmail
  usr/bin/m4
  usr/share/sendmail/cf/m4/cf.m4
  usr/share/sendmail/cf/ostype/linux.m4
  usr/share/sendmail/cf/mailer/local.m4
  usr/share/sendmail/cf/mailer/smtp.m4
)
PACKAGES=(sendmail-bin sendmail-cf m4)

die() {
  printf 'sendmail-unpack: %s\n' "$@" >&2
  exit 1
}

if ! command -v unshare >/dev/null 2>&1; then
  die "unshare not found (Debian package util-linux); the Sendmail harness needs it" \
    "(a private UTS namespace with a dotted hostname): apt-get install util-linux"
fi

missing_files() {
  local f
  for f in "${REQUIRED[@]}"; do
    [[ -e $ROOT/$f ]] || printf '%s\n' "$ROOT/$f"
  done
}

mapfile -t missing < <(missing_files)
((${#missing[@]} == 0)) && exit 0

how="as root: mkdir -p $ROOT && cd \$(mktemp -d) && apt-get download ${PACKAGES[*]} && for d in *.deb; do dpkg -x \"\$d\" $ROOT; done"
if [[ $(id -u) -ne 0 ]]; then
  die "unpacked Sendmail missing (${missing[0]}); run this script as root, or" "  $how" \
    "(never 'apt-get install sendmail-bin': it removes postfix)"
fi
for tool in apt-get dpkg flock; do
  command -v "$tool" >/dev/null 2>&1 || die "unpacked Sendmail missing (${missing[0]}) and '$tool' not found; on Debian: $how"
done

mkdir -p -- "$DIR" || die "cannot create $DIR"
# Concurrent test processes: one unpacks, the others wait and then find the tree complete.
exec 9>"$DIR/.lock"
flock -w 300 9 || die "timed out waiting for the lock $DIR/.lock"
mapfile -t missing < <(missing_files)
((${#missing[@]} == 0)) && exit 0

# shellcheck source=scripts/debs.sh
source "$(dirname "$0")/debs.sh"
download_and_extract Sendmail
for f in "${REQUIRED[@]}"; do
  [[ -e $work/root/$f ]] || die "the packages ${PACKAGES[*]} do not contain $f (unexpected layout)"
done

# Swap the complete tree in (a partial older tree, if any, is replaced).
rm -rf -- "$ROOT"
mv -- "$work/root" "$ROOT"
mapfile -t missing < <(missing_files)
((${#missing[@]} == 0)) || die "still missing after unpacking: ${missing[*]}"
