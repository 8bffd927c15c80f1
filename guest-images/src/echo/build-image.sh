# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# echo.elf: COM1 receive interrupts (IRQ 4); echoes input in upper case,
# `q` ends it (see kernel.c).
kcc src/echo/asm.S    $B/echo-asm.o
kcc src/echo/kernel.c $B/echo-kernel.o
ld $LDFLAGS -T src/common/link.ld -o echo.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/echo-asm.o $B/echo-kernel.o
