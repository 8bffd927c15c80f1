# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# irq.elf: 8259A PICs, 8254 PIT, MC146818 RTC/CMOS and interrupt delivery
# (see kernel.c).
kcc src/irq/asm.S    $B/irq-asm.o
kcc src/irq/kernel.c $B/irq-kernel.o
ld $LDFLAGS -T src/common/link.ld -o irq.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/irq-asm.o $B/irq-kernel.o
