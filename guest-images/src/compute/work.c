/* Workloads for the compute image; see work.h. No libc, no platform calls. */
#include "work.h"

#define SORT_N   8192
#define BUF_LEN  (64 * 1024)
#define MAT_N    40

static uint32_t arr[SORT_N], tmp[SORT_N];
static uint8_t buf[BUF_LEN];
static uint32_t mi_a[MAT_N][MAT_N], mi_b[MAT_N][MAT_N], mi_c[MAT_N][MAT_N];
static double md_a[MAT_N][MAT_N], md_b[MAT_N][MAT_N], md_c[MAT_N][MAT_N];
static uint32_t crc_table[256];

static uint32_t rng_state;
static uint32_t rng(void)
{
    /* xorshift32: cheap, deterministic, no multiply needed */
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

static uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

/* Fold an array into a checksum; order-sensitive. */
static uint32_t fold(const uint32_t *a, int n)
{
    uint32_t h = 0x811c9dc5;
    for (int i = 0; i < n; i++)
        h = rotl(h ^ a[i], 5) * 0x01000193;
    return h;
}

static void fill_arr(uint32_t seed)
{
    rng_state = seed | 1;
    for (int i = 0; i < SORT_N; i++)
        arr[i] = rng();
}

static uint32_t sorted_penalty(void)
{
    /* a wrong sort must change the checksum even if fold() collided */
    uint32_t bad = 0;
    for (int i = 1; i < SORT_N; i++)
        bad += arr[i - 1] > arr[i];
    return bad * 0x9e3779b9;
}

static void swap(uint32_t *a, uint32_t *b) { uint32_t t = *a; *a = *b; *b = t; }

static void quicksort(uint32_t *a, int lo, int hi)
{
    while (hi - lo > 16) {
        int mid = lo + (hi - lo) / 2;
        if (a[mid] < a[lo]) swap(&a[mid], &a[lo]);
        if (a[hi] < a[lo]) swap(&a[hi], &a[lo]);
        if (a[hi] < a[mid]) swap(&a[hi], &a[mid]);
        uint32_t p = a[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < p) i++;
            while (a[j] > p) j--;
            if (i <= j) { swap(&a[i], &a[j]); i++; j--; }
        }
        /* recurse on the smaller half to bound stack depth */
        if (j - lo < hi - i) { quicksort(a, lo, j); lo = i; }
        else { quicksort(a, i, hi); hi = j; }
    }
    for (int i = lo + 1; i <= hi; i++) {
        uint32_t v = a[i];
        int k = i - 1;
        while (k >= lo && a[k] > v) { a[k + 1] = a[k]; k--; }
        a[k + 1] = v;
    }
}

static void mergesort(uint32_t *a, uint32_t *t, int n)
{
    /* bottom-up: no recursion */
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n;
            int hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) t[k++] = a[i] <= a[j] ? a[i++] : a[j++];
            while (i < mid) t[k++] = a[i++];
            while (j < hi) t[k++] = a[j++];
        }
        uint32_t *s = a; a = t; t = s;
        for (int i = 0; i < n; i++) t[i] = a[i];  /* keep result in arr */
        s = a; a = t; t = s;
    }
}

static uint32_t w_qsort(uint32_t it)
{
    fill_arr(0x1234567 + it);
    quicksort(arr, 0, SORT_N - 1);
    return fold(arr, SORT_N) + sorted_penalty();
}

static uint32_t w_msort(uint32_t it)
{
    fill_arr(0x7654321 + it);
    mergesort(arr, tmp, SORT_N);
    return fold(arr, SORT_N) + sorted_penalty();
}

static void fill_buf(uint32_t seed)
{
    rng_state = seed | 1;
    for (int i = 0; i < BUF_LEN; i += 4) {
        uint32_t v = rng();
        buf[i] = (uint8_t)v; buf[i + 1] = (uint8_t)(v >> 8);
        buf[i + 2] = (uint8_t)(v >> 16); buf[i + 3] = (uint8_t)(v >> 24);
    }
}

static uint32_t w_fnv(uint32_t it)
{
    fill_buf(0xabc + it);
    uint32_t h = 0x811c9dc5;
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < BUF_LEN; i++)
            h = (h ^ buf[i]) * 0x01000193;
    return h;
}

/* xxhash32-style: 4 lanes of multiply/rotate over little-endian words */
static uint32_t w_mix(uint32_t it)
{
    fill_buf(0xdef + it);
    const uint32_t P1 = 2654435761u, P2 = 2246822519u, P3 = 3266489917u;
    uint32_t h = 0;
    for (int r = 0; r < 4; r++) {
        uint32_t v[4] = { r + P1 + P2, r + P2, r, r - P1 };
        for (int i = 0; i < BUF_LEN; i += 16)
            for (int l = 0; l < 4; l++) {
                const uint8_t *p = buf + i + 4 * l;
                uint32_t w = p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                v[l] = rotl(v[l] + w * P2, 13) * P1;
            }
        h ^= rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
        h ^= h >> 15; h *= P2; h ^= h >> 13; h *= P3; h ^= h >> 16;
    }
    return h;
}

static uint32_t w_matint(uint32_t it)
{
    rng_state = 0x55aa + it;
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            mi_a[i][j] = rng();
            mi_b[i][j] = rng();
        }
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < MAT_N; i++)
            for (int j = 0; j < MAT_N; j++) {
                uint32_t s = 0;
                for (int k = 0; k < MAT_N; k++)
                    s += mi_a[i][k] * mi_b[k][j];
                mi_c[i][j] = s;
            }
        for (int i = 0; i < MAT_N; i++)   /* feed back so rounds differ */
            for (int j = 0; j < MAT_N; j++)
                mi_a[i][j] = mi_c[i][j] ^ (uint32_t)j;
    }
    return fold(&mi_c[0][0], MAT_N * MAT_N);
}

static uint32_t w_matdbl(uint32_t it)
{
    rng_state = 0x77 + it;
    /* multiples of 1/8 in [-64, 64): products and 40-term sums stay exact */
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            md_a[i][j] = (double)((int32_t)(rng() & 1023) - 512) / 8.0;
            md_b[i][j] = (double)((int32_t)(rng() & 1023) - 512) / 8.0;
        }
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            double s = 0.0;
            for (int k = 0; k < MAT_N; k++)
                s += md_a[i][k] * md_b[k][j];
            md_c[i][j] = s;
        }
    uint32_t h = 0x811c9dc5;
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            /* exact value * 64 fits an int32: checksum that, not raw bits */
            int32_t v = (int32_t)(md_c[i][j] * 64.0);
            h = rotl(h ^ (uint32_t)v, 5) * 0x01000193;
        }
    return h;
}

static uint32_t w_crc32(uint32_t it)
{
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320 ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    fill_buf(0x3141 + it);
    uint32_t crc = 0xffffffff;
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < BUF_LEN; i++)
            crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static const struct {
    const char *name;
    uint32_t (*fn)(uint32_t);
} works[] = {
    { "qsort", w_qsort },   { "msort", w_msort },   { "fnv1a", w_fnv },
    { "xxmix", w_mix },     { "matint", w_matint }, { "matdbl", w_matdbl },
    { "crc32", w_crc32 },
};

int work_count(void) { return (int)(sizeof(works) / sizeof(works[0])); }
const char *work_name(int i) { return works[i].name; }

uint32_t work_run(int i, uint32_t iters)
{
    uint32_t sum = 0;
    for (uint32_t it = 0; it < iters; it++)
        sum = rotl(sum, 3) ^ works[i].fn(it);
    return sum;
}
