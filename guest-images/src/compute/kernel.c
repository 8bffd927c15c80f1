/* compute kernel: runs work.c under the VMM; iters=N from the cmdline. */
#include "rt.h"
#include "work.h"

/* paging=1 on the command line: identity-map the first 1 GiB with 4 MiB
 * pages and turn paging on, to measure the cost of shadow paging. */
static uint32_t page_dir[1024] __attribute__((aligned(4096)));

static void enable_paging(void)
{
    for (uint32_t i = 0; i < 256; i++)
        page_dir[i] = (i << 22) | 0x83;          /* present, writable, 4 MiB */
    __asm__ volatile(
        "mov %%cr4, %%eax\n or $0x10, %%eax\n mov %%eax, %%cr4\n"  /* PSE */
        "mov %0, %%cr3\n"
        "mov %%cr0, %%eax\n or $0x80000000, %%eax\n mov %%eax, %%cr0\n"
        : : "r"(page_dir) : "eax", "memory");
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    uint32_t iters = cmdline_uint("iters", WORK_DEFAULT_ITERS);
    if (cmdline_uint("paging", 0))
        enable_paging();
    uint32_t total = 0;
    puts_serial("iters: "); put_dec(iters); putc_serial('\n');
    for (int i = 0; i < work_count(); i++) {
        uint32_t c = work_run(i, iters);
        total += c;
        puts_serial(work_name(i)); puts_serial(": "); put_hex(c); putc_serial('\n');
    }
    puts_serial("total: "); put_hex(total); putc_serial('\n');
    return 0;
}
