/* Benchmark: N getppid() system calls (N = argv[1], default 1000000). */
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += syscall(SYS_getppid);
    return sum == 0;
}
