#!/bin/bash
# IPI round trips between two vCPUs and local APIC timer interrupts, under
# btvisor and QEMU TCG (-M pc -smp 2), side by side: guest-images/smp.elf
# with bench=N measures N of each and prints host TSC ticks per event
# (RDTSC runs natively under btvisor and reads the host's TSC under TCG).
# usage: scripts/smp-ipi-compare.sh [RUNS] [N]   (best of RUNS, default 5; N 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
N=${2:-2000}
cargo build --release -q
IMG=guest-images/smp.elf
bt() { target/release/btvisor -M pc -smp 2 -serial stdio -display none -kernel $IMG -append "bench=$N" 2>/dev/null || true; }
qemu() {
    qemu-system-i386 -accel tcg -M pc -smp 2 -m 128M -display none -no-reboot -serial stdio -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel $IMG -append "bench=$N" 2>/dev/null || true
}
T=$(mktemp -d)
for i in $(seq 1 "$RUNS"); do
    bt >> $T/bt
    qemu >> $T/qemu
done
best() { { grep "^$1" "$2" || true; } | awk '{print $NF}' | sort -n | head -1; }
printf '%-28s %10s %10s %8s\n' "ticks per event (best of $RUNS)" btvisor "QEMU TCG" "QEMU/bt"
for row in "ipi round trip" "apic timer interrupt"; do
    b=$(best "$row" $T/bt); q=$(best "$row" $T/qemu)
    printf '%-28s %10s %10s %8s\n' "$row" "$b" "$q" "$(awk -v b="$b" -v q="$q" 'BEGIN { printf "%.2f", q / b }')"
done
rm -rf "$T"
