# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# lapic.elf: the local APIC of a one-CPU PC (see kernel.c).
kcc src/lapic/asm.S    $B/lapic-asm.o
kcc src/lapic/kernel.c $B/lapic-kernel.o
ld $LDFLAGS -T src/common/link.ld -o lapic.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/lapic-asm.o $B/lapic-kernel.o
