#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *half(void *arg) { *(int *)arg = 21; return NULL; }

int main(void) {
    char mode[16] = "";
    if (scanf("%15s", mode) != 1) return 1;
    if (!strcmp(mode, "ok")) puts("42");
    else if (!strcmp(mode, "wa")) puts("41");
    else if (!strcmp(mode, "tle")) { volatile unsigned long n = 0; for (;;) n++; }
    else if (!strcmp(mode, "mle")) {
        for (;;) { char *p = malloc(1 << 20); if (!p) return 3; memset(p, 1, 1 << 20); }
    }
    else if (!strcmp(mode, "re")) { volatile int *p = NULL; *p = 1; }
    else if (!strcmp(mode, "threads")) {
        int a = 0, b = 0;
        pthread_t t1, t2;
        pthread_create(&t1, NULL, half, &a);
        pthread_create(&t2, NULL, half, &b);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        printf("%d\n", a + b);
    }
    return 0;
}
