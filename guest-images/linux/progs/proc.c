/* Processes: fork/wait, exec, pipes, anonymous mmap and copy-on-write,
 * munmap, and a system call given a bad pointer (EFAULT, never an oops). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1) {  /* the exec'd child */
        printf("exec child: %s\n", argv[1]);
        return 7;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t len = 64 * 4096;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i += 4096) p[i] = (unsigned char)(i >> 12);
    int fd[2];
    if (pipe(fd)) return 2;
    pid_t c = fork();
    if (c == 0) {  /* child: its writes must not reach the parent (COW) */
        for (size_t i = 0; i < len; i += 4096) p[i] ^= 0xFF;
        unsigned s = 0;
        for (size_t i = 0; i < len; i += 4096) s += p[i];
        char msg[64];
        int n = snprintf(msg, sizeof msg, "child sum %u", s);
        if (write(fd[1], msg, n) != n) _exit(1);
        _exit(3);
    }
    close(fd[1]);
    char buf[64] = {0};
    ssize_t n = read(fd[0], buf, sizeof buf - 1);
    int st;
    waitpid(c, &st, 0);
    unsigned s = 0;
    for (size_t i = 0; i < len; i += 4096) s += p[i];
    printf("pipe %zd '%s' exit %d parent sum %u\n", n, buf, WEXITSTATUS(st), s);
    if (munmap(p, len)) return 3;

    /* EFAULT from bad user pointers. */
    errno = 0;
    long r = write(1, (void *)16, 10);
    printf("write(bad) %ld %s\n", r, strerror(errno));
    errno = 0;
    int z = open("/dev/zero", 0);
    r = read(z, (void *)24, 10);
    printf("read(bad) %ld %s\n", r, strerror(errno));
    close(z);

    /* Many short-lived processes. */
    int total = 0;
    for (int i = 0; i < 50; i++) {
        pid_t k = fork();
        if (k == 0) _exit(i & 7);
        waitpid(k, &st, 0);
        total += WEXITSTATUS(st);
    }
    printf("50 forks, exit sum %d\n", total);

    c = fork();
    if (c == 0) {
        execl("/proc/self/exe", argv[0], "hello", (char *)NULL);
        _exit(99);
    }
    waitpid(c, &st, 0);
    printf("exec exit %d\n", WEXITSTATUS(st));
    return 0;
}
