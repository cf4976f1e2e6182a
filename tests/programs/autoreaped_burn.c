/* Hostile: burn CPU in short-lived children that the kernel reaps by itself
 * (SIGCHLD ignored), so that no wait4() ever reports their time.
 * usage: autoreaped_burn SECONDS  (of CPU to burn, 20 ms per child) */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double total = argc > 1 ? atof(argv[1]) : 3.0;
    signal(SIGCHLD, SIG_IGN);
    for (int i = 0; i < (int)(total / 0.02); i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 3;
        }
        if (pid == 0) {
            double until = cpu_now() + 0.02;
            while (cpu_now() < until)
                ;
            _exit(0);
        }
        while (kill(pid, 0) == 0 || errno != ESRCH) /* gone without a wait: the kernel reaped it */
            usleep(2000);
    }
    puts("done");
    return 0;
}
