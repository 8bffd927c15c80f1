# Sourced by guest-images/build.sh (cwd = guest-images; B, kcc, LDFLAGS set).
# pmfpu.elf: CR0.TS/EM/MP/NE, CR4.OSFXSR/OSXMMEXCPT, #NM/#UD/#MF/#XM,
# FXSAVE/FXRSTOR and FNSAVE/FRSTOR images (see kernel.c).
kcc src/pmfpu/asm.S    $B/pmfpu-asm.o
kcc src/pmfpu/kernel.c $B/pmfpu-kernel.o
ld $LDFLAGS -T src/common/link.ld -o pmfpu.elf \
    $B/start.o $B/rt.o $B/ktest.o $B/pmfpu-asm.o $B/pmfpu-kernel.o
