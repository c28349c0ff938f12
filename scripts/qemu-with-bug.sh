#!/usr/bin/env bash
# Build Debian's QEMU 7.2 with a form of the seed bug put back into
# block/stream.c's stream_prepare, for `blockfuzz diff|fuzz --qemu-build DIR`
# (`make qemu-bug` builds both forms under .qemu-bug/):
#
#   scripts/qemu-with-bug.sh stream-prepare-no-drain [WORKDIR]
#   scripts/qemu-with-bug.sh stream-prepare-ref-only [WORKDIR]
#   scripts/qemu-with-bug.sh none [WORKDIR]            # as Debian ships it
#
# no-drain is QEMU between c0829cb1fd and b1e1af394d: neither the subtree
# drain around the graph change nor the reference on the base; ref-only keeps
# the reference and drops the drain (the experiment b1e1af394d's message
# describes). The forms are the model's bugs of the same names
# (reference/bugs.py). Needs root for the source and the build dependencies
# (an apt source list of type deb-src is added when there is none); builds
# only the four binaries the QEMU backend runs, with no devices
# (-machine none needs none): about 3 minutes on two cores. WORKDIR
# defaults to ./qemu-build; the build directory is printed last.
set -euo pipefail
bug=${1:?usage: $0 stream-prepare-no-drain|stream-prepare-ref-only|none [WORKDIR]}
work=$(realpath -m "${2:-qemu-build}")
case $bug in
  stream-prepare-no-drain|stream-prepare-ref-only|none) ;;
  *) echo "$0: unknown bug '$bug': stream-prepare-no-drain, stream-prepare-ref-only or none" >&2
     exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (apt-get source and build-deps)" >&2; exit 2; }

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    > /etc/apt/sources.list.d/debian-src.sources
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends dpkg-dev gcc ninja-build pkg-config meson \
  flex bison python3-venv libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev >/dev/null

mkdir -p "$work"
cd "$work"
src=$work/qemu-7.2
if [ ! -d "$src" ]; then
  apt-get source --download-only qemu=1:7.2+dfsg-7+deb12u18 >/dev/null 2>&1 \
    || apt-get source --download-only qemu >/dev/null
  # Debian's patches applied; the signature is not checked (no keyring for it here)
  dpkg-source --no-check -x ./qemu_7.2*.dsc "$src" >/dev/null 2>&1 \
    || { echo "$0: dpkg-source could not unpack the QEMU source in $work" >&2; exit 1; }
  cp "$src/block/stream.c" "$src/block/stream.c.orig"
fi

# the form asked for, from the pristine file each time
cp "$src/block/stream.c.orig" "$src/block/stream.c"
drop() {   # drop the one line of stream.c that holds this statement
  local n
  n=$(grep -cF -- "$1" "$src/block/stream.c" || true)
  [ "$n" -eq 1 ] || { echo "$0: expected '$1' once in block/stream.c, found it $n times" >&2; exit 1; }
  grep -vF -- "$1" "$src/block/stream.c" > "$src/block/stream.c.new"
  mv "$src/block/stream.c.new" "$src/block/stream.c"
}
case $bug in
  stream-prepare-no-drain)
    drop "bdrv_subtree_drained_begin(s->above_base);"
    drop "bdrv_subtree_drained_end(s->above_base);"
    drop "bdrv_ref(base);"
    drop "bdrv_unref(base);" ;;
  stream-prepare-ref-only)
    drop "bdrv_subtree_drained_begin(s->above_base);"
    drop "bdrv_subtree_drained_end(s->above_base);" ;;
esac

build=$src/build
if [ ! -f "$build/build.ninja" ]; then
  mkdir -p "$build"
  (cd "$build" && ../configure --target-list=x86_64-softmmu --without-default-features \
     --without-default-devices --enable-tools --enable-fdt=system --disable-docs \
     --disable-werror >configure.log 2>&1) \
    || { echo "$0: configure failed: see $build/configure.log" >&2; exit 1; }
fi
ninja -C "$build" qemu-system-x86_64 qemu-img qemu-io storage-daemon/qemu-storage-daemon \
  >"$build/ninja.log" 2>&1 || { echo "$0: build failed: see $build/ninja.log" >&2; exit 1; }
echo "$bug" > "$build/blockfuzz-bug"
echo "$build"
