#!/usr/bin/env bash
# scripts/install-deps.sh — make sure the Debian packages the test suite drives are installed
# (real Postfix, swaks, Redis, Dovecot LMTP/quota-status, miltertest, Prometheus and promtool;
# for the packaging tests lintian, debootstrap, logrotate, systemd's systemd-analyze,
# dpkg-dev's dpkg-shlibdeps and strace (the system calls the units' filters must allow);
# libidn12, the one library of the unpacked Exim a base system lacks).
# Idempotent: silent exit 0 when nothing is missing. As root with apt-get, installs what is
# missing without letting the packages start their system daemons. Otherwise prints what is
# missing and the command to install it, and exits 1.
set -euo pipefail

PACKAGES=(postfix swaks redis-server dovecot-core dovecot-lmtpd miltertest iproute2 prometheus libidn12 lintian debootstrap logrotate systemd dpkg-dev strace)
POLICY_RC_D=${OVERQUOTA_POLICY_RC_D:-/usr/sbin/policy-rc.d} # overridable only to test this script

missing_packages() {
  local p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || printf '%s\n' "$p"
  done
}

mapfile -t missing < <(missing_packages)
((${#missing[@]} == 0)) && exit 0

install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  {
    echo "install-deps: missing Debian packages needed by the tests: ${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "install-deps: apt-get not found; on Debian/Ubuntu install them as root with:"
    else
      echo "install-deps: not root; install them with:"
    fi
    echo "  sudo sh -c '$install_cmd'"
  } >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2

# Keep the packages' maintainer scripts from starting system daemons (postfix, redis, dovecot):
# invoke-rc.d asks policy-rc.d, and exit status 101 means "action forbidden".
created_policy=""
cleanup() {
  if [[ -n $created_policy ]]; then rm -f -- "$created_policy"; fi
}
trap cleanup EXIT
if [[ ! -e $POLICY_RC_D ]]; then
  printf '#!/bin/sh\n# Temporary, created by overquota scripts/install-deps.sh\nexit 101\n' >"$POLICY_RC_D"
  chmod 755 "$POLICY_RC_D"
  created_policy=$POLICY_RC_D
fi

# Wait for a concurrent apt/dpkg run instead of failing on its lock.
apt_opts=(-o DPkg::Lock::Timeout=300)
if ! apt-get "${apt_opts[@]}" update >&2; then
  echo "install-deps: apt-get update failed" >&2
  exit 1
fi
if ! DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
  echo "install-deps: apt-get install failed for: ${missing[*]}" >&2
  exit 1
fi

mapfile -t still < <(missing_packages)
if ((${#still[@]} > 0)); then
  echo "install-deps: still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${missing[*]}" >&2
