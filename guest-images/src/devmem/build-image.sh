# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# devmem.elf: instructions of every kind on device memory (the VGA text
# window): read-modify-write ALU, XCHG/CMPXCHG/XADD, bit tests, PUSH/POP
# with the stack there, SSE and x87 loads and stores (see kernel.c).
kcc src/devmem/kernel.c $B/devmem-kernel.o
ld $LDFLAGS -T src/common/link.ld -o devmem.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/devmem-kernel.o
