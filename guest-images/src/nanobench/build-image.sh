# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# nanobench.elf: cycles per privileged operation (see kernel.c).
kcc src/nanobench/cpu.S    $B/nanobench-cpu.o
kcc src/nanobench/kernel.c $B/nanobench-kernel.o
ld $LDFLAGS -T src/common/link.ld -o nanobench.elf \
    $B/start.o $B/rt.o $B/nanobench-cpu.o $B/nanobench-kernel.o
