/*
 * sbx exec stub: the small parent of every sandboxed program.
 *
 * Why it exists: Linux keeps the peak RSS of a process across execve, so a
 * program forked from a Python process would report Python's ~20 MB as its own
 * memory peak.  Box init therefore execs this stub (after dropping every
 * privilege), and the stub forks the program from its own tiny image, loads
 * the seccomp filter in the child (so the policy need not allow fork for the
 * stub's sake), and reports the program's exact wait4() accounting.
 *
 * usage: sbx-exec STATUS_FD BPF_FD PROG [ARG...]
 *   STATUS_FD  SOCK_SEQPACKET socket to box init; receives JSON lines:
 *              {"listener":true} with the seccomp listener fd (SCM_RIGHTS),
 *              {"stage":"exec","errno":N} when execve failed,
 *              {"exec":true,"overhead":S} once the program runs (S: CPU seconds
 *              spent before that, which are the sandbox's, not the program's),
 *              and finally {"wait_status":N,"maxrss":KIB}.
 *   BPF_FD     fd of a file holding the BPF program, or -1 for none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int status_fd;

static void send_msg(const char *msg, int fd)
{
    struct iovec iov = {(void *)msg, strlen(msg)};
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } anc;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&anc, 0, sizeof anc);
        mh.msg_control = anc.buf;
        mh.msg_controllen = sizeof anc.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    while (sendmsg(status_fd, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static void fail(const char *stage, int err)
{
    char msg[128];
    snprintf(msg, sizeof msg, "{\"stage\":\"%s\",\"errno\":%d}", stage, err);
    send_msg(msg, -1);
    _exit(127);
}

/* Runs in the program's process: the filter must be its last step before execve. */
static void load_filter(int bpf_fd)
{
    struct stat st;
    if (fstat(bpf_fd, &st) < 0 || st.st_size <= 0 || st.st_size % sizeof(struct sock_filter))
        fail("seccomp", EINVAL);
    struct sock_filter *insns = malloc(st.st_size);
    if (!insns || pread(bpf_fd, insns, st.st_size, 0) != st.st_size)
        fail("seccomp", EIO);
    close(bpf_fd);
    struct sock_fprog prog = {(unsigned short)(st.st_size / sizeof *insns), insns};
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0)
        fail("seccomp", errno);
    send_msg("{\"listener\":true}", (int)listener);
    close((int)listener);
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return 125;
    status_fd = atoi(argv[1]);
    int bpf_fd = atoi(argv[2]);
    int exec_pipe[2];
    if (pipe2(exec_pipe, O_CLOEXEC) < 0)
        fail("setup", errno);
    pid_t pid = fork();
    if (pid < 0)
        fail("setup", errno);
    if (pid == 0) {
        close(exec_pipe[0]);
        if (bpf_fd >= 0)
            load_filter(bpf_fd);
        close(status_fd);
        execvp(argv[3], argv + 3);
        int err = errno;
        struct stat st;
        if (err == EACCES && strchr(argv[3], '/') && stat(argv[3], &st) == 0 && S_ISDIR(st.st_mode))
            err = EISDIR;
        if (write(exec_pipe[1], &err, sizeof err) < 0)
            _exit(127);
        _exit(127);
    }
    close(exec_pipe[1]);
    if (bpf_fd >= 0)
        close(bpf_fd);
    int err;
    ssize_t n;
    while ((n = read(exec_pipe[0], &err, sizeof err)) < 0 && errno == EINTR)
        ;
    if (n == sizeof err)
        fail("exec", err);
    /* Everything this process has used so far (box init's fork, the Python setup before execve of
     * the stub) is sandbox overhead, not the program's: box init subtracts it. */
    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
    char ready[128];
    snprintf(ready, sizeof ready, "{\"exec\":true,\"overhead\":%ld.%06ld}",
             (long)(self.ru_utime.tv_sec + self.ru_stime.tv_sec) + (self.ru_utime.tv_usec + self.ru_stime.tv_usec) / 1000000,
             (long)((self.ru_utime.tv_usec + self.ru_stime.tv_usec) % 1000000));
    send_msg(ready, -1);
    int wstatus;
    struct rusage ru;
    while (wait4(pid, &wstatus, 0, &ru) < 0)
        if (errno != EINTR)
            return 125;
    char msg[256];
    snprintf(msg, sizeof msg, "{\"wait_status\":%d,\"maxrss\":%ld}", wstatus, ru.ru_maxrss);
    send_msg(msg, -1);
    return 0;
}
