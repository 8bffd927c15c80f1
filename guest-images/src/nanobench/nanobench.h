/*
 * Layout shared by kernel.c and cpu.S (both go through the C preprocessor):
 * page-table bits and the linear addresses of the paging benchmarks' pages.
 *
 * The kernel image itself (1 MiB up) is identity-mapped through kernel_pt
 * (page-directory slot 0); the benchmark pages live in their own 4 MiB
 * slots, far from it, each with its own page table:
 *
 *   0x40000000  PGF_VA      2 user pages, pgfault (not present at rest)
 *   0x40002000  PTEMOD_VA   1 supervisor page, ptemod (frame flips)
 *   0x40400000  CTX_VA      64 supervisor pages, ctxsw (differ per space)
 */
#ifndef NANOBENCH_H
#define NANOBENCH_H

#define PTE_P  0x001
#define PTE_W  0x002
#define PTE_U  0x004
#define CR0_WP 0x00010000
#define CR0_PG 0x80000000

#define PAGE_SIZE 4096

#define TEST_VA    0x40000000   /* test_pt maps 0x40000000-0x403FFFFF */
#define PGF_VA     0x40000000   /* pages PGF_VA, PGF_VA + 4096: 8 KiB aligned */
#define PTEMOD_VA  0x40002000
#define PGF_IDX    0            /* their slots in test_pt */
#define PTEMOD_IDX 2

#define CTX_VA     0x40400000   /* ctx_pt[s] maps 0x40400000-0x407FFFFF in space s */
#define CTX_PAGES  64

#endif
