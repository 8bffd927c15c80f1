#!/bin/bash
# bench-compare.sh [ITERS] [RUNS]: time the compute workload under
#   (a) target/release/btvisor   (skipped if not built)
#   (b) qemu-system-i386 -accel tcg
#   (c) the native gcc -m32 -O2 build of the same work.c
# Runs alternate (a,b,c,a,b,c,...) so machine-load drift hits all alike.
# Prints median wall time per runner and btvisor/native, qemu/btvisor.
# Default ITERS makes the native run take about 1 s on the dev machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ITERS=${1:-500}
RUNS=${2:-5}
IMG=guest-images/compute.elf
BTV=${BTVISOR:-target/release/btvisor}   # override to compare another build
NATIVE=guest-images/build/compute-native

if [ ! -x "$NATIVE" ]; then
    # build.sh makes it; build just this binary if it is missing
    mkdir -p guest-images/build
    gcc -m32 -O2 -o "$NATIVE" guest-images/src/compute/native_main.c guest-images/src/compute/work.c
fi

runners=()
[ -x "$BTV" ] && runners+=(btvisor) || echo "note: $BTV not built, skipping it" >&2
command -v qemu-system-i386 >/dev/null && runners+=(qemu) || echo "note: no qemu-system-i386" >&2
runners+=(native)

run_one() {
    case $1 in
    btvisor) "$BTV" -serial stdio "$IMG" -append "iters=$ITERS" ;;
    qemu) qemu-system-i386 -accel tcg -kernel "$IMG" -append "iters=$ITERS" \
            -device isa-debug-exit,iobase=0xf4,iosize=4 -serial stdio \
            -display none -no-reboot -m 128M ;;
    native) "$NATIVE" "iters=$ITERS" ;;
    esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for ((i = 1; i <= RUNS; i++)); do
    for r in "${runners[@]}"; do
        t0=$(date +%s.%N)
        # guests exit with status (V<<1)|1, so only the output is checked
        run_one "$r" > "$tmp/$r.out" || true
        t1=$(date +%s.%N)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >> "$tmp/$r.times"
        printf '%-8s run %d: %6.3f s\n' "$r" "$i" "$(tail -1 "$tmp/$r.times")" >&2
    done
done

# all runners must agree on the checksums, or the timing is meaningless
for r in "${runners[@]}"; do
    if ! cmp -s "$tmp/$r.out" "$tmp/native.out"; then
        echo "WARNING: $r output differs from native:" >&2
        diff "$tmp/native.out" "$tmp/$r.out" >&2 || true
    fi
done

median() { sort -g "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "compute iters=$ITERS, median of $RUNS runs (wall seconds):"
declare -A med
for r in "${runners[@]}"; do
    med[$r]=$(median "$tmp/$r.times")
    printf '  %-8s %8.3f\n' "$r" "${med[$r]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
if [ -n "${med[btvisor]:-}" ]; then
    echo "  btvisor/native: $(ratio "${med[btvisor]}" "${med[native]}")x"
    [ -n "${med[qemu]:-}" ] && echo "  qemu/btvisor:   $(ratio "${med[qemu]}" "${med[btvisor]}")x"
fi
[ -n "${med[qemu]:-}" ] && echo "  qemu/native:    $(ratio "${med[qemu]}" "${med[native]}")x"
exit 0
