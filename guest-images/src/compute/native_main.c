/* Native (hosted, gcc -m32 -O2) baseline: same work.c, same output lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "work.h"

int main(int argc, char **argv)
{
    uint32_t iters = WORK_DEFAULT_ITERS;
    for (int i = 1; i < argc; i++)          /* same "iters=N" syntax */
        if (!strncmp(argv[i], "iters=", 6))
            iters = (uint32_t)strtoul(argv[i] + 6, NULL, 10);
    uint32_t total = 0;
    printf("iters: %u\n", iters);
    for (int i = 0; i < work_count(); i++) {
        uint32_t c = work_run(i, iters);
        total += c;
        printf("%s: 0x%08x\n", work_name(i), c);
    }
    printf("total: 0x%08x\n", total);
    return 0;
}
