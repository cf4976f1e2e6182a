#include <stdio.h>
int main(void) {
    long n, x, s = 0;
    if (scanf("%ld", &n) != 1) return 1;
    while (n-- > 0 && scanf("%ld", &x) == 1) s += x;
    printf("%ld\n", s);
    return 0;
}
