/* Hostile: io_uring_setup.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/io_uring.h>

int main(void)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long r = syscall(SYS_io_uring_setup, 4, &p);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
