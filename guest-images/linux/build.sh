#!/bin/bash
# Fetches the Linux guest (Debian bookworm's i386 kernel and static BusyBox,
# versions pinned in ./versions) and builds btvisor's initramfs images into
# guest-images/linux/out/:
#   bzImage           the distribution kernel, unmodified
#   batch.cpio.gz     runs batch.sh, leaves through isa-debug-exit
#   shell.cpio.gz     an interactive shell on ttyS0
#   progs.cpio.gz     runs the static test programs of progs/
#   progs/            those programs, to run on the host for comparison
#   bench.cpio.gz     the workload scripts/linux-compare.sh times
#   bench/, busybox   its programs and BusyBox, for the native runs
#   par.cpio.gz       two CPU-bound processes at once (scripts/smp-compare.sh)
# Needs root (apt) on Debian; installs cpio and gcc-multilib when missing.
# Idempotent: packages already fetched are kept.
set -euo pipefail
cd "$(dirname "$0")"
. ./versions
OUT=out
DL=$OUT/debs
mkdir -p "$DL"

fail() { echo "guest-images/linux/build.sh: $*" >&2; exit 1; }

need_pkg() {  # need_pkg COMMAND-OR-FILE PACKAGE
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
        apt_ready
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || fail "cannot install $2 with apt-get"
    fi
}

APT_UPDATED=
apt_ready() {
    [ -n "$APT_UPDATED" ] && return
    command -v apt-get >/dev/null || fail "no apt-get: fetch the Debian packages by hand into $DL (see ./versions)"
    if ! dpkg --print-foreign-architectures | grep -qx i386; then
        dpkg --add-architecture i386 || fail "cannot add the i386 architecture (run as root)"
    fi
    apt-get update -qq || echo "warning: apt-get update reported errors; trying with the lists it has" >&2
    APT_UPDATED=1
}

# fetch NAME VERSION: leaves NAME_*.deb in $DL (the pinned version, or the
# newest the archive has when it dropped that one).
fetch() {
    local name=$1 version=$2
    ls "$DL"/"${name}"_*.deb >/dev/null 2>&1 && return
    apt_ready
    (cd "$DL" && apt-get download -qq "$name:i386=$version" 2>/dev/null) && return
    echo "note: $name $version is no longer in the archive; taking the newest" >&2
    (cd "$DL" && apt-get download -qq "$name:i386") || fail "cannot download $name:i386"
}

kernel_pkg=linux-image-$KERNEL_ABI-$KERNEL_FLAVOUR
if ! ls "$DL"/linux-image-*.deb >/dev/null 2>&1; then
    apt_ready
    if ! apt-cache show "$kernel_pkg:i386" >/dev/null 2>&1; then
        newest=$(apt-cache search --names-only "^linux-image-[0-9.]+-[0-9]+-$KERNEL_FLAVOUR\$" | cut -d' ' -f1 | sort -V | tail -1)
        [ -n "$newest" ] || fail "no linux-image-*-$KERNEL_FLAVOUR package in the archive"
        echo "note: $kernel_pkg is no longer in the archive; taking $newest" >&2
        kernel_pkg=$newest
        KERNEL_VERSION=
    fi
    if [ -n "$KERNEL_VERSION" ]; then fetch "$kernel_pkg" "$KERNEL_VERSION"; else
        (cd "$DL" && apt-get download -qq "$kernel_pkg:i386") || fail "cannot download $kernel_pkg"
    fi
fi
fetch busybox-static "$BUSYBOX_VERSION"

rm -rf "$OUT/x" && mkdir -p "$OUT/x"
dpkg-deb -x "$(ls "$DL"/linux-image-*.deb | head -1)" "$OUT/x/kernel"
dpkg-deb -x "$(ls "$DL"/busybox-static_*.deb | head -1)" "$OUT/x/busybox"
cp "$(ls "$OUT"/x/kernel/boot/vmlinuz-* | head -1)" "$OUT/bzImage"
basename "$(ls "$OUT"/x/kernel/boot/vmlinuz-* | head -1)" > "$OUT/kernel-version"

# Static i386 test programs (their output is compared with a host run).
need_pkg cpio cpio
if ! echo 'int main(void){return 0;}' | gcc -m32 -static -x c -o /dev/null - 2>/dev/null; then
    apt_ready
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-multilib >/dev/null || fail "cannot install gcc-multilib"
fi
# The test programs use SSE2 explicitly; the benchmarks are plain i686
# code, so that QEMU's pentium3 model (no SSE2) runs them too.
for d in progs bench; do
    rm -rf "$OUT/$d" && mkdir -p "$OUT/$d"
    flags="-msse2 -mfpmath=387"
    [ $d = bench ] && flags="-march=i686 -mtune=generic"
    for c in $d/*.c; do
        n=$(basename "$c" .c)
        gcc -m32 -static -O2 $flags -Wall -o "$OUT/$d/$n" "$c" -lm || fail "cannot build $c"
    done
done
cp "$OUT/x/busybox/bin/busybox" "$OUT/busybox"

# image MODE SCRIPT [EXTRA-DIR]: an initramfs with BusyBox and /init.
image() {
    local mode=$1 script=$2 extra=${3:-} root="$OUT/x/root-$1"
    rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc}
    cp "$OUT/x/busybox/bin/busybox" "$root/bin/busybox"
    sed "s/@MODE@/$mode/g" init.sh > "$root/init" && chmod 755 "$root/init"
    [ -n "$script" ] && cp "$script" "$root/run.sh"
    [ -n "$extra" ] && cp -r "$extra" "$root/$(basename "$extra")"
    [ "$mode" = bench ] && cp shell-workload.sh "$root/"
    echo 'PS1="# "' > "$root/etc/profile"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 > "$OUT/$mode.cpio.gz"
}
image batch batch.sh
image shell ""
image progs progs.sh "$OUT/progs"
image bench bench.sh "$OUT/bench"
image par par.sh "$OUT/bench"
rm -rf "$OUT/x"
echo "guest-images/linux/out: $(cat "$OUT/kernel-version"), $(ls "$OUT"/*.cpio.gz | xargs -n1 basename | tr '\n' ' ')"
