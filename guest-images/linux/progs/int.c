/* Integer results: arithmetic, division, shifts, bit operations, 64-bit
 * arithmetic (compiled to ADC/SBB/SHLD/MUL chains), and a hash loop. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

static volatile uint32_t seed = 0x12345678;

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return *s = x;
}

int main(void) {
    uint32_t s = seed, h = 0;
    uint64_t h64 = 1469598103934665603ULL;
    for (int i = 0; i < 100000; i++) {
        uint32_t a = xorshift(&s), b = xorshift(&s) | 1;
        int32_t sa = (int32_t)a, sb = (int32_t)b;
        h = h * 31 + a / b + a % b + (uint32_t)(sa / sb) + (uint32_t)(sa % sb);
        h ^= (a << (b & 31)) ^ (a >> (b & 31)) ^ (uint32_t)(sa >> (b & 31));
        h += __builtin_popcount(a) + __builtin_ctz(b) + __builtin_clz(b);
        uint64_t w = (uint64_t)a * b;
        h64 = (h64 ^ w) * 1099511628211ULL;
        h64 += (h64 >> 7) / ((uint64_t)b + 3);
        h64 = (h64 << (a & 63)) | (h64 >> (64 - (a & 63)) % 64);
    }
    printf("int hash %08x %016llx\n", h, (unsigned long long)h64);
    char buf[64];
    memset(buf, 'x', sizeof buf);
    memcpy(buf + 3, "hello, world", 12);
    printf("string %.20s %d\n", buf, (int)strlen("btvisor"));
    printf("neg %d %d %u\n", -7 / 2, -7 % 2, (unsigned)-7 >> 1);
    return 0;
}
