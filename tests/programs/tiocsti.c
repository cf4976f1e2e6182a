/* Hostile: push a byte into the terminal's input (TIOCSTI).
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
    long r = ioctl(0, TIOCSTI, &c);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
