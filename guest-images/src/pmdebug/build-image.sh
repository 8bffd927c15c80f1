# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# pmdebug.elf: EFLAGS.TF single-step, DR0-DR7 breakpoints, DR6, RF
# (see kernel.c).
kcc src/pmdebug/asm.S    $B/pmdebug-asm.o
kcc src/pmdebug/kernel.c $B/pmdebug-kernel.o
ld $LDFLAGS -T src/common/link.ld -o pmdebug.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/pmdebug-asm.o $B/pmdebug-kernel.o
