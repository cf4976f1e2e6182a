#include <stdio.h>
int main(void) {
    long n;
    scanf("%ld", &n);
    long *p = 0;
    if (n > 4) *p = n;  /* segfault on bigger tests */
    printf("%ld\n", n);
    return 0;
}
