#!/bin/bash
# gdb-idle-cost.sh [RUNS] [ITERS]: the cost of a listening gdb stub with no
# debugger attached (issue 11: within 2%). Runs compute.elf (chained,
# compute-bound) with and without `-gdb tcp:127.0.0.1:PORT`, alternating,
# and prints the best wall time of each and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
iters=${2:-400}
bin=target/release/btvisor
[ -x $bin ] || cargo build --release
best() { sort -n | head -1; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc; }
plain=(); stub=()
for r in $(seq "$runs"); do
    plain+=("$(t $bin -append iters=$iters guest-images/compute.elf)")
    port=$((20000 + RANDOM % 20000))
    stub+=("$(t $bin -gdb tcp:127.0.0.1:$port -append iters=$iters guest-images/compute.elf)")
done
p=$(printf '%s\n' "${plain[@]}" | best)
s=$(printf '%s\n' "${stub[@]}" | best)
printf 'compute.elf iters=%s, best of %s\n' "$iters" "$runs"
printf '  no stub:        %.3f s\n' "$p"
printf '  stub listening: %.3f s\n' "$s"
printf '  ratio:          %.4f\n' "$(echo "$s / $p" | bc -l)"
