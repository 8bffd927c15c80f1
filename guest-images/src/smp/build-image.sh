# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# smp.elf: a PC with several CPUs (see kernel.c).
kcc src/smp/asm.S    $B/smp-asm.o
kcc src/smp/kernel.c $B/smp-kernel.o
ld $LDFLAGS -T src/common/link.ld -o smp.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/smp-asm.o $B/smp-kernel.o
