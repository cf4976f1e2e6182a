/* Hostile: TIOCSTI with garbage in the upper 32 bits of the request, which the kernel ignores.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>

int main(void)
{
    char c = 0x0a;
    long r = syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, &c);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
