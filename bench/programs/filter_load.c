/* Forks N children that each load the filter in FILE (none without FILE) and exit; prints the mean per fork.
 * bench/filter_load_bench.py builds and runs it: what loading a seccomp filter costs, and where. */
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static struct sock_filter insns[4096];
    int n = 0, rounds = argc > 1 ? atoi(argv[1]) : 2000;
    if (argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0)
            return 2;
        n = (int)(read(fd, insns, sizeof insns) / sizeof *insns);
        close(fd);
    }
    struct sock_fprog prog = {(unsigned short)n, insns};
    double start = now();
    for (int i = 0; i < rounds; i++) {
        pid_t pid = vfork();
        if (pid == 0) {
            if (n && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0))
                _exit(3);
            _exit(0);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || status != 0)
            return 1;
    }
    printf("%.1f\n", (now() - start) / rounds * 1e6);
    return 0;
}
