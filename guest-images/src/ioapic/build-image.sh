# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# ioapic.elf: the I/O APIC of a one-CPU PC (see kernel.c).
kcc src/ioapic/asm.S    $B/ioapic-asm.o
kcc src/ioapic/kernel.c $B/ioapic-kernel.o
ld $LDFLAGS -T src/common/link.ld -o ioapic.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/ioapic-asm.o $B/ioapic-kernel.o
