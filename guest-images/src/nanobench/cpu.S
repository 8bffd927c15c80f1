/*
 * nanobench: descriptor-table glue, ring transitions, exception/interrupt
 * entry points and the timed loops. kernel.c builds the GDT/IDT/TSS and
 * calls these.
 *
 * Selectors (must match kernel.c): 0x08 ring-0 code, 0x10 ring-0 data,
 * 0x1B ring-3 code, 0x23 ring-3 data, 0x28 TSS.
 *
 * With paging on, only what runs or is touched at CPL 3 is user-accessible:
 * the code between user_text_start and user_text_end (ring3_entry and the
 * ring-3 loops), ser_mode and the run_at_ring3 mailbox between
 * user_data_start and user_data_end, and the user stack between
 * user_bss_start and user_bss_end. Each block is page-aligned and padded to
 * a page boundary so that no supervisor code or data shares its pages;
 * kernel.c maps everything else supervisor-only.
 */
#include "nanobench.h"

#define KCODE 0x08
#define KDATA 0x10
#define UCODE 0x1B
#define UDATA 0x23

    .text

/* void load_segments(void): reload CS/DS/ES/FS/GS/SS from the new GDT. */
    .globl load_segments
load_segments:
    ljmp $KCODE, $1f
1:  movw $KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    ret

/* ------------------------------------------------------------------ */
/* Ring 3                                                              */
/* ------------------------------------------------------------------ */

/*
 * uint64_t run_at_ring3(uint64_t (*fn)(uint32_t), uint32_t arg)
 * IRETs to ring 3 on user_stack, calls fn(arg) there, and comes back with
 * INT 0x81 (ring3_return), which discards that interrupt frame and returns
 * fn's result to our caller as if this were an ordinary call.
 */
    .globl run_at_ring3
run_at_ring3:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl 20(%esp), %eax
    movl %eax, user_fn
    movl 24(%esp), %eax
    movl %eax, user_arg
    movl %esp, kernel_saved_esp
    /* IRET to CPL 3 nulls data segment registers whose DPL < 3, so load
       the ring-3 data selector first (allowed at CPL 0: DPL 3 >= CPL). */
    movw $UDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    pushl $UDATA                /* SS */
    pushl $user_stack_top       /* ESP */
    pushfl                      /* EFLAGS: IF=0, IOPL=0 as now */
    andl $~0x3000, (%esp)
    pushl $UCODE                /* CS */
    pushl $ring3_entry          /* EIP */
    iret

/* INT 0x81 (DPL 3 interrupt gate): back to run_at_ring3's caller, at CPL 0
   on the TSS ESP0 stack; the frame there is simply abandoned. */
    .globl ring3_return
ring3_return:
    movw $KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movl kernel_saved_esp, %esp
    movl user_ret, %eax
    movl user_ret + 4, %edx
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

/* ------------------------------------------------------------------ */
/* Handlers being measured                                             */
/* ------------------------------------------------------------------ */

/* INT 0x80 (DPL 3 interrupt gate): the null system call. */
    .globl syscall_handler
    .p2align 4
syscall_handler:
    iret

/*
 * #DE: skip the faulting DIV/IDIV r/m32 with a register operand (F7 /6 or
 * F7 /7, mod = 11: two bytes) and return. Anything else is unexpected and
 * goes to the fatal path, so a wrong saved EIP cannot loop forever.
 */
    .globl de_handler
    .p2align 4
de_handler:
    pushl %eax
    pushl %edx
    movl 8(%esp), %eax          /* saved EIP */
    cmpb $0xF7, (%eax)
    jne 1f
    movzbl 1(%eax), %edx
    andl $0xF0, %edx            /* mod = 11, reg = 110 or 111 */
    cmpl $0xF0, %edx
    jne 1f
    addl $2, 8(%esp)
    popl %edx
    popl %eax
    iret
1:  popl %edx
    popl %eax
    pushl $0                    /* error code */
    pushl $0                    /* vector */
    jmp exc_common

/*
 * #PF for pgfault: ring-3 code read a not-present page PGF_VA + k*4096,
 * k = 0 or 1 (error code: user, read, not present). Set P in its PTE (no
 * INVLPG needed: a not-present entry is never cached in the TLB), clear P
 * in the other page's PTE and INVLPG that page, then IRET to re-execute the
 * read, which now completes. So each fault both maps one page and unmaps
 * the other: nb_pgfault alternates between the two, and every one of its
 * iterations is one fault round trip + one map + one unmap. Any other
 * page fault is fatal (exc_fatal prints CR2).
 */
    .globl pf_handler
    .p2align 4
pf_handler:
    pushl %eax
    pushl %edx
    movl 8(%esp), %eax          /* error code */
    andl $0x7, %eax             /* P, W/R, U/S */
    cmpl $0x4, %eax             /* user read of a not-present page */
    jne 1f
    movl %cr2, %eax
    movl %eax, %edx
    andl $~(2 * PAGE_SIZE - 1), %edx
    cmpl $PGF_VA, %edx
    jne 1f
    incl pf_count               /* kernel.c checks one fault per iteration */
    shrl $12, %eax
    andl $1, %eax               /* k */
    orl $PTE_P, test_pt + 4 * PGF_IDX(, %eax, 4)
    xorl $1, %eax
    andl $~PTE_P, test_pt + 4 * PGF_IDX(, %eax, 4)
    shll $12, %eax
    invlpg PGF_VA(%eax)
    popl %edx
    popl %eax
    addl $4, %esp               /* error code */
    iret
1:  popl %edx
    popl %eax
    pushl $14                   /* vector; the CPU pushed the error code */
    jmp exc_common

/* ------------------------------------------------------------------ */
/* Everything else: report and exit                                    */
/* ------------------------------------------------------------------ */

/* 256 stubs, 16 bytes apart (kernel.c computes isr_stubs + 16 * vector).
   Each pushes a dummy error code where the CPU pushes none, then the
   vector number. */
    .p2align 4
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21)
    .else
    pushl $0
    .endif
    pushl $vec
    jmp exc_common
    .set vec, vec + 1
    .endr

exc_common:
    pushal
    movw $KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    pushl %esp                  /* struct exc_frame * */
    call exc_fatal              /* does not return */
1:  jmp 1b

/* ------------------------------------------------------------------ */
/* Timed loops: uint64_t nb_X(uint32_t n), n >= 1                      */
/* ------------------------------------------------------------------ */

/*
 * Serialization around RDTSC, chosen at run time by ser_mode:
 * 0 none, 1 CPUID (default), 2 LFENCE. Its cost (and that of the loop
 * control) is removed by subtracting the empty loop, measured the same way.
 * Clobbers EAX..EDX and flags.
 */
.macro SERIALIZE
    cmpl $1, ser_mode
    jb 8f
    ja 7f
    xorl %eax, %eax
    cpuid
    jmp 8f
7:  lfence
8:
.endm

/* Prologue: save callee-saved regs, EBP = n, ESI:EDI = start TSC.
   The loop counter is EBP so ECX/EDX/EAX are free for the operation. */
.macro BEGIN name
    .globl \name
    .p2align 4
\name:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl 20(%esp), %ebp
    SERIALIZE
    rdtsc
    movl %eax, %esi
    movl %edx, %edi
.endm

/* Epilogue: EDX:EAX = end TSC - start TSC. */
.macro END
    SERIALIZE
    rdtsc
    subl %esi, %eax
    sbbl %edi, %edx
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret
.endm

/* Loop head, 16-byte aligned, and the loop control. */
.macro LOOP
    .p2align 4
1:
.endm
.macro NEXT
    decl %ebp
    jnz 1b
.endm

BEGIN nb_clisti
LOOP
    cli
    sti
NEXT
    cli
END

BEGIN nb_pushfpopf
LOOP
    pushfl
    popfl
NEXT
END

/* The sensitive non-privileged stores (a binary translator must make them
   show the guest's values without trapping): SGDT/SIDT to memory, SLDT to
   memory, STR and SMSW to a register, MOV r32, Sreg and PUSH Sreg. */
BEGIN nb_sgdt
LOOP
    sgdt sys_buf
NEXT
END

BEGIN nb_sidt
LOOP
    sidt sys_buf
NEXT
END

BEGIN nb_sldt
LOOP
    sldt sys_buf
NEXT
END

BEGIN nb_str
LOOP
    str %eax
NEXT
END

BEGIN nb_smsw
LOOP
    smsw %eax
NEXT
END

BEGIN nb_movsreg
LOOP
    movl %ds, %eax
NEXT
END

BEGIN nb_pushsreg
LOOP
    pushl %ds
    popl %eax
NEXT
END

BEGIN nb_in
    movl $0x3FD, %edx           /* COM1 LSR */
LOOP
    inb %dx, %al
NEXT
END

BEGIN nb_out
    xorl %eax, %eax
LOOP
    outb %al, $0x80             /* POST port */
NEXT
END

BEGIN nb_callret
LOOP
    call null_function
NEXT
END

BEGIN nb_divzero
    xorl %ecx, %ecx
LOOP
    divl %ecx                   /* F7 F1: #DE, de_handler skips it */
NEXT
END

/* IRQ 4 round trip: IER = THRE raises IRQ 4 (THR is empty); the handler
   clears IER, EOIs the master PIC and returns. IRQ 4 is unmasked only
   around the loop; IF is set throughout it. */
BEGIN nb_irq
    movb $0xEF, %al             /* unmask IRQ 4 */
    outb %al, $0x21
    movw $0x3F9, %dx            /* COM1 IER */
    sti
LOOP
    movb $0x02, %al
    outb %al, %dx               /* IER.ETBEI: interrupt now */
NEXT
    cli
    movb $0xFF, %al
    outb %al, $0x21
END

    .globl irq4_handler
    .p2align 4
irq4_handler:
    pushl %eax
    pushl %edx
    xorl %eax, %eax
    movw $0x3F9, %dx
    outb %al, %dx               /* IER = 0: the line drops */
    movb $0x20, %al
    outb %al, $0x20             /* non-specific EOI */
    popl %edx
    popl %eax
    iret

/* Local APIC (QEMU's default machine; btvisor -M pc). kernel.c maps the
   register page at APIC_BASE (identity) and skips these rows without an
   APIC. */
#define APIC_BASE 0xFEE00000

/* Self-IPI round trip: ICR write (shorthand self, fixed, vector 0x50),
   delivery, the handler's EOI write, IRET. */
BEGIN nb_ipi
    sti
LOOP
    movl $0x00040050, APIC_BASE + 0x300
NEXT
    cli
END

/* LAPIC timer: one-shot with count 1 at divide 1, delivery (vector 0x51),
   EOI, IRET; the loop waits for the handler's count to move. */
BEGIN nb_apictimer
    movl $0xB, APIC_BASE + 0x3E0
    movl $0x51, APIC_BASE + 0x320
    sti
LOOP
    movl apic_ticks, %edx
    movl $1, APIC_BASE + 0x380
2:  cmpl apic_ticks, %edx
    je 2b
NEXT
    cli
    movl $0x10051, APIC_BASE + 0x320
END

    .globl apic_ipi_handler, apic_timer_handler, apic_ticks
    .p2align 4
apic_ipi_handler:
    movl $0, APIC_BASE + 0xB0
    iret
    .p2align 4
apic_timer_handler:
    incl apic_ticks
    movl $0, APIC_BASE + 0xB0
    iret
    .data
apic_ticks: .long 0
    .text

    .p2align 4
null_function:
    ret

/* ---- paging (kernel.c turns it on before any loop runs) ---- */

/* One PTE store + INVLPG: flip the frame behind PTEMOD_VA (present,
   supervisor) between two frames; the page itself is never touched. */
BEGIN nb_ptemod
    movl test_pt + 4 * PTEMOD_IDX, %eax
    movl ptemod_flip, %ecx      /* frame A ^ frame B */
LOOP
    xorl %ecx, %eax
    movl %eax, test_pt + 4 * PTEMOD_IDX
    invlpg PTEMOD_VA
NEXT
END

/* MOV to CR3 of the value it already holds (flushes the TLB; no global
   pages, CR4.PGE stays clear). */
BEGIN nb_cr3
    movl %cr3, %eax
LOOP
    movl %eax, %cr3
NEXT
END

/*
 * Context switch between two address spaces, ctx_pd[0] and ctx_pd[1] (they
 * share the kernel's page tables, differ in what CTX_VA maps): each
 * iteration loads the other one into CR3 and reads one dword from each of
 * the CTX_PAGES pages at CTX_VA, so one operation = one switch + 64 touches
 * (with their TLB misses). The kernel's own CR3 is restored at the end.
 */
BEGIN nb_ctxsw
    movl %cr3, %edx             /* kernel_pd, restored below */
    movl $ctx_pd, %ebx
    leal PAGE_SIZE(%ebx), %ecx
    xorl %ebx, %ecx             /* ctx_pd[0] ^ ctx_pd[1] */
LOOP
    xorl %ecx, %ebx
    movl %ebx, %cr3
    .set pg, 0
    .rept CTX_PAGES
    movl CTX_VA + pg * PAGE_SIZE, %eax
    .set pg, pg + 1
    .endr
NEXT
    movl %edx, %cr3
END

/* ------------------------------------------------------------------ */
/* User text: everything executed at CPL 3, on user pages of its own   */
/* ------------------------------------------------------------------ */

    .p2align 12
    .globl user_text_start
user_text_start:

ring3_entry:
    pushl user_arg
    call *user_fn
    addl $4, %esp
    movl %eax, user_ret
    movl %edx, user_ret + 4
    int $0x81
    /* not reached */
1:  jmp 1b

/* Also the ring-0 baseline: ring 0 may run code on user pages. */
BEGIN nb_empty
LOOP
NEXT
END

BEGIN nb_syscall
LOOP
    int $0x80
NEXT
END

/*
 * Page-fault round trip from CPL 3. Each iteration reads the one of the two
 * pages at PGF_VA that is not present (they alternate); the #PF handler
 * maps it, unmaps the other one (clear P + INVLPG) and IRETs, and the read
 * completes. Measured op = one #PF round trip (CPL 3 -> 0 -> 3, with the
 * handler's map) + one unmap, all done in the handler (no extra system
 * call). kernel.c unmaps both pages before every run (pgfault_reset).
 */
BEGIN nb_pgfault
    movl $PGF_VA + PAGE_SIZE, %edx
LOOP
    xorl $PAGE_SIZE, %edx
    movl (%edx), %eax
NEXT
END

    .p2align 12
    .globl user_text_end
user_text_end:

    .data
    .p2align 2
kernel_saved_esp: .long 0
    .globl pf_count
pf_count:         .long 0

/* User data: read or written at CPL 3 (SERIALIZE reads ser_mode). */
    .p2align 12
    .globl user_data_start, user_data_end
user_data_start:
    .globl ser_mode
ser_mode:         .long 1
user_fn:          .long 0
user_arg:         .long 0
user_ret:         .long 0, 0
    .p2align 12
user_data_end:

    .bss
    .p2align 12
    .globl user_bss_start, user_bss_end
user_bss_start:
    .skip 16384
user_stack_top:
user_bss_end:

    .bss
    .p2align 3
sys_buf: .skip 8
