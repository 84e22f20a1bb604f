#!/bin/sh
# Installs the C library: libxxcapture.so (with its soname links),
# libxxcapture.a, xxcapture.h and xxcapture.pc, built first with
#   cargo build --release -p xxcapture-c
# Usage: install.sh [--prefix DIR] [--libdir DIR] [--includedir DIR]
#                   [--destdir DIR] [--from DIR]
# Defaults follow Debian: --prefix /usr, --libdir PREFIX/lib/x86_64-linux-gnu
# (the multiarch triplet of gcc), --includedir PREFIX/include, --from the
# workspace's target/release. --destdir stages into a root (images, packages).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr
libdir=
includedir=
destdir=
from=${CARGO_TARGET_DIR:-$here/../../target}/release

while [ $# -gt 0 ]; do
	case "$1" in
	--prefix) prefix=$2; shift 2 ;;
	--libdir) libdir=$2; shift 2 ;;
	--includedir) includedir=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--from) from=$2; shift 2 ;;
	-h|--help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

triplet=$(gcc -print-multiarch 2>/dev/null || true)
[ -n "$libdir" ] || libdir=$prefix/lib${triplet:+/$triplet}
[ -n "$includedir" ] || includedir=$prefix/include
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)
major=${version%%.*}

for f in "$from/libxxcapture.so" "$from/libxxcapture.a"; do
	[ -f "$f" ] || { echo "install.sh: $f missing: run cargo build --release -p xxcapture-c" >&2; exit 1; }
done

install -d "$destdir$libdir/pkgconfig" "$destdir$includedir"
install -m 0755 "$from/libxxcapture.so" "$destdir$libdir/libxxcapture.so.$version"
ln -sf "libxxcapture.so.$version" "$destdir$libdir/libxxcapture.so.$major"
ln -sf "libxxcapture.so.$major" "$destdir$libdir/libxxcapture.so"
install -m 0644 "$from/libxxcapture.a" "$destdir$libdir/libxxcapture.a"
install -m 0644 "$here/include/xxcapture.h" "$destdir$includedir/xxcapture.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" \
	-e "s|@INCLUDEDIR@|$includedir|" -e "s|@VERSION@|$version|" \
	"$here/xxcapture.pc.in" >"$destdir$libdir/pkgconfig/xxcapture.pc"
chmod 0644 "$destdir$libdir/pkgconfig/xxcapture.pc"
echo "installed libxxcapture $version into ${destdir:-/}: $libdir, $includedir"
