/*
 * smc: self-modifying code. A binary translator must notice stores into
 * code it has already translated (or is executing) and re-translate.
 * Every test first runs the code once so a stale translation exists.
 *  (a) patch the imm32 of "mov $imm32, %eax" inside a called function
 *  (b) store into the running block, hitting an instruction a few bytes
 *      later in straight-line code (x86 guarantees the next fetch sees it)
 *  (c) rep movsb a function into a buffer, call it, overwrite with another
 *  (d) loop patching its own add-immediate 1000 times
 * Prints "N passed, M failed" and exits with V=M.
 */
    .section .rodata
s_pass:   .asciz "ok   "
s_fail:   .asciz "FAIL "
s_got:    .asciz " got "
s_want:   .asciz " want "
s_nl:     .asciz "\n"
s_passed: .asciz " passed, "
s_failed: .asciz " failed\n"
n_a1: .asciz "a: original imm"
n_a2: .asciz "a: patched imm"
n_a3: .asciz "a: patched again"
n_b1: .asciz "b: imm patched ahead, pass 1"
n_b2: .asciz "b: imm patched ahead, pass 2"
n_b3: .asciz "b: opcode inc->dec ahead"
n_b4: .asciz "b: opcode dec->inc ahead"
n_c1: .asciz "c: copied fn1"
n_c2: .asciz "c: overwritten with fn2"
n_c3: .asciz "c: fn1 copied back"
n_d1: .asciz "d: self-patching loop sum"
b_vals: .long 0x13572468, 0x24681357

    .data
n_pass: .long 0
n_fail: .long 0

    .bss
    /* Own page: executing from it must not share a page with other data. */
    .align 4096
code_buf: .skip 4096

    .text
/* check(name, got, want): print one result line, count it. cdecl. */
check:
    pushl %ebx
    movl 12(%esp), %eax
    cmpl 16(%esp), %eax
    jne 1f
    incl n_pass
    pushl $s_pass
    jmp 2f
1:  incl n_fail
    pushl $s_fail
2:  call puts_serial
    movl 12(%esp), %eax         /* name (one push deeper now) */
    movl %eax, (%esp)
    call puts_serial
    movl $s_got, (%esp)
    call puts_serial
    movl 16(%esp), %eax
    movl %eax, (%esp)
    call put_hex
    movl $s_want, (%esp)
    call puts_serial
    movl 20(%esp), %eax
    movl %eax, (%esp)
    call put_hex
    movl $s_nl, (%esp)
    call puts_serial
    addl $4, %esp
    popl %ebx
    ret

/* CHECK name, got(reg/mem), want(imm) */
.macro CHECK name, got, want
    pushl \want
    pushl \got
    pushl $\name
    call check
    addl $12, %esp
.endm

/* (a) target function: the imm32 lives at a_fn+1 */
a_fn:
    movl $0x11111111, %eax
    ret

/* (c) functions to copy; lengths from the end labels */
c_fn1:
    movl $0xc0de0001, %eax
    ret
c_fn1_end:
c_fn2:
    movl $0xc0de0000, %eax
    addl $2, %eax
    nop
    ret
c_fn2_end:

    .globl kmain
kmain:
    pushl %ebx
    pushl %esi
    pushl %edi
    pushl %ebp

    /* ---- (a) ---- */
    call a_fn
    CHECK n_a1, %eax, $0x11111111
    movl $0x22222222, a_fn+1
    call a_fn
    CHECK n_a2, %eax, $0x22222222
    movl $0x33333333, a_fn+1
    call a_fn
    CHECK n_a3, %eax, $0x33333333

    /* ---- (b) imm patched a few bytes ahead, same block, twice ---- */
    xorl %esi, %esi
b_loop:
    movl b_vals(,%esi,4), %edx
    movl %edx, b_ins+1          /* patch imm32 of the mov below */
    addl $0, %ecx               /* filler: no jump in between */
b_ins:
    movl $0xdeadbeef, %eax
    pushl %esi
    cmpl $0, %esi
    jne 1f
    CHECK n_b1, %eax, %edx
    jmp 2f
1:  CHECK n_b2, %eax, %edx
2:  popl %esi
    incl %esi
    cmpl $2, %esi
    jb b_loop

    /* opcode patch ahead: first pass turns inc into dec, second back */
    xorl %esi, %esi
b_op_loop:
    movl $0x48, %edx            /* 0x48 = dec %eax */
    testl %esi, %esi
    jz 1f
    movl $0x40, %edx            /* 0x40 = inc %eax */
1:  movl $100, %eax
    movb %dl, b_op
    nop
b_op:
    incl %eax                   /* one-byte 0x40 in 32-bit mode */
    pushl %esi
    testl %esi, %esi
    jnz 1f
    CHECK n_b3, %eax, $99
    jmp 2f
1:  CHECK n_b4, %eax, $101
2:  popl %esi
    incl %esi
    cmpl $2, %esi
    jb b_op_loop

    /* ---- (c) copy, call, overwrite, call ---- */
    cld
    movl $c_fn1, %esi
    movl $code_buf, %edi
    movl $(c_fn1_end - c_fn1), %ecx
    rep movsb
    call code_buf
    CHECK n_c1, %eax, $0xc0de0001
    movl $c_fn2, %esi
    movl $code_buf, %edi
    movl $(c_fn2_end - c_fn2), %ecx
    rep movsb
    call code_buf
    CHECK n_c2, %eax, $0xc0de0002
    movl $c_fn1, %esi
    movl $code_buf, %edi
    movl $(c_fn1_end - c_fn1), %ecx
    rep movsb
    movl $code_buf, %eax
    call *%eax
    CHECK n_c3, %eax, $0xc0de0001

    /* ---- (d) add-immediate patched every iteration ---- */
    xorl %ebx, %ebx
    movl $1, %ecx
d_loop:
    movl %ecx, d_add+2          /* imm32 of the add below */
d_add:
    .byte 0x81, 0xc3            /* addl $imm32, %ebx: force the imm32 form */
    .long 0
    incl %ecx
    cmpl $1001, %ecx
    jne d_loop
    CHECK n_d1, %ebx, $500500

    /* summary */
    pushl n_pass
    call put_dec
    movl $s_passed, (%esp)
    call puts_serial
    movl n_fail, %eax
    movl %eax, (%esp)
    call put_dec
    movl $s_failed, (%esp)
    call puts_serial
    addl $4, %esp
    movl n_fail, %eax
    popl %ebp
    popl %edi
    popl %esi
    popl %ebx
    ret
