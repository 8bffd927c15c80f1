/* MMX and SSE/SSE2 results through the compiler's intrinsics. */
#include <stdio.h>
#include <stdint.h>
#include <emmintrin.h>
#include <mmintrin.h>

static void p128(const char *n, __m128i v) {
    uint32_t w[4];
    _mm_storeu_si128((__m128i *)w, v);
    printf("%s %08x %08x %08x %08x\n", n, w[0], w[1], w[2], w[3]);
}

int main(void) {
    __m64 a = _mm_set_pi16(1, -2, 300, 32767), b = _mm_set_pi16(7, 8, -9, 10);
    __m64 m = _mm_add_pi16(_mm_mullo_pi16(a, b), _mm_adds_pi16(a, b));
    m = _mm_xor_si64(m, _mm_slli_pi32(_mm_packs_pi32(_mm_set_pi32(70000, -5), _mm_set_pi32(3, 4)), 3));
    uint64_t mm;
    __builtin_memcpy(&mm, &m, 8);
    _mm_empty();
    printf("mmx %016llx\n", (unsigned long long)mm);

    __m128 f = _mm_set_ps(1.5f, -2.25f, 3.0f, 1e10f), g = _mm_set_ps(0.5f, 4.0f, -1.0f, 3.0f);
    __m128 r = _mm_add_ps(_mm_mul_ps(f, g), _mm_sqrt_ps(_mm_max_ps(f, g)));
    r = _mm_div_ps(r, _mm_rcp_ps(_mm_set1_ps(4.0f))); /* rcp is approximate but deterministic per CPU */
    float fo[4];
    _mm_storeu_ps(fo, _mm_min_ps(r, _mm_set1_ps(1e9f)));
    printf("sse %a %a %a %a\n", fo[0], fo[1], fo[2], fo[3]);

    __m128d d = _mm_set_pd(2.0, -7.5), e = _mm_set_pd(1e-3, 3.25);
    __m128d q = _mm_sqrt_pd(_mm_add_pd(_mm_mul_pd(d, d), e));
    double dq[2];
    _mm_storeu_pd(dq, q);
    printf("sse2 %a %a %d %d\n", dq[0], dq[1], _mm_cvtsd_si32(q), _mm_cvttsd_si32(_mm_set_sd(-2.7)));

    __m128i x = _mm_set_epi32(0x7fffffff, -1, 12345, 0x80000000), y = _mm_set_epi32(1, 1, -12345, -1);
    p128("paddd", _mm_add_epi32(x, y));
    p128("paddsw", _mm_adds_epi16(x, y));
    p128("pmuludq", _mm_mul_epu32(x, y));
    p128("pshufd", _mm_shuffle_epi32(x, 0x1b));
    p128("unpack", _mm_unpackhi_epi8(x, y));
    p128("sad", _mm_sad_epu8(x, y));
    p128("cmpgt", _mm_cmpgt_epi32(x, y));
    p128("srl", _mm_srli_epi64(x, 13));
    printf("movemask %x\n", _mm_movemask_epi8(x));
    return 0;
}
