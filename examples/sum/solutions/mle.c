#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {  /* keeps every line it ever read, and then some */
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) abort();
        memset(p, 1, 1 << 20);
    }
}
