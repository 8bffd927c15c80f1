/*
 * insn kernel: runs every case of cases.h and compares with expected.h,
 * which gen.c produced on real hardware from the same code.
 * Prints "FAIL <case> <what> got .. want .." per mismatch, then
 * "N passed, M failed"; exits with V=M.
 * insn-sse (built with -DWITH_SSE) also runs the SSE/SSE2 cases; SSE
 * instructions #UD unless CR4.OSFXSR is set, so that variant sets it.
 */
#include "rt.h"
#include "harness.h"
#include "expected.h"

static const char *const regname[8] = { "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp" };

static int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static void fail(const char *name, const char *what, uint32_t got, uint32_t want)
{
    puts_serial("FAIL "); puts_serial(name); putc_serial(' '); puts_serial(what);
    puts_serial(" got "); put_hex(got); puts_serial(" want "); put_hex(want);
    putc_serial('\n');
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
#ifdef WITH_SSE
    /* CR4.OSFXSR (bit 9): the one system-level step SSE needs */
    __asm__ volatile("movl %%cr4, %%eax; orl $0x200, %%eax; movl %%eax, %%cr4" ::: "eax");
#endif
    uint32_t passed = 0, failed = 0;
    for (int i = 0; i < NCASES; i++) {
        const struct expect *e = &expected[i];
        if (i >= NEXPECTED || !str_eq(cases[i].name, e->name)) {
            puts_serial("expected.h does not match cases.h: rebuild\n");
            return 0xff;
        }
        exec_case(i);
        int bad = 0;
        const uint32_t *r = &g_out.eax;
        for (int k = 0; k < 8; k++)
            if (r[k] != e->r[k]) {
                fail(e->name, regname[k], r[k], e->r[k]);
                bad = 1;
            }
        if (g_out.efl != e->efl) {
            fail(e->name, "eflags", g_out.efl, e->efl);
            bad = 1;
        }
        const volatile uint32_t *m = (const volatile uint32_t *)MEM;
        int d = e->mem_first, dend = e->mem_first + e->mem_count;
        for (int w = 0; w < MEMW; w++) {
            uint32_t want = initial_mem(w);
            if (d < dend && expected_mem_idx[d] == w)
                want = expected_mem_val[d++];
            if (m[w] != want) {
                char what[] = "mem+0x00";
                what[6] = "0123456789abcdef"[(w * 4) >> 4];
                what[7] = "0123456789abcdef"[(w * 4) & 15];
                fail(e->name, what, m[w], want);
                bad = 1;
            }
        }
        if (bad)
            failed++;
        else
            passed++;
    }
    put_dec(passed); puts_serial(" passed, "); put_dec(failed); puts_serial(" failed\n");
    return (int)failed;
}
