/* Benign: four pthreads summing into their own slots; prints the total. */
#include <pthread.h>
#include <stdio.h>

static long sums[4];

static void *work(void *arg)
{
    long i = (long)arg;
    for (long k = 0; k < 1000000; k++)
        sums[i] += k % 7;
    return NULL;
}

int main(void)
{
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, work, (void *)i) != 0)
            return 3;
    long total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += sums[i];
    }
    printf("threads: %ld\n", total);
    return 0;
}
