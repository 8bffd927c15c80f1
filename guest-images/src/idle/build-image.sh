# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# idle.elf: 1000 Hz PIT tick, `sti; hlt` idle loop for `secs=N` seconds
# (default 2); measures host CPU use while idle (scripts/idle-compare.sh).
# Shares echo's interrupt entry stubs (src/echo/asm.S).
kcc src/echo/asm.S    $B/idle-asm.o
kcc src/idle/kernel.c $B/idle-kernel.o
ld $LDFLAGS -T src/common/link.ld -o idle.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/idle-asm.o $B/idle-kernel.o
