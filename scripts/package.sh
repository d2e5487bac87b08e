#!/usr/bin/env bash
# scripts/package.sh [--out DIR] — `npm run package`: builds overquota_VERSION_amd64.deb in DIR
# (default: the repository), self-contained: the application as `npm pack` makes it, its
# production node_modules exactly as package-lock.json pins them, and the pinned Node.js LTS
# runtime (scripts/node-lts.sh), all under /usr/lib/overquota, so it installs on Debian 12 and 13
# whatever node the host has, or none. Also /usr/bin/overquota, /etc/overquota/*.json and the
# logrotate snippet (conffiles), the systemd units, overquota(8) generated from the schema, and
# the maintainer scripts in packaging/debian/.
#
# It never touches the working tree: the application is built in a staging copy (the same
# `npm pack`, whose prepack compiles dist/ afresh), so running it beside tests is safe. Needs the
# npm dependencies installed (npm ci), dpkg-dev (dpkg-shlibdeps) and binutils (strip).
# Reproducible: file times and the page's date come from packaging/debian/changelog.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo
while (($# > 0)); do
  case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    *) echo "usage: scripts/package.sh [--out DIR]" >&2; exit 64 ;;
  esac
done

die() {
  printf 'package: %s\n' "$@" >&2
  exit 1
}

cd "$repo"
[[ -d node_modules ]] || die "node_modules missing: run npm ci first (the build needs typescript and tsx)"
for tool in dpkg-deb dpkg-shlibdeps dpkg-parsechangelog strip gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian packages dpkg-dev, binutils, gzip)"
done

version=$(node -p 'require("./package.json").version')
changelog_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
[[ $changelog_version == "$version" ]] ||
  die "packaging/debian/changelog is at $changelog_version, package.json at $version: add a changelog entry"
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l packaging/debian/changelog -S Timestamp)
export SOURCE_DATE_EPOCH
node_binary=$(bash scripts/node-lts.sh)

work=$(mktemp -d "${TMPDIR:-/tmp}/overquota-package.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
root=$work/root
lib=$root/usr/lib/overquota
doc=$root/usr/share/doc/overquota

# 1. The application, exactly as `npm pack` ships it (package.json "files"), built in a copy of
# what prepack (tsc) and "files" need.
stage=$work/stage
mkdir -p "$stage"
cp -r package.json package-lock.json tsconfig.json src postfix README.md "$stage/"
ln -s "$repo/node_modules" "$stage/node_modules"
(cd "$stage" && npm pack --silent --pack-destination "$work" >/dev/null) || die "npm pack failed"
mkdir -p "$lib/app"
tar -xzf "$work/overquota-$version.tgz" -C "$lib/app" --strip-components=1 --no-same-owner

# 2. Its production dependencies, as the lock file pins them (from npm's cache when it has them).
cp package-lock.json "$lib/app/"
(cd "$lib/app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null) ||
  die "npm ci --omit=dev failed in the package tree"
rm -f "$lib/app/package-lock.json"
# What the dependencies publish but never load: tests, docs, benchmarks, examples, type
# declarations, source maps, their own tooling's dotfiles (about half of node_modules).
find "$lib/app/node_modules" -mindepth 1 \( -name '.*' -o -name test -o -name tests -o -name __tests__ \
  -o -name docs -o -name example -o -name examples -o -name benchmarks -o -name bench \
  -o \( -name '*.md' ! -iname 'licen[cs]e*' \) -o -name '*.html' -o -name '*.map' -o -name '*.sh' \
  -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' \) -prune -exec rm -rf {} +
find "$lib/app/node_modules" -mindepth 1 -type d -empty -delete
# Nothing in the tree is run by its "#!/usr/bin/env node" line (that would take the host's node,
# if any): /usr/bin/overquota runs the package's runtime on dist/cli.js. The lines go, so no
# script there claims an interpreter the package does not depend on.
grep -rlZ '^#!/usr/bin/env node' "$lib/app" | xargs -0 -r sed -i '1{/^#!\/usr\/bin\/env node/d}'
# Documentation goes to /usr/share/doc (Debian policy 12.3), not beside the code.
mkdir -p "$doc/examples"
mv "$lib/app/README.md" "$doc/README.md"
mv "$lib/app/postfix" "$doc/examples/postfix"

# 3. The runtime: the pinned LTS build, without its debugging symbols (about 18 MB).
install -m 0755 "$node_binary" "$lib/node"
strip --remove-section=.comment --remove-section=.note "$lib/node"

# 4. The command, configuration, units, logrotate snippet, manual page, documentation.
install -D -m 0755 packaging/bin/overquota "$root/usr/bin/overquota"
install -D -m 0644 packaging/etc/frontend.json "$root/etc/overquota/frontend.json"
install -D -m 0644 packaging/etc/quota-service.json "$root/etc/overquota/quota-service.json"
install -D -m 0644 packaging/logrotate/overquota "$root/etc/logrotate.d/overquota"
install -d "$root/usr/lib/systemd/system"
install -m 0644 packaging/systemd/*.service "$root/usr/lib/systemd/system/"
install -d "$root/usr/share/man/man8"
node --import tsx scripts/manpage.ts | gzip -9n >"$root/usr/share/man/man8/overquota.8.gz"
gzip -9n <packaging/debian/changelog >"$doc/changelog.gz"
install -D -m 0644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/overquota"
{
  cat packaging/debian/copyright
  # One stanza per bundled npm package, from its own package.json.
  node -e '
    const fs = require("fs"), path = require("path");
    const top = process.argv[1];
    const seen = [];
    const walk = (dir) => {
      for (const name of fs.readdirSync(dir).sort()) {
        if (name.startsWith(".")) continue;
        const where = path.join(dir, name);
        if (name.startsWith("@")) { walk(where); continue; }
        const manifest = path.join(where, "package.json");
        if (!fs.existsSync(manifest)) continue;
        const pkg = JSON.parse(fs.readFileSync(manifest, "utf8"));
        seen.push({ where: path.relative(path.dirname(path.dirname(path.dirname(top))), where), pkg });
        if (fs.existsSync(path.join(where, "node_modules"))) walk(path.join(where, "node_modules"));
      }
    };
    walk(top);
    for (const { where, pkg } of seen) {
      const license = typeof pkg.license === "string" ? pkg.license : "see the package";
      process.stdout.write(`\nFiles: ${where}/*\nCopyright: the authors of ${pkg.name} ${pkg.version}\nLicense: ${license}\nComment: the full text is in this folder.\n`);
    }
  ' "$lib/app/node_modules"
} >"$doc/copyright"

# 5. Control files. Depends: what dpkg-shlibdeps finds the node binary needs (libc6, libstdc++6,
# libgcc-s1), plus passwd for useradd in postinst.
mkdir -p "$work/debian" "$root/DEBIAN"
printf 'Source: overquota\n\nPackage: overquota\nArchitecture: amd64\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "-e${lib#"$work"/}/node" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || die "dpkg-shlibdeps found no dependencies for the node binary"
installed_size=$(du -sk --apparent-size "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@SHLIBS_DEPENDS@/$shlibs/" \
  packaging/debian/control >"$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

# Modes as Debian wants them whatever the umask was: directories 0755, files 0644, programs 0755.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f ! -perm /0111 -exec chmod 0644 {} +
find "$root" -type f -perm /0111 -exec chmod 0755 {} +
# Nothing under app/ is run directly (node reads it): no executable bits there.
find "$lib/app" -type f -exec chmod 0644 {} +
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/overquota_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null || die "dpkg-deb failed"
printf '%s\n' "$deb"
