#!/bin/bash
# Side-by-side timing of the Linux guest (guest-images/linux/out, built by
# guest-images/linux/build.sh) under btvisor, under QEMU TCG
# (qemu-system-i386 -accel tcg -M isapc -cpu pentium3,-apic; Debian's
# qemu-system-x86) and, where one exists, natively on the host:
#   boot      start to the first userspace line (/init's banner)
#   pnp       the kernel's ISA PnP scan (its own clock): wall-clock udelays,
#             about 0.35 s under any machine without ISA PnP cards
#   boot-pnp  boot less that scan
#   shell     the BusyBox shell workload (shell-workload.sh)
#   cpu       the CPU-bound static program (bench/cpu.c)
#   lmbench   the micro-benchmarks (bench/lmbench.c), ns per operation
#             (qsort: ns per whole sort of 2^16 numbers, best of 20)
# Wall-clock times of console lines are taken as they arrive on the host.
# usage: scripts/linux-compare.sh [RUNS]   (best of RUNS, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
O=guest-images/linux/out
[ -f $O/bench.cpio.gz ] || { echo "run guest-images/linux/build.sh first" >&2; exit 1; }
cargo build --release -q
BT="target/release/btvisor -m 256M -display none"
QEMU="qemu-system-i386 -accel tcg -M isapc -cpu pentium3,-apic -m 256M -display none -no-reboot
      -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -monitor none"
ARGS="-kernel $O/bzImage -initrd $O/bench.cpio.gz -append console=ttyS0"

# Microseconds since the epoch, from bash itself (no process per line, so
# the timestamps are taken as the lines arrive).
usec() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }
secs() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }

# One run: prints "boot S", "shell S", "cpu S" and the lmbench lines.
run() {
    local start t0=0 t k p0=0
    start=$(usec)
    # The guests leave with status 65 (isa-debug-exit, /init succeeded).
    # shellcheck disable=SC2086
    { $1 $ARGS < /dev/null 2>/dev/null || true; } | while IFS= read -r line; do
        t=${EPOCHREALTIME/./}; t=$((10#$t - start))
        line=${line%$'\r'}
        case "$line" in
        *"isapnp: Scanning"* | *"isapnp: No Plug"*)
            # The kernel's own clock (seconds.micro) at both ends of the
            # ISA PnP scan: wall-clock udelays, as long under any machine.
            k=${line#*[}; k=${k%%]*}; k=${k// /}; k=$((10#${k%.*} * 1000000 + 10#${k#*.}))
            case "$line" in *Scanning*) p0=$k ;; *) echo "pnp $(secs $((k - p0)))" ;; esac ;;
        *"btvisor-init: mode"*) echo "boot $(secs $t)" ;;
        BENCH-*-START) t0=$t ;;
        BENCH-SHELL-END) echo "shell $(secs $((t - t0)))" ;;
        BENCH-CPU-END) echo "cpu $(secs $((t - t0)))" ;;
        "syscall "* | "fork+"* | "pipe "* | "page "* | "mmap+"* | "qsort "*) echo "lm:$line" ;;
        esac
    done
}

best() {  # best NAME FILE: the smallest value of NAME over the runs (empty if none)
    { grep "^$1 " "$2" || true; } | awk '{print $2}' | sort -g | head -1
}

command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
T=$(mktemp -d); echo "raw results in $T" >&2
for i in $(seq 1 "$RUNS"); do
    run "$BT" >> $T/bt
    run "$QEMU" >> $T/qemu
    ( mkdir -p $T/bb; $O/busybox --install -s $T/bb
      start=$(usec); PATH=$T/bb $T/bb/sh guest-images/linux/shell-workload.sh > /dev/null
      echo "shell $(secs $(($(usec) - start)))"
      start=$(usec); $O/bench/cpu > /dev/null; echo "cpu $(secs $(($(usec) - start)))"
      $O/bench/lmbench | sed 's/^/lm:/' ) >> $T/native
done

# Boot less its ISA PnP scan (the same wall-clock wait under both), per run.
for m in bt qemu; do
    paste -d' ' <(grep '^boot ' $T/$m | awk '{print $2}') <(grep '^pnp ' $T/$m | awk '{print $2}') |
        awk 'NF == 2 { printf "boot-pnp %.6f\n", $1 - $2 }' >> $T/$m
done
printf '%-22s %12s %12s %12s %10s %10s\n' figure btvisor qemu-tcg native qemu/bt bt/native
for f in boot boot-pnp pnp shell cpu; do
    b=$(best $f $T/bt); q=$(best $f $T/qemu); n=$(best $f $T/native); n=${n:--}
    r1=$(echo "scale=2; $q / $b" | bc)
    r2=$([ "$n" = - ] && echo - || echo "scale=2; $b / $n" | bc)
    printf '%-22s %11ss %11ss %11s%s %10s %10s\n' $f $b $q $n "$([ "$n" = - ] || echo s)" "$r1" "$r2"
done
for k in "syscall int80" "syscall vdso" "fork+exit+wait" "fork+exec" "pipe round trip" "page fault" "mmap+munmap" \
    "qsort random" "qsort sorted"; do
    g() { { grep "^lm:$k " "$1" || true; } | awk '{print $(NF-1)}' | sort -g | head -1; }
    b=$(g $T/bt); q=$(g $T/qemu); n=$(g $T/native)
    printf '%-22s %10sns %10sns %10sns %10s %10s\n' "$k" $b $q $n "$(echo "scale=2; $q / $b" | bc)" "$(echo "scale=2; $b / $n" | bc)"
done
[ -n "${KEEP:-}" ] || rm -rf "$T"
