/* Interactive benchmark, other side: answers every number with its successor. */
#include <stdio.h>
int main(void) {
    long x;
    while (scanf("%ld", &x) == 1) {
        printf("%ld\n", x + 1);
        fflush(stdout);
    }
    return 0;
}
