#include <stdio.h>
int main(void) {
    long n, x, s = 0;
    scanf("%ld", &n);
    for (long i = 0; i < n; i++) { scanf("%ld", &x); s += x; }
    printf("%ld\n", s / n); /* integer division */
    return 0;
}
