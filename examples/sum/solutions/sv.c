#include <stdio.h>
#include <unistd.h>
int main(void) {  /* tries to start a helper process: not allowed under the strict policy */
    if (fork() == 0) _exit(0);
    puts("6");
    return 0;
}
