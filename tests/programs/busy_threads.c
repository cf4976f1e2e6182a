/* Benign but endless: four threads spinning, so CPU time grows four times faster than wall time. */
#include <pthread.h>

static void *spin(void *arg)
{
    volatile unsigned long n = 0;
    for (;;)
        n += (unsigned long)arg;
    return NULL;
}

int main(void)
{
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, spin, (void *)i) != 0)
            return 3;
    pthread_join(t[0], NULL);
    return 0;
}
