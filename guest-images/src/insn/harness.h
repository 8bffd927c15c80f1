/*
 * Shared by gen.c (native oracle) and kernel.c (guest): the case runner and
 * the case table. Both compile this exact code, so each case executes the
 * same instruction bytes natively and in the guest.
 *
 * A case is a snippet of asm run with all GPRs, ESP and the arithmetic flags
 * loaded from g_in; afterwards all GPRs, ESP, EFLAGS and a 128-byte memory
 * area are compared. Memory and stack live in a scratch page at a FIXED
 * address (SCR): the kernel just uses that physical page, gen.c mmaps it
 * there, so pointers held in registers are identical and can be compared.
 */
#ifndef HARNESS_H
#define HARNESS_H
#include <stdint.h>

#define SCR   0x00400000    /* scratch page: above any kernel image */
#define MEM   (SCR + 0x100) /* compared data area */
#define MEMW  32            /* words compared */
#define STK   (SCR + 0xF00) /* initial ESP (stack area is not compared) */
#define DBP   (MEM + 0x40)  /* initial EBP: points into MEM for [ebp] forms */
#define DSI   0x13579bdf    /* default ESI/EDI: arbitrary non-address values */
#define DDI   0x2468ace0

#define CF 0x001
#define PF 0x004
#define AF 0x010
#define ZF 0x040
#define SF 0x080
#define DF 0x400
#define OF 0x800
#define ALLF (CF | PF | AF | ZF | SF | OF)
/* IF/TF/bit1 differ between user mode and the guest: never compared */
#define CMPF (ALLF | DF)

/* Macro-stringify helpers so addresses can be pasted into asm text. */
#define S_(x) #x
#define S(x) S_(x)

struct regs { uint32_t eax, ebx, ecx, edx, esi, edi, ebp, esp, efl; };

struct tcase {
    const char *name;
    void (*fn)(void);
    struct regs in;
    uint32_t undef;         /* architecturally undefined flags: not compared */
};

struct regs g_in, g_out;
uint32_t g_fn, g_saved_esp;

/* read-only constants for x87/SSE cases (address never leaks to a register) */
__attribute__((aligned(16))) const double fk[8] = { 1.5, 2.25, -3.0, 2.0, 1e10, 0.1, 2.5, -3.5 };
__attribute__((aligned(16))) const float fks[8] = { 1.5f, -2.5f, 3.25f, 100.0f, 0.5f, 7.0f, -1.0f, 1e-3f };

/*
 * run_case(fn): save host regs, switch to the case's ESP, load flags and
 * GPRs, jump to the snippet; the snippet jumps to case_exit which stores
 * everything back. Arithmetic flags only go through POPF, so IF stays as is.
 */
__asm__(
    /* the same addresses as assembler symbols, for the snippets */
    ".set SCR, " S(SCR) "\n"
    ".set MEM, " S(MEM) "\n"
    ".set STK, " S(STK) "\n"
    ".text\n"
    ".globl run_case\n"
    "run_case:\n"
    "  pushl %ebp; pushl %ebx; pushl %esi; pushl %edi\n"
    "  movl 20(%esp), %eax\n"
    "  movl %eax, g_fn\n"
    "  movl %esp, g_saved_esp\n"
    "  movl g_in+28, %esp\n"
    "  pushl g_in+32\n"
    "  popfl\n"
    "  movl g_in+0, %eax\n"
    "  movl g_in+4, %ebx\n"
    "  movl g_in+8, %ecx\n"
    "  movl g_in+12, %edx\n"
    "  movl g_in+16, %esi\n"
    "  movl g_in+20, %edi\n"
    "  movl g_in+24, %ebp\n"
    "  jmp *g_fn\n"
    ".globl case_exit\n"
    "case_exit:\n"
    "  movl %esp, g_out+28\n"
    "  pushfl\n"
    "  popl g_out+32\n"
    "  movl %eax, g_out+0\n"
    "  movl %ebx, g_out+4\n"
    "  movl %ecx, g_out+8\n"
    "  movl %edx, g_out+12\n"
    "  movl %esi, g_out+16\n"
    "  movl %edi, g_out+20\n"
    "  movl %ebp, g_out+24\n"
    "  movl g_saved_esp, %esp\n"
    "  cld\n"                       /* the C ABI needs DF=0 */
    "  popl %edi; popl %esi; popl %ebx; popl %ebp\n"
    "  ret\n");
void run_case(void (*fn)(void));

/* deterministic initial memory: special values first, then a mix */
static uint32_t initial_mem(int i)
{
    static const uint32_t special[8] = { 0, 0xffffffff, 0x7fffffff, 0x80000000,
                                         0x12345678, 0x00000001, 0xdeadbeef, 0x0000ff80 };
    return i < 8 ? special[i] : (uint32_t)(0x9e3779b9u * (uint32_t)(i + 1)) ^ ((uint32_t)i << 28);
}

/* Zero the whole page (stack included) and refill MEM before every case. */
static void reset_scratch(void)
{
    volatile uint32_t *p = (volatile uint32_t *)SCR;
    for (int i = 0; i < 1024; i++)
        p[i] = 0;
    volatile uint32_t *m = (volatile uint32_t *)MEM;
    for (int i = 0; i < MEMW; i++)
        m[i] = initial_mem(i);
}

/* ---- the case table (cases.h is an X-macro list of T(...) lines) ---- */
#define T(name, code, a, b, c, d, si, di, fl, undef)                      \
    __asm__(".text\n" "case_" #name ":\n" code "\n" "jmp case_exit\n");
#include "cases.h"
#undef T

#define T(name, code, a, b, c, d, si, di, fl, undef) void case_##name(void);
#include "cases.h"
#undef T

static const struct tcase cases[] = {
#define T(name, code, a, b, c, d, si, di, fl, undef) \
    { #name, case_##name, { a, b, c, d, si, di, DBP, STK, fl }, undef },
#include "cases.h"
#undef T
};
#define NCASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* Run case i: results in g_out; scratch memory left for inspection. */
static void exec_case(int i)
{
    reset_scratch();
    g_in = cases[i].in;
    run_case(cases[i].fn);
    g_out.efl &= CMPF & ~cases[i].undef;
}
#endif
