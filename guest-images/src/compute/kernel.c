/* compute kernel: runs work.c under the VMM; iters=N from the cmdline. */
#include "rt.h"
#include "work.h"

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    uint32_t iters = cmdline_uint("iters", WORK_DEFAULT_ITERS);
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
