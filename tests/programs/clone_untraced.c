/* Hostile: clone(CLONE_UNTRACED) makes a child that no tracer attaches to: without cgroup v2 the spawner
 * counts a forking run's CPU by tracing every process, so this child's time could go unseen.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    long r = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        _exit(0);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
