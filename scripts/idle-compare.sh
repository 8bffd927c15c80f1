#!/bin/bash
# idle-compare.sh [SECS] [RUNS]: host CPU use of an idle guest. Boots
# guest-images/idle.elf (1000 Hz PIT tick, `sti; hlt` loop for SECS seconds,
# default 5) under
#   (a) target/release/btvisor   (skipped if not built)
#   (b) qemu-system-i386 -accel tcg
# RUNS times each (default 3), alternating so load drift hits both alike,
# plus a secs=0 run each time (boot and exit only) to size start-up costs.
# Each run's wall time comes from $EPOCHREALTIME, its CPU time (user+sys of
# the VMM and everything it waited for) from the shell's `times` before and
# after (millisecond resolution). Prints per-run figures (stderr), then for
# each runner the median wall and CPU seconds and median CPU seconds per
# wall second (% of one core), the same net of start-up
# ((cpu - cpu0) / (wall - wall0) over the medians), and btvisor/qemu.
# stdin is /dev/null: with -serial stdio both VMMs would read a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-5}
RUNS=${2:-3}
IMG=guest-images/idle.elf
BTV=${BTVISOR:-target/release/btvisor}   # override to compare another build

runners=()
[ -x "$BTV" ] && runners+=(btvisor) || echo "note: $BTV not built, skipping it" >&2
command -v qemu-system-i386 >/dev/null && runners+=(qemu) || echo "note: no qemu-system-i386" >&2
[ ${#runners[@]} -gt 0 ] || { echo "nothing to run" >&2; exit 1; }
[ -f "$IMG" ] || { echo "no $IMG (guest-images/build.sh builds it)" >&2; exit 1; }

# run_one RUNNER SECS
run_one() {
    case $1 in
    btvisor) "$BTV" -serial stdio "$IMG" -append "secs=$2" ;;
    qemu) qemu-system-i386 -accel tcg -kernel "$IMG" -append "secs=$2" \
            -device isa-debug-exit,iobase=0xf4,iosize=4 -serial stdio \
            -display none -no-reboot -m 128M ;;
    esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Children's user+sys seconds from a saved `times` output (second line,
# "XmY.YYYs XmY.YYYs"). `times` itself runs redirected in this shell right
# around each run: in a $(...) subshell it would report that subshell's
# children, and parsing inside the interval would count the parser too.
child_cpu() {
    awk 'NR == 2 {
        s = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
        printf "%.3f\n", s
    }' "$1"
}

# measure RUNNER SECS LABEL: one run, appends "wall cpu cpu/wall" to
# $tmp/RUNNER.SECS and reports it on stderr
measure() {
    local r=$1 secs=$2 label=$3 status=0 w0 w1 c0 c1 w c f
    times > "$tmp/times.before"
    w0=$EPOCHREALTIME
    run_one "$r" "$secs" < /dev/null > "$tmp/out" || status=$?
    w1=$EPOCHREALTIME
    times > "$tmp/times.after"
    c0=$(child_cpu "$tmp/times.before")
    c1=$(child_cpu "$tmp/times.after")
    if [ "$status" -ne 1 ] || [ "$(cat "$tmp/out")" != "idle done" ]; then
        echo "WARNING: $r secs=$secs $label: exit status $status, output:" >&2
        cat "$tmp/out" >&2
    fi
    read -r w c f < <(awk -v w0="$w0" -v w1="$w1" -v c0="$c0" -v c1="$c1" \
        'BEGIN { w = w1 - w0; c = c1 - c0; printf "%.3f %.3f %.5f\n", w, c, c / w }')
    echo "$w $c $f" >> "$tmp/$r.$secs"
    printf '%-8s secs=%-3s %-7s wall %7.3f s  cpu %6.3f s  %6.2f%% of a core\n' \
        "$r" "$secs" "$label" "$w" "$c" "$(awk -v f="$f" 'BEGIN { print f * 100 }')" >&2
}

for ((i = 1; i <= RUNS; i++)); do
    for r in "${runners[@]}"; do
        measure "$r" 0 "run $i"
        measure "$r" "$SECS" "run $i"
    done
done

# median FILE COLUMN
median() { awk -v k="$2" '{ print $k }' "$1" | sort -g |
    awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
pct() { awk -v f="$1" 'BEGIN { printf "%.2f%%", f * 100 }'; }

echo "idle secs=$SECS (1000 Hz tick, sti;hlt), median of $RUNS runs:"
printf '  %-8s %8s %8s %10s   %s\n' runner "wall s" "cpu s" "cpu/wall" "net of start-up (secs=0: wall s, cpu s)"
declare -A frac net
for r in "${runners[@]}"; do
    f=$tmp/$r.$SECS f0=$tmp/$r.0
    w=$(median "$f" 1) c=$(median "$f" 2) w0=$(median "$f0" 1) c0=$(median "$f0" 2)
    frac[$r]=$(median "$f" 3)
    net[$r]=$(awk -v w="$w" -v c="$c" -v w0="$w0" -v c0="$c0" 'BEGIN { printf "%.5f", (c - c0) / (w - w0) }')
    printf '  %-8s %8.3f %8.3f %10s   %8s  (%.3f, %.3f)\n' "$r" "$w" "$c" \
        "$(pct "${frac[$r]}")" "$(pct "${net[$r]}")" "$w0" "$c0"
done
if [ -n "${frac[btvisor]:-}" ] && [ -n "${frac[qemu]:-}" ]; then
    awk -v a="${frac[btvisor]}" -v b="${frac[qemu]}" -v na="${net[btvisor]}" -v nb="${net[qemu]}" 'BEGIN {
        printf "  btvisor/qemu CPU per wall second: %s", (b > 0) ? sprintf("%.2fx", a / b) : "n/a"
        printf ", net of start-up: %s\n", (nb > 0) ? sprintf("%.2fx", na / nb) : "n/a" }'
fi
exit 0
