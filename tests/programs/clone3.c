/* clone3 must fail with ENOSYS (its flags are in memory, out of the filter's reach), without a kill. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0)
        _exit(0);
    printf("clone3: %ld %s\n", r, r < 0 ? strerror(errno) : "created");
    return 0;
}
