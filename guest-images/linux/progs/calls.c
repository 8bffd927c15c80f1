/* Calls through function pointers, which btvisor may inline at the call
 * site (leaf callees): qsort and bsearch comparators, one call site with
 * several targets, callees that store, and callbacks that call on. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

static unsigned calls_seen;

static int cmp_up(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_down_low_byte(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a & 0xFF, y = *(const uint32_t *)b & 0xFF;
    return x > y ? -1 : x < y;
}

/* A comparator that also counts its calls (it stores). */
static int cmp_counting(const void *a, const void *b) {
    calls_seen++;
    return cmp_up(a, b);
}

static uint32_t op_add(uint32_t a, uint32_t b) { return a + b; }
static uint32_t op_xor(uint32_t a, uint32_t b) { return a ^ b; }
static uint32_t op_mul(uint32_t a, uint32_t b) { return a * b + 1; }
static uint32_t op_rot(uint32_t a, uint32_t b) { return (a << (b & 31)) | (a >> (-b & 31)); }

/* Not a leaf: it calls through another pointer. */
static uint32_t (*inner)(uint32_t, uint32_t) = op_xor;
static uint32_t op_outer(uint32_t a, uint32_t b) { return inner(a, b) + 3; }

static uint32_t fold(uint32_t (*f)(uint32_t, uint32_t), uint32_t n) {
    uint32_t h = 1;
    for (uint32_t i = 0; i < n; i++)
        h = f(h, i);
    return h;
}

static uint32_t hash(const uint32_t *v, int n) {
    uint32_t h = 0;
    for (int i = 0; i < n; i++)
        h = h * 31 + v[i];
    return h;
}

int main(void) {
    enum { N = 20000 };
    static uint32_t v[N];
    uint32_t s = 7;
    for (int i = 0; i < N; i++) {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5;
        v[i] = s;
    }
    qsort(v, N, sizeof v[0], cmp_up);
    printf("sorted %08x first %08x last %08x\n", hash(v, N), v[0], v[N - 1]);
    uint32_t key = v[1234];
    uint32_t *hit = bsearch(&key, v, N, sizeof v[0], cmp_up);
    printf("bsearch %ld\n", hit ? (long)(hit - v) : -1L);
    qsort(v, N, sizeof v[0], cmp_down_low_byte);
    printf("by low byte %08x\n", hash(v, N));
    qsort(v, N, sizeof v[0], cmp_counting);
    printf("counting %08x called %s\n", hash(v, N), calls_seen > N ? "often" : "rarely");

    /* One call site, targets changing every call and every 1000 calls. */
    uint32_t (*ops[])(uint32_t, uint32_t) = {op_add, op_xor, op_mul, op_rot, op_outer};
    uint32_t h = 0;
    for (int i = 0; i < 50000; i++)
        h = ops[i % 5](h, i) + 3 * ops[(i / 1000) % 5](i, h);
    printf("mixed %08x\n", h);
    for (int k = 0; k < 5; k++)
        printf("fold %d %08x\n", k, fold(ops[k], 100000));
    return 0;
}
