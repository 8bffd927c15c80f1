#!/bin/bash
# Rebuild every guest image into guest-images/<name>.elf (+ hello-aout.bin).
# Also regenerates src/insn/expected.h by running the insn oracle natively,
# and builds the native compute baseline (build/compute-native).
# Built images are committed so tests never need this toolchain.
set -euo pipefail
cd "$(dirname "$0")"

CC=${CC:-gcc}
B=build
mkdir -p "$B"

# Kernel C flags: freestanding, no PIC, no SSE codegen (SSE needs CR4.OSFXSR,
# which the kernels must not touch), no unwind tables (discarded anyway),
# no pattern->memset/memcpy rewriting inside rt.c's own memset/memcpy.
KCFLAGS="-m32 -march=i686 -ffreestanding -fno-pic -fno-pie -nostdlib -fno-stack-protector -O2
  -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -fno-builtin
  -Wall -Wextra -Isrc/common"
LDFLAGS="-m elf_i386 -nostdlib -z max-page-size=0x1000 -z noexecstack --build-id=none"

kcc() { $CC $KCFLAGS -c "$1" -o "$2"; }

echo "== common"
kcc src/common/start.S   $B/start.o
$CC $KCFLAGS -DAOUT_KLUDGE -c src/common/start.S -o $B/start-aout.o
kcc src/common/rt.c      $B/rt.o
kcc src/common/ktest.c   $B/ktest.o

echo "== hello"
kcc src/hello/hello.S $B/hello.o
ld $LDFLAGS -T src/common/link.ld -o hello.elf $B/start.o $B/rt.o $B/hello.o
ld $LDFLAGS -T src/common/link-aout.ld -o hello-aout.bin $B/start-aout.o $B/rt.o $B/hello.o

echo "== smc"
kcc src/smc/smc.S $B/smc.o
ld $LDFLAGS -T src/common/link.ld -o smc.elf $B/start.o $B/rt.o $B/smc.o

echo "== compute"
kcc src/compute/work.c   $B/work.o
kcc src/compute/kernel.c $B/compute-kernel.o
ld $LDFLAGS -T src/common/link.ld -o compute.elf $B/start.o $B/rt.o $B/compute-kernel.o $B/work.o
# Native baseline: same work.c, hosted, as in the benchmark comparison.
$CC -m32 -O2 -Wall -o $B/compute-native src/compute/native_main.c src/compute/work.c

echo "== insn"
# The oracle: run every case on this CPU and record the results. -no-pie and
# a fixed scratch mapping make addresses identical to the kernel's.
$CC -m32 -O2 -no-pie -fno-pie -Wall -o $B/insn-gen src/insn/gen.c
$B/insn-gen > $B/expected.h.tmp
mv $B/expected.h.tmp src/insn/expected.h
kcc src/insn/kernel.c $B/insn-kernel.o
ld $LDFLAGS -T src/common/link.ld -o insn.elf $B/start.o $B/rt.o $B/insn-kernel.o
# insn-sse: same plus SSE/SSE2 cases; sets CR4.OSFXSR (see kernel.c)
$CC $KCFLAGS -DWITH_SSE -c src/insn/kernel.c -o $B/insn-sse-kernel.o
ld $LDFLAGS -T src/common/link.ld -o insn-sse.elf $B/start.o $B/rt.o $B/insn-sse-kernel.o

# Further images each bring their own script (sourced here with B, KCFLAGS,
# LDFLAGS and kcc defined), so new kernels need no edit to this file.
for f in src/*/build-image.sh; do
    [ -e "$f" ] || continue
    echo "== $(basename "$(dirname "$f")")"
    . "$f"
done

echo "built: $(ls *.elf *.bin | tr '\n' ' ')"
