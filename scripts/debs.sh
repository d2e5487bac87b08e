# scripts/debs.sh — sourced by scripts/exim-unpack.sh and scripts/sendmail-unpack.sh, never run:
# downloads the .debs of PACKAGES (never installs them) and extracts them into $work/root, a fresh
# directory under DIR that is removed when the script exits. The caller sets DIR, ROOT, PACKAGES and
# `die`, holds DIR's lock, checks what it needs in $work/root and swaps it in for ROOT.
# `apt-get update` runs once if the first download fails (empty package lists in a fresh container).

# $1: what the tree is, for the error message ("Exim", "Sendmail").
download_and_extract() {
  work=$(mktemp -d "$DIR/.unpack.XXXXXX")
  trap 'rm -rf -- "$work"' EXIT
  mkdir "$work/debs" "$work/root"
  # apt-get download drops privileges to _apt when it can write here (else it warns and runs as root).
  chmod 755 "$work" "$work/debs"
  chown _apt "$work/debs" 2>/dev/null || true
  download() { (cd "$work/debs" && apt-get -o DPkg::Lock::Timeout=300 download "${PACKAGES[@]}") >"$work/apt.log" 2>&1; }
  if ! download; then
    if ! apt-get -o DPkg::Lock::Timeout=300 update >>"$work/apt.log" 2>&1 || ! download; then
      cat "$work/apt.log" >&2
      die "apt-get download ${PACKAGES[*]} failed (see above); the unpacked $1 is missing at $ROOT"
    fi
  fi
  shopt -s nullglob
  local debs=("$work"/debs/*.deb) deb
  ((${#debs[@]} == ${#PACKAGES[@]})) || die "expected ${#PACKAGES[@]} .deb files from apt-get download, got ${#debs[@]}"
  for deb in "${debs[@]}"; do
    dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"
  done
}
