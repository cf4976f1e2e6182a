#include <stdio.h>
int main(void) {  /* overflows: int instead of long */
    int n, x, s = 0;
    scanf("%d", &n);
    while (n-- > 0 && scanf("%d", &x) == 1) s += x;
    printf("%d\n", s);
    return 0;
}
