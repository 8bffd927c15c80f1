# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# gdbtest.elf: the kernel tests/gdb.rs drives gdb against (see kernel.c).
kcc src/gdbtest/asm.S    $B/gdbtest-asm.o
kcc src/gdbtest/kernel.c $B/gdbtest-kernel.o
ld $LDFLAGS -T src/common/link.ld -o gdbtest.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/gdbtest-asm.o $B/gdbtest-kernel.o
