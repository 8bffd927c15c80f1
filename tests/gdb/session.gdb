# The gdb session tests/gdb.rs runs against btvisor; the expected output
# (guest-images/expected/gdbtest.session) is this script's output against
# QEMU's stub. Everything before the ==begin== marker differs (QEMU starts
# in its BIOS) and is not compared; register lines are compared by value
# (QEMU's target description names EFLAGS' IOPL field, gdbstub_arch's
# does not).
set architecture i386
set pagination off
set confirm off
target remote :@PORT@
break kmain
continue
echo ==begin==\n
info registers eip
# A write watchpoint with paging off: kmain stores the TSS's ESP0.
watch *(int *)((char *)&tss + 4)
continue
info registers eip
x/xw (char *)&tss + 4
delete
# Step through gt_steps: privileged, faulting, INT n, IRET, CLI/STI.
break gt_steps
continue
stepi 4
info registers eip eax ebx
stepi
info registers eip eflags
stepi
info registers eip eflags
stepi
info registers eip eflags
stepi 2
info registers eip ecx
# ud2: the step ends at the #UD handler's first instruction.
stepi
info registers eip
stepi 3
info registers eip eax
# int $0x80: at the handler, then IRET back.
stepi
info registers eip
x/3xw $esp
stepi 3
info registers eip eax
# REP MOVSB steps one iteration at a time.
stepi 4
info registers eip ecx esi edi
stepi
info registers eip ecx
stepi
info registers eip ecx
stepi
info registers eip ecx
stepi
info registers eip edx
# A hardware breakpoint; memory the guest reads stays unchanged.
hbreak gt_bp_site
continue
info registers eip
x/2xb gt_bp_site
delete
# Watchpoints through paging: the alias page at 0x40000000.
break gt_watch_store
continue
info registers eip
x/xw 0x40000010
watch *(int *)0x40000010
continue
info registers eip
stepi
continue
info registers eip
delete
rwatch *(int *)0x40000020
continue
info registers eip eax
delete
# An access watchpoint; register writes reach the guest.
awatch *(int *)0x40000010
set $eax = 0x5a5a5a5a
continue
info registers eip edx
continue
info registers eip
x/xw 0x40000010
delete
# Ring 3.
break gt_user
continue
info registers eip cs ss eflags
stepi 4
info registers eip eax ebx ds
break gt_user_end
continue
info registers eip ebx
delete
# Memory writes reach the guest.
set {int}&gt_var = 42
x/dw &gt_var
x/2xw 0x40000010
continue
