#!/bin/bash
# icount-compare.sh [RUNS]: the cost of -icount (deterministic time, chained
# blocks with an instruction budget) against a normal run, best of RUNS:
# compute.elf (CPU-bound) and, if built, the Linux batch image (boot and a
# BusyBox workload; under icount its idle time and sleeps are skipped, so
# that figure mixes speed and skipped waiting).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bin=target/release/btvisor
[ -x $bin ] || cargo build --release
best() { sort -n | head -1; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 </dev/null || true; e=$(date +%s.%N); echo "$e - $s" | bc; }
row() {  # row NAME ARGS...: best normal, best icount, ratio
    local name=$1; shift
    local a=() b=()
    for r in $(seq "$runs"); do
        a+=("$(t $bin "$@")")
        b+=("$(t $bin -icount shift=1 "$@")")
    done
    local x y
    x=$(printf '%s\n' "${a[@]}" | best)
    y=$(printf '%s\n' "${b[@]}" | best)
    printf '%-28s %8.3f s %8.3f s %8.3f\n' "$name" "$x" "$y" "$(echo "$y / $x" | bc -l)"
}
printf '%-28s %10s %10s %8s\n' "workload (best of $runs)" normal icount ratio
row "compute.elf iters=400" -serial null -append iters=400 guest-images/compute.elf
L=guest-images/linux/out
if [ -f $L/bzImage ]; then
    row "Linux batch image" -kernel $L/bzImage -initrd $L/batch.cpio.gz -append console=ttyS0 -m 256M -serial null
fi
