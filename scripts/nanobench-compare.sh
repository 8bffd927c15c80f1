#!/bin/bash
# nanobench-compare.sh [APPEND...]: run guest-images/nanobench.elf under
#   (a) target/release/btvisor       (skipped if not built; failure reported)
#   (b) qemu-system-i386 -accel tcg
# and print cycles per operation side by side, with the VMware BT figures
# of Adams & Agesen (ASPLOS 2006) where we have them. Builds nothing.
# APPEND goes to the kernel command line, e.g. "n=200000 pn=20000 reps=7
# ser=2", or "paging=0" for the rows that need no paging, run with paging
# off (see guest-images/src/nanobench/kernel.c). BTVISOR=path overrides the
# btvisor binary; TIMEOUT=seconds bounds each run (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."

IMG=guest-images/nanobench.elf
BTV=${BTVISOR:-target/release/btvisor}
TIMEOUT=${TIMEOUT:-300}
APPEND="$*"

[ -f "$IMG" ] || { echo "no $IMG (run guest-images/build.sh)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

append_args=()
[ -n "$APPEND" ] && append_args=(-append "$APPEND")

# run NAME CMD...: output to $tmp/NAME.out; prints a note unless the guest
# exited with V=0 (status 1) and printed at least one result line.
run() {
    local name=$1
    shift
    timeout "$TIMEOUT" "$@" > "$tmp/$name.out" 2> "$tmp/$name.err"
    local st=$?
    if [ $st -ne 1 ] || ! grep -q ' cycles$' "$tmp/$name.out"; then
        if [ $st -eq 124 ]; then
            echo "$name: failed (timed out after ${TIMEOUT}s)"
        else
            echo "$name: failed (status $st)"
        fi
        sed 's/^/    /' "$tmp/$name.out" "$tmp/$name.err" | head -20
        return 1
    fi
    touch "$tmp/$name.ok"
}

if [ -x "$BTV" ]; then
    # -M pc: the local APIC, as QEMU's default machine has (ipi, apic timer rows).
    run btvisor "$BTV" -M pc "$IMG" "${append_args[@]}"
else
    echo "btvisor: $BTV not built, skipped"
fi
if command -v qemu-system-i386 > /dev/null; then
    run qemu qemu-system-i386 -accel tcg -kernel "$IMG" "${append_args[@]}" \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -serial stdio \
        -display none -no-reboot -m 128M
else
    echo "qemu: qemu-system-i386 not installed, skipped"
fi

# "NAME: C cycles" -> C, or empty if the runner failed / lacks the line
value() {
    [ -f "$tmp/$1.ok" ] || return 0
    awk -v k="$2" -F': ' '$1 == k && / cycles$/ { sub(/ cycles$/, "", $2); print $2; exit }' "$tmp/$1.out"
}

# VMware BT on the paper's Pentium 4 (cycles); only the figures we have.
declare -A paper=([call/ret]=51 [in]=214 [divzero]=3223 [pgfault]=3927 [ptemod]=391)

# rows: in the order the kernel prints them (QEMU's output, else btvisor's)
src=qemu
[ -f "$tmp/qemu.ok" ] || src=btvisor
names=()
if [ -f "$tmp/$src.ok" ]; then
    mapfile -t names < <(awk -F': ' '/ cycles$/ { print $1 }' "$tmp/$src.out")
    echo
    echo "$(grep -m1 '^nanobench:' "$tmp/$src.out") (cycles per operation, empty loop subtracted)"
fi
[ ${#names[@]} -gt 0 ] || names=(empty empty3 syscall cli+sti pushf+popf in out call/ret divzero irq \
    pgfault ptemod cr3 ctxsw)

printf '%-12s %10s %10s %9s %12s\n' benchmark btvisor QEMU ratio "VMware BT*"
printf '%-12s %10s %10s %9s %12s\n' ------------ ---------- ---------- --------- ------------
for n in "${names[@]}"; do
    b=$(value btvisor "$n")
    q=$(value qemu "$n")
    r=""
    if [ -n "$b" ] && [ -n "$q" ]; then
        r=$(awk -v b="$b" -v q="$q" 'BEGIN { if (q > 0) printf "%.2f", b / q; else print "-" }')
    fi
    label=$n
    case $n in
    empty) label="empty (raw)" ;;
    empty3) label="empty3 (raw)" ;;
    esac
    printf '%-12s %10s %10s %9s %12s\n' "$label" "${b:--}" "${q:--}" "${r:--}" "${paper[$n]:-}"
done
echo "ratio = btvisor / QEMU. empty/empty3: raw cycles per iteration of the"
echo "empty loop at ring 0 / ring 3 (subtracted from the other rows)."
echo "All rows run with paging on (4 KiB pages) unless APPEND has paging=0."
echo "pgfault: CPL-3 read of a not-present page, #PF, handler sets P, IRET,"
echo "  read completes; each fault also unmaps the previous page (clear P +"
echo "  INVLPG). ptemod: PTE store + INVLPG. cr3: MOV to CR3, same value."
echo "ctxsw: CR3 switch to the other of two address spaces + one read from"
echo "  each of 64 pages. These four run pn iterations (default n/10)."
echo "* Adams & Agesen, ASPLOS 2006, VMware's binary translator, cycles on"
echo "  their Pentium 4 host: a different CPU, for orders of magnitude only."

# TSC caveat
mhz=$(dmesg 2> /dev/null | sed -n 's/.*Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
[ -n "$mhz" ] || mhz=$(dmesg 2> /dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -1)
how="kernel log"
if [ -z "$mhz" ]; then
    mhz=$(awk -F': ' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
    how="/proc/cpuinfo 'cpu MHz', may differ from the TSC rate"
fi
flags=$(grep -m1 '^flags' /proc/cpuinfo)
tscok=yes
for f in constant_tsc nonstop_tsc; do
    [[ " $flags " == *" $f "* ]] || tscok=no
done
echo
echo "TSC: host TSC ${mhz:-unknown} MHz ($how); constant/nonstop TSC: $tscok."
echo "  Under QEMU TCG the guest's RDTSC returns the host TSC (plus an offset),"
echo "  and btvisor's RDTSC passes the host TSC through, so both columns count"
echo "  the same host TSC ticks and are directly comparable. TSC ticks are not"
echo "  core clock cycles when the core runs at another frequency (turbo, power"
echo "  saving, a shared/virtualized host), and the host is shared: re-run and"
echo "  raise n/reps if figures look noisy."
exit 0
