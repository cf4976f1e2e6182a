/* Hostile: read a process's memory (our own) with process_vm_readv.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/uio.h>

int main(void)
{
    char src[8] = "secret", dst[8];
    struct iovec l = {dst, sizeof dst}, rv = {src, sizeof src};
    long r = process_vm_readv(getpid(), &l, 1, &rv, 1, 0);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
