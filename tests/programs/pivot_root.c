/* Hostile: pivot_root.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    long r = syscall(SYS_pivot_root, "/tmp", "/tmp");
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
