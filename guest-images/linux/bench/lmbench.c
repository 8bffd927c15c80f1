/* lmbench-style micro-benchmarks of the operations a BT monitor makes
 * expensive, and the translated code's cost per call: qsort through a
 * comparison function (the CPU-bound program's hot loop), on random and on
 * sorted input (no mispredictions). Prints one "name ns-per-op" line each
 * (guest clock); a qsort's op is one whole sort, the best of QSORT_RUNS. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void report(const char *name, double t0, long n) { printf("%-22s %10.0f ns\n", name, (now() - t0) / n); }

enum { QSORT_N = 1 << 16, QSORT_RUNS = 20 };

static int cmp_u32(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

/* The best time of QSORT_RUNS sorts of QSORT_N numbers, random or sorted. */
static void qsort_bench(const char *name, int sorted) {
    static unsigned v[QSORT_N];
    unsigned s = 1;
    double best = 1e18;
    for (int r = 0; r < QSORT_RUNS; r++) {
        for (int i = 0; i < QSORT_N; i++) {
            s ^= s << 13; s ^= s >> 17; s ^= s << 5;
            v[i] = sorted ? (unsigned)i : s;
        }
        double t = now();
        qsort(v, QSORT_N, sizeof v[0], cmp_u32);
        t = now() - t;
        if (t < best) best = t;
    }
    printf("%-22s %10.0f ns\n", name, best);
}

int main(int argc, char **argv) {
    if (argc > 1) return 0; /* fork+exec target */
    long n = 200000;
    double t = now();
    for (long i = 0; i < n; i++) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(SYS_getppid) : "memory");
    }
    report("syscall int80", t, n);
    t = now();
    for (long i = 0; i < n; i++) syscall(SYS_getppid); /* through the vDSO: SYSENTER */
    report("syscall vdso", t, n);

    n = 300;
    t = now();
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
    }
    report("fork+exit+wait", t, n);
    n = 100;
    t = now();
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            execl("/proc/self/exe", argv[0], "x", (char *)NULL);
            _exit(1);
        }
        waitpid(p, NULL, 0);
    }
    report("fork+exec", t, n);

    int a[2], b[2];
    if (pipe(a) || pipe(b)) return 1;
    n = 20000;
    pid_t p = fork();
    if (p == 0) {
        char c;
        for (long i = 0; i < n; i++) {
            if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1) _exit(1);
        }
        _exit(0);
    }
    t = now();
    for (long i = 0; i < n; i++) {
        char c = 'x';
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 1;
    }
    report("pipe round trip", t, n);
    waitpid(p, NULL, 0);

    long pages = 16384;
    char *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    t = now();
    for (long i = 0; i < pages; i++) m[i * 4096] = 1;
    report("page fault", t, pages);
    munmap(m, pages * 4096);

    n = 20000;
    t = now();
    for (long i = 0; i < n; i++) {
        void *q = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(q, 65536);
    }
    report("mmap+munmap", t, n);

    qsort_bench("qsort random", 0);
    qsort_bench("qsort sorted", 1);
    return 0;
}
