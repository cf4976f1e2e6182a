/* Hostile: mount through the i386 ABI (int $0x80, i386 syscall number 21).
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(21L), "b"(0L), "c"(0L), "d"(0L) : "memory");
    if (r < 0) {
        errno = -r;
        r = -1;
    }
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
