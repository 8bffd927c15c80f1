#!/bin/bash
# Two CPU-bound processes at once in the Linux guest (par.cpio.gz, built by
# guest-images/linux/build.sh): the seconds between the guest's uptime
# readings around them, with -smp 1 and -smp 2, under btvisor and under
# QEMU TCG (-M pc, multi-threaded TCG), and the same two programs run
# natively on the host. The figure of merit is each monitor's -smp 1 time
# over its -smp 2 time (2.0 is a perfect second CPU).
# usage: scripts/smp-compare.sh [RUNS]   (best of RUNS, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
O=guest-images/linux/out
[ -f $O/par.cpio.gz ] || { echo "run guest-images/linux/build.sh first" >&2; exit 1; }
cargo build --release -q
ARGS="-kernel $O/bzImage -initrd $O/par.cpio.gz -append console=ttyS0 -m 256M -display none"
BT="target/release/btvisor -M pc"
QEMU="qemu-system-i386 -accel tcg,thread=multi -M pc -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x4
      -serial stdio -monitor none"
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null

# guest CMD SMP: the guest-measured seconds of the parallel part.
guest() {
    # shellcheck disable=SC2086
    { $1 $ARGS -smp $2 < /dev/null 2>/dev/null || true; } | tr -d '\r' |
        awk '/^PAR-SECONDS/ { printf "%.2f\n", $3 - $2 }'
}
best() { sort -g | head -1; }
usec() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }

declare -A r
for name in bt1 bt2 q1 q2 native; do : > /tmp/smp-$name; done
for i in $(seq 1 "$RUNS"); do
    guest "$BT" 1 >> /tmp/smp-bt1
    guest "$BT" 2 >> /tmp/smp-bt2
    guest "$QEMU" 1 >> /tmp/smp-q1
    guest "$QEMU" 2 >> /tmp/smp-q2
    s=$(usec); $O/bench/cpu > /dev/null & $O/bench/cpu > /dev/null & wait
    echo "scale=2; ($(usec) - $s) / 1000000" | bc >> /tmp/smp-native
done
for name in bt1 bt2 q1 q2 native; do r[$name]=$(best < /tmp/smp-$name); done
printf '%-10s %8s %8s %8s\n' "" "-smp 1" "-smp 2" "speedup"
printf '%-10s %8s %8s %8s\n' btvisor "${r[bt1]}" "${r[bt2]}" "$(echo "scale=2; ${r[bt1]} / ${r[bt2]}" | bc)"
printf '%-10s %8s %8s %8s\n' "QEMU TCG" "${r[q1]}" "${r[q2]}" "$(echo "scale=2; ${r[q1]} / ${r[q2]}" | bc)"
printf '%-10s %8s %8s\n' native "" "${r[native]}"
echo "btvisor -smp 2 against QEMU -smp 2: $(echo "scale=2; ${r[q2]} / ${r[bt2]}" | bc)x faster;" \
     "against native: $(echo "scale=2; ${r[bt2]} / ${r[native]}" | bc)x native's time"
