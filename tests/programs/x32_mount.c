/* Hostile: mount through the x32 ABI (the x86_64 number with bit 30 set).
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    long r = syscall(0x40000000 | SYS_mount, 0, 0, 0, 0, 0);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
