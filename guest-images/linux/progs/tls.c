/* Thread-local storage through %gs, and threads (clone, futex). */
#include <pthread.h>
#include <stdio.h>

static __thread int counter = 5;
static __thread char name[16] = "main";

static void *worker(void *arg) {
    int id = (int)(long)arg;
    for (int i = 0; i < 1000; i++) counter += id;
    snprintf(name, sizeof name, "worker%d", id);
    return (void *)(long)counter;
}

int main(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    long sum = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        sum += (long)r;
    }
    printf("tls main %d %s, threads %ld\n", counter, name, sum);
    return 0;
}
