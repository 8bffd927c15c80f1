/* A CPU-bound program: integer hashing, a sort and double arithmetic. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    uint32_t s = 1, h = 0;
    enum { N = 1 << 20 };
    static uint32_t v[N];
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < N; i++) {
            s ^= s << 13; s ^= s >> 17; s ^= s << 5;
            v[i] = s;
        }
        qsort(v, N, sizeof v[0], cmp);
        for (int i = 0; i < N; i += 7) h = h * 33 + v[i];
    }
    double x = 0;
    for (int i = 1; i < 20000000; i++) x += 1.0 / ((double)i * i);
    printf("cpu %08x %.12f\n", h, x);
    return 0;
}
