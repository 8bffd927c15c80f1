# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# pmtask.elf: hardware task switches through TSS descriptors and task gates
# (JMP, CALL/IRET nesting, INT via task gate, #DF task; see kernel.c).
kcc src/pmtask/asm.S    $B/pmtask-asm.o
kcc src/pmtask/kernel.c $B/pmtask-kernel.o
ld $LDFLAGS -T src/common/link.ld -o pmtask.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/pmtask-asm.o $B/pmtask-kernel.o
