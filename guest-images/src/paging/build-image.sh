# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# paging.elf: two-level paging, #PF error codes/CR2, A/D bits, 4M pages,
# global pages, INVLPG, CR3 switches, SMC through aliases (see kernel.c).
kcc src/paging/asm.S    $B/paging-asm.o
kcc src/paging/kernel.c $B/paging-kernel.o
ld $LDFLAGS -T src/common/link.ld -o paging.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/paging-asm.o $B/paging-kernel.o
