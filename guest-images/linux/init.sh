#!/bin/busybox sh
# /init of btvisor's Linux test images. MODE is set when the image is built:
#   batch  run /batch.sh, print its status, leave through isa-debug-exit
#   shell  an interactive shell with job control on ttyS0
#   progs  run every program in /progs (as batch, with /progs.sh)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
echo "btvisor-init: mode @MODE@"

# isa-debug-exit at port 0xF4: writing V ends the machine with status
# (V << 1) | 1. The batch images write 0x20 + the script's exit status, so a
# passing run ends with status 65 and no guest can pass by crashing.
debug_exit() {
    printf "\\$(printf '%03o' $((0x20 + $1)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}

case "@MODE@" in
shell)
    echo "btvisor-init: shell on ttyS0 (poweroff -f to leave)"
    setsid cttyhack sh -l
    poweroff -f
    ;;
*)
    sh /run.sh
    rc=$?
    echo "btvisor-init: done, status $rc"
    debug_exit $rc
    ;;
esac
