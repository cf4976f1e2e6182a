/* Hostile: the fork syscall itself (glibc's fork() uses clone).
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(void)
{
    long r = syscall(SYS_fork);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid(r, NULL, 0);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
