/* Helpers shared by the system test kernels (common/ktest.c). */
#ifndef KTEST_H
#define KTEST_H
#include <stdint.h>

/* Checks passed and failed so far. */
extern uint32_t n_pass, n_fail;

/* Print "PASS|FAIL name got 0x.. want 0x.." and count it. */
void check(const char *name, uint32_t got, uint32_t want);

/* A GDT/LDT segment descriptor (access byte, flags nibble G/DB/L/AVL). */
uint64_t desc(uint32_t base, uint32_t limit, uint32_t access, uint32_t flags);
#endif
