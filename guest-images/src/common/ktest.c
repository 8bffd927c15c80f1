/* Helpers shared by the system test kernels. */
#include "ktest.h"
#include "rt.h"

uint32_t n_pass, n_fail;

void check(const char *name, uint32_t got, uint32_t want)
{
    if (got == want) {
        n_pass++;
        puts_serial("PASS ");
    } else {
        n_fail++;
        puts_serial("FAIL ");
    }
    puts_serial(name);
    puts_serial(" got ");
    put_hex(got);
    puts_serial(" want ");
    put_hex(want);
    putc_serial('\n');
}

uint64_t desc(uint32_t base, uint32_t limit, uint32_t access, uint32_t flags)
{
    uint64_t d = limit & 0xFFFF;
    d |= (uint64_t)(base & 0xFFFFFF) << 16;
    d |= (uint64_t)(access & 0xFF) << 40;
    d |= (uint64_t)((limit >> 16) & 0xF) << 48;
    d |= (uint64_t)(flags & 0xF) << 52;
    d |= (uint64_t)(base >> 24) << 56;
    return d;
}
