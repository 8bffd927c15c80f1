/* x87 results: compiled with -mfpmath=387, so every operation below runs on
 * the x87 unit, including the transcendental instructions of libm. */
#include <stdio.h>
#include <math.h>

int main(void) {
    volatile double x = 0.5;
    long double acc = 0;
    for (int i = 1; i <= 2000; i++) {
        double d = i * x;
        acc += sinl(d) * cosl(d / 3) + sqrtl(d) - logl(d) + atan2l(d, 7.0L) + expl(-d / 100);
        acc += fmodl(d * 13.0L, 7.0L) + powl(1.0001L, d);
    }
    printf("x87 %.15Lg\n", acc);
    printf("%a %a %a\n", sqrt(2.0), log(10.0), exp(1.0));
    printf("%.20Lg %.20Lg\n", 1.0L / 3.0L, tanl(0.7L));
    volatile double big = 1e308, zero = 0.0;
    printf("%g %g %g %d\n", big * 10, -big * 10, zero / zero, (int)(2.5 + 0.1));
    printf("rint %ld %ld %lld\n", lrint(2.5), lrint(-3.5), llrint(1e15 + 0.5));
    return 0;
}
