/*
 * devmem: every kind of instruction on device memory. A monitor that runs
 * guest code natively cannot map device pages: each access there reaches
 * the device through the monitor, which must execute the instruction with
 * the device seeing its reads and writes. The operands here lie in the VGA
 * text window (0xB8000), which reads back what was written.
 *   alu    ADD/ADC/SUB/AND/OR/XOR/NEG/NOT/INC/DEC/SHL/ROR on bytes, words
 *          and dwords there, and the flags they leave
 *   atomic XCHG, LOCK CMPXCHG (both outcomes), XADD, CMPXCHG8B
 *   bits   BTS/BTR/BTC and BT's carry
 *   stack  PUSH/POP/CALL/RET with ESP in the window
 *   load   CMP/IMUL/CMOV/MOVZX with a device source
 *   sse    MOVDQU/MOVUPS stores and loads, PADDD with a device operand
 *   x87    FSTP/FLD of a double there
 * Each instruction runs on RAM and on the device from the same values; the
 * device must end as RAM does, with the same flags. All of it runs with
 * paging off, then again with paging on (two 4 MiB identity pages).
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M.
 */
#include "rt.h"
#include "ktest.h"

/* Offscreen part of the text page: nothing else writes it. */
#define DEV ((volatile uint32_t *)0xB8F00)
static volatile uint32_t ram[4] __attribute__((aligned(16)));

#define FLAGS 0x8D5u            /* OF SF ZF AF PF CF */

/* An instruction on the dwords at p (%1), returning EFLAGS after it. */
#define OP(fn, insn)                                                        \
    static uint32_t fn(volatile uint32_t *p)                                \
    {                                                                       \
        uint32_t fl;                                                        \
        __asm__ volatile("pushfl; andl $~0x8D5, (%%esp); popfl\n\t" insn "\n\tpushfl\n\tpopl %0" \
                         : "=&r"(fl) : "r"(p) : "memory", "cc", "eax", "ecx", "edx");    \
        return fl;                                                          \
    }

OP(op_add, "addl $0x11111111, (%1)")
OP(op_adc, "stc; adcb $0x10, 1(%1)")
OP(op_sub, "subw $0x0015, 2(%1)")
OP(op_xor, "xorl $0xFFFF0000, (%1)")
OP(op_and, "andl $0x0F0F0F0F, 4(%1)")
OP(op_or, "orb $0x81, 3(%1)")
OP(op_neg, "negl (%1)")
OP(op_not, "notw 2(%1)")
OP(op_incdec, "incl (%1); incl 4(%1); decb 3(%1)")
OP(op_shl, "shll $4, (%1)")
OP(op_ror, "rorl $8, 4(%1)")
OP(op_sar_cl, "movb $3, %%cl; sarl %%cl, (%1)")
OP(op_bts, "btsl $5, (%1)")
OP(op_btr, "btrl $12, (%1)")
OP(op_btc, "btcl $31, 4(%1)")
OP(op_bt, "btl $13, (%1)")
OP(op_cmp, "cmpl $7, (%1)")
OP(op_setne, "cmpl $1, %1; setne 5(%1)")
OP(op_xchg, "movl $0xAAAAAAAA, %%eax; xchgl %%eax, (%1); movl %%eax, 8(%1)")
OP(op_cmpxchg_eq, "movl (%1), %%eax; movl $0x12345678, %%edx; lock cmpxchgl %%edx, (%1)")
OP(op_cmpxchg_ne, "movl $1, %%eax; movl $0x9999, %%edx; lock cmpxchgl %%edx, (%1); movl %%eax, 8(%1)")
OP(op_xadd, "movl $0x10, %%eax; lock xaddl %%eax, 4(%1); movl %%eax, 8(%1)")
OP(op_cmpxchg8b, "pushl %%ebx; movl (%1), %%eax; movl 4(%1), %%edx; movl $0x55555555, %%ebx;"
                 "movl $0x66666666, %%ecx; lock cmpxchg8b (%1); popl %%ebx")
OP(op_imul, "movl $6, %%eax; imull (%1), %%eax; movl %%eax, 8(%1)")
OP(op_cmov, "movl $1, %%eax; cmpl $0, %%eax; cmovnel 4(%1), %%eax; movl %%eax, 12(%1)")
OP(op_movsx, "movsbl 4(%1), %%eax; movl %%eax, 12(%1)")
/* The stack in the window: a push, a call and its return, a pop. */
OP(op_stack, "movl %%esp, %%edx; leal 16(%1), %%esp; pushl $0xDEADBEEF; call 1f; jmp 2f;"
             "1: ret; 2: popl %%eax; movl %%edx, %%esp; movl %%eax, 12(%1); movl $0, 8(%1)")
OP(op_movups, "movups (%1), %%xmm1; movups %%xmm1, (%1)")
OP(op_addps, "movups (%1), %%xmm2; addps (%1), %%xmm2; movups %%xmm2, (%1)")
OP(op_x87, "fldl (%1); fadd %%st(0); fstpl (%1)")

/* Run `op` on RAM and on the device from the same dwords: the device must
 * end as RAM does, with the same flags. */
static void both_masked(const char *name, uint32_t (*op)(volatile uint32_t *), uint32_t mask, uint32_t a,
                        uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t init[4] = {a, b, c, d};
    for (int k = 0; k < 4; k++) {
        ram[k] = init[k];
        DEV[k] = init[k];
    }
    uint32_t fr = op(ram) & mask;
    uint32_t fd = op(DEV) & mask;
    puts_serial(name);
    puts_serial(":\n");
    for (int k = 0; k < 4; k++) {
        static const char *names[4] = {"  dword 0", "  dword 1", "  dword 2", "  dword 3"};
        check(names[k], DEV[k], ram[k]);
    }
    check("  flags", fd, fr);
}

/* Every status flag is defined. */
static void both(const char *name, uint32_t (*op)(volatile uint32_t *), uint32_t a, uint32_t b, uint32_t c,
                 uint32_t d)
{
    both_masked(name, op, FLAGS, a, b, c, d);
}

static void all(void);

/* Identity map of the low 8 MiB in two 4 MiB pages (CR4.PSE). */
static uint32_t pd[1024] __attribute__((aligned(4096)));

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic;
    (void)info;
    uint32_t cr4, cr0;
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("movl %0, %%cr4" :: "r"(cr4 | 0x610)); /* OSFXSR (SSE), PSE */
    puts_serial("paging off\n");
    all();
    pd[0] = 0x00000087;     /* P RW US PS */
    pd[1] = 0x00400087;
    __asm__ volatile("movl %0, %%cr3" :: "r"(pd));
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" :: "r"(cr0 | 0x80000000u));
    puts_serial("paging on\n");
    all();
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    return n_fail;
}

static void all(void)
{
    both("add dword", op_add, 0x01020304, 0, 0, 0);
    both("adc byte with CF", op_adc, 0x12131415, 0, 0, 0);
    both("sub word", op_sub, 0x12132515, 0, 0, 0);
    both("xor dword", op_xor, 0x12132515, 0, 0, 0);
    both("and dword", op_and, 0, 0xEDEC2600, 0, 0);
    both("or byte", op_or, 0x0D0C0600, 0, 0, 0);
    both("neg dword", op_neg, 0x0D0C0681, 0, 0, 0);
    both("not word", op_not, 0xF2F3F97F, 0, 0, 0);
    both("inc/dec", op_incdec, 0xFFFFFFFF, 7, 0, 0);
    both_masked("shl dword", op_shl, FLAGS & ~0x810u /* OF, AF undefined */, 0x0C0CF981, 0, 0, 0);
    both_masked("ror dword", op_ror, 1 /* CF; OF undefined for counts > 1 */, 0, 0xC0CF9810, 0, 0);
    both_masked("sar by cl", op_sar_cl, FLAGS & ~0x810u, 0x80000010, 0, 0, 0);
    both_masked("bts", op_bts, 1 /* CF; the rest are undefined */, 0x0000F000, 0, 0, 0);
    both_masked("btr", op_btr, 1 /* CF; the rest are undefined */, 0x0000F020, 0, 0, 0);
    both_masked("btc", op_btc, 1 /* CF; the rest are undefined */, 0, 0x0000E020, 0, 0);
    both_masked("bt", op_bt, 1 /* CF; the rest are undefined */, 0x00002000, 0, 0, 0);
    both("cmp", op_cmp, 7, 0, 0, 0);
    both("setne", op_setne, 0x11111111, 0x22222222, 0, 0);
    both("xchg", op_xchg, 0x11111111, 0, 0, 0);
    both("lock cmpxchg equal", op_cmpxchg_eq, 0x11111111, 0, 0, 0);
    both("lock cmpxchg unequal", op_cmpxchg_ne, 0x12345678, 0, 0, 0);
    both("lock xadd", op_xadd, 0, 0x12345678, 0, 0);
    both("lock cmpxchg8b", op_cmpxchg8b, 0x12345688, 0x22222222, 0, 0);
    both_masked("imul", op_imul, 0x801 /* OF, CF */, 7, 0, 0, 0);
    both("cmov", op_cmov, 0, 0xFFFFFF80, 0, 0);
    both("movsx", op_movsx, 0, 0xFFFFFF80, 0, 0);
    both("stack in the window", op_stack, 0, 0, 0, 0);
    both("sse movups", op_movups, 1, 2, 3, 4);
    both("sse addps", op_addps, 0x3F800000, 0x40000000, 0x40400000, 0x40800000);
    both("x87 fld/fstp", op_x87, 0, 0x3FF80000, 0, 0);
}
