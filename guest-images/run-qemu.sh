#!/bin/bash
# run-qemu.sh NAME [APPEND...]: boot guest-images/NAME.elf (or NAME.bin)
# under QEMU, serial on stdout, exit status from isa-debug-exit ((V<<1)|1).
# Without APPEND args, expected/NAME.args (if present) supplies the command
# line, exactly as tests/boot_images.rs does for btvisor.
# Runs from the repo root with a relative image path: QEMU's Multiboot
# cmdline is "<kernel path> <append>", so the path is part of the output.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
name=${1:?usage: run-qemu.sh NAME [APPEND...]}
shift
img=guest-images/$name.elf
[ -f "$img" ] || img=guest-images/$name.bin
[ -f "$img" ] || { echo "no image for $name" >&2; exit 2; }
if [ $# -gt 0 ]; then
    append="$*"
elif [ -f "guest-images/expected/$name.args" ]; then
    append=$(cat "guest-images/expected/$name.args")
else
    append=""
fi
args=(-kernel "$img" -device isa-debug-exit,iobase=0xf4,iosize=4
      -serial stdio -display none -no-reboot -m 128M -accel tcg ${QEMU_EXTRA:-})
[ -n "$append" ] && args+=(-append "$append")
exec qemu-system-i386 "${args[@]}"
