#include <stdio.h>
int main(void) {  /* quadratic */
    long n, s = 0;
    scanf("%ld", &n);
    static long a[300000];
    for (long i = 0; i < n; i++) scanf("%ld", &a[i]);
    for (long i = 0; i < n; i++) for (long j = 0; j < n; j++) if (i == j) s += a[j];
    printf("%ld\n", s);
    return 0;
}
