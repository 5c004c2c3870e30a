#!/bin/bash
# Builds the Debian package of Shoal with dpkg-deb from an already built tree
# (`make deb` builds first, then runs this):
#
#   /usr/sbin/shoald, /usr/bin/shoalctl
#   /lib/systemd/system/shoald.service, shoal.slice
#   /etc/shoal/shoald.yaml, /etc/logrotate.d/shoald      (conffiles)
#   /usr/share/man/man8/shoald.8.gz, shoalctl.8.gz
#   /usr/share/shoal/gen-ca.sh                          (makes the site CA)
#   /usr/share/doc/shoal/copyright, README.md.gz
#
# Depends is computed by dpkg-shlibdeps from the binaries' shared libraries.
# Maintainer scripts: packaging/deb/{postinst,prerm,postrm}.
#
#   tools/build-deb.sh BUILD_DIR [OUT_DIR]
#
# Writes OUT_DIR/shoal_<version>_<arch>.deb (OUT_DIR defaults to BUILD_DIR)
# and prints its path.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 BUILD_DIR [OUT_DIR]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
out=${2:-$build}
mkdir -p "$out"
out=$(cd "$out" && pwd)
for f in "$build/shoald" "$build/shoalctl"; do
  [ -x "$f" ] || { echo "build-deb.sh: $f missing; run make first" >&2; exit 1; }
done
for tool in dpkg-deb dpkg-shlibdeps fakeroot gzip; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool not installed (make deps)" >&2; exit 1; }
done

version=$(cat "$root/VERSION")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "${TMPDIR:-/tmp}/shoal-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg

install -D -m 0755 "$build/shoald" "$pkg/usr/sbin/shoald"
install -D -m 0755 "$build/shoalctl" "$pkg/usr/bin/shoalctl"
# Debian ships stripped binaries; the build's are kept for debugging.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/sbin/shoald" "$pkg/usr/bin/shoalctl"
install -d -m 0755 "$pkg/lib/systemd/system"
sed 's|@SBINDIR@|/usr/sbin|g; s|@BINDIR@|/usr/bin|g' "$root/systemd/shoald.service.in" >"$pkg/lib/systemd/system/shoald.service"
chmod 0644 "$pkg/lib/systemd/system/shoald.service"
install -m 0644 "$root/systemd/shoal-jobs.slice" "$pkg/lib/systemd/system/shoal.slice"
install -D -m 0644 "$root/systemd/shoald.yaml" "$pkg/etc/shoal/shoald.yaml"
install -D -m 0644 "$root/systemd/shoald.logrotate" "$pkg/etc/logrotate.d/shoald"
install -d -m 0755 "$pkg/usr/share/man/man8"
for m in shoald shoalctl; do
  sed "s|@VERSION@|$version|g" "$root/man/$m.8" | gzip -9n >"$pkg/usr/share/man/man8/$m.8.gz"
done
install -D -m 0755 "$root/tools/gen-ca.sh" "$pkg/usr/share/shoal/gen-ca.sh"
install -d -m 0755 "$pkg/usr/share/doc/shoal"
gzip -9n <"$root/README.md" >"$pkg/usr/share/doc/shoal/README.md.gz"
cat >"$pkg/usr/share/doc/shoal/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: shoal
Comment: Built from the Shoal source tree by tools/build-deb.sh.
COPY
chmod 0644 "$pkg/usr/share/doc/shoal/copyright"

# Depends: dpkg-shlibdeps wants a debian/control to read; a minimal one will do.
mkdir -p "$stage/src/debian"
printf 'Source: shoal\n\nPackage: shoal\nArchitecture: any\n' >"$stage/src/debian/control"
depends=$(cd "$stage/src" && dpkg-shlibdeps -O "$pkg/usr/sbin/shoald" "$pkg/usr/bin/shoalctl" 2>"$stage/shlibdeps.err" |
  sed -n 's/^shlibs:Depends=//p') || { cat "$stage/shlibdeps.err" >&2; exit 1; }
[ -n "$depends" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

install -d -m 0755 "$pkg/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: shoal
Version: $version
Architecture: $arch
Maintainer: Shoal developers <shoal@localhost>
Installed-Size: $size
Depends: $depends
Recommends: openssl, iptables
Suggests: logrotate, python3
Section: net
Priority: optional
Description: transparent TLS-intercepting peer-to-peer container image proxy
 Shoal caches container image blobs and SIF artifacts for the jobs of a
 cluster node (Apptainer, Singularity, skopeo, containerd) and shares them
 with the other nodes, so that the registry serves each piece about once per
 cluster. It reads Dragonfly's dfget.yaml proxy sections, intercepts jobs'
 connections with eBPF cgroup hooks or as an explicit proxy, and mints
 per-host certificates from a site CA the nodes trust.
 .
 The service starts only where systemd is PID 1; see shoald(8).
CONTROL
printf '/etc/shoal/shoald.yaml\n/etc/logrotate.d/shoald\n' >"$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$root/packaging/deb/$s" "$pkg/DEBIAN/$s"; done
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

deb=$out/shoal_${version}_${arch}.deb
fakeroot dpkg-deb --build -Zxz "$pkg" "$deb.tmp" >/dev/null
mv -f "$deb.tmp" "$deb"
echo "$deb"
