/* Signals: handlers for SIGSEGV, SIGFPE, SIGILL, SIGTRAP from faulting
 * instructions (recovered with siglongjmp), signal masks, SIGCHLD, kill. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile int got;

static void on_fault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got = sig;
    printf("signal %s code %d addr %s\n", strsignal(sig), si->si_code,
           sig == SIGSEGV ? (si->si_addr == (void *)0x10 ? "0x10" : "other") : "-");
    siglongjmp(env, 1);
}

static void on_usr(int sig) { got = sig; }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    sigaction(SIGTRAP, &sa, NULL);
    if (!sigsetjmp(env, 1)) *(volatile int *)0x10 = 1;
    if (!sigsetjmp(env, 1)) { volatile int z = 0; printf("%d\n", 5 / z); }
    if (!sigsetjmp(env, 1)) __asm__ volatile("ud2");
    if (!sigsetjmp(env, 1)) __asm__ volatile("int3");
    signal(SIGUSR1, on_usr);
    sigset_t m, old;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, &old);
    got = 0;
    kill(getpid(), SIGUSR1);
    printf("blocked: got %d\n", got);
    sigprocmask(SIG_SETMASK, &old, NULL);
    printf("unblocked: got %s\n", strsignal(got));
    pid_t c = fork();
    if (c == 0) { pause(); _exit(0); }
    kill(c, SIGTERM);
    int st;
    waitpid(c, &st, 0);
    printf("child killed by %s\n", strsignal(WTERMSIG(st)));
    return 0;
}
