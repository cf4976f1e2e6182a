/* Interactive benchmark, one side: sends N numbers, reads each echo back. */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000, x;
    for (long i = 0; i < n; i++) {
        printf("%ld\n", i);
        fflush(stdout);
        if (scanf("%ld", &x) != 1 || x != i + 1) return 1;
    }
    return 0;
}
