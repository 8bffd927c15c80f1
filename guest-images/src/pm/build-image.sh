# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# pm.elf: protected-mode system architecture (GDT/IDT/TSS, exceptions,
# rings, segmentation, I/O permissions, SYSENTER; see kernel.c).
kcc src/pm/asm.S    $B/pm-asm.o
kcc src/pm/kernel.c $B/pm-kernel.o
ld $LDFLAGS -T src/common/link.ld -o pm.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/pm-asm.o $B/pm-kernel.o
