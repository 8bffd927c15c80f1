# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# mbinfo.elf: prints where the Multiboot information lies (see kernel.c).
kcc src/mbinfo/kernel.c $B/mbinfo-kernel.o
ld $LDFLAGS -T src/common/link.ld -o mbinfo.elf $B/start.o $B/rt.o $B/mbinfo-kernel.o
