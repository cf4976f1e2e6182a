/*
 * sbx spawner: the small, long-lived parent of every program run in a box.
 *
 * Why C: a process forked from Python pays copy-on-write faults on the
 * interpreter's heap (1-7 ms per run) and reports the interpreter's peak RSS
 * as its own (Linux keeps ru_maxrss across execve).  Forking from this tiny
 * image costs tens of microseconds and gives exact accounting.
 *
 * Box init execs it once per box, as box root with its capabilities in the
 * box's user namespace (none outside it).  It is a child subreaper, so every
 * process of a run, orphans included, is its descendant: it reaps them all and
 * sums their wait4() accounting, and ends a run with kill(-1), which spares box
 * init and itself.  In the range id mapping the program runs under another
 * uid and cannot signal it.
 *
 * usage: sbx-spawner CONTROL_FD PROGRAM_UID PROGRAM_GID SETGROUPS(0|1)
 *
 * Requests on CONTROL_FD (SOCK_SEQPACKET), NUL-separated tokens:
 *   run HAS_BPF HAS_CGROUP NRLIMITS ARGC ENVC CWD (RES SOFT HARD)* ARGV* ENV*
 *       with fds stdin, stdout, stderr [, bpf file] [, cgroup.procs]
 *   kill        end the current run now
 * Replies (JSON):
 *   {"listener":true} + the seccomp listener fd   (before the program execs)
 *   {"stage":S,"errno":N}                          the program could not be started
 *   {"wait_status":N,"cpu":S,"maxrss":KIB}         the run is over, every process reaped
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MSG (1 << 20)
#define MAX_FDS 5
#define MAX_ARGS 4096 /* each of argv and the environment; sandbox/api.py checks the same bound */

static int ctl;
static uid_t program_uid;
static gid_t program_gid;
static int use_setgroups;
static int last_cap = CAP_LAST_CAP;

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
    while (sendmsg(ctl, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

/* --- the program's process, between vfork and execve ------------------------------------------ */
/* vfork: no page tables to copy or tear down again at execve (~0.1 ms a run, 6% of the spawner's
 * cost). The child runs on the spawner's memory until execve, so nothing here allocates, returns
 * from start_run or writes a global; it only makes syscalls and ends in execve or _exit. */

static void child_fail(int err_pipe, const char *stage, int err)
{
    char msg[96];
    int n = snprintf(msg, sizeof msg, "%s %d", stage, err);
    if (write(err_pipe, msg, n) < 0)
        _exit(127);
    _exit(127);
}

static void drop_privileges(int err_pipe)
{
    for (int cap = 0; cap <= last_cap; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
            child_fail(err_pipe, "setup", errno);
    if (use_setgroups && setgroups(0, NULL) < 0)
        child_fail(err_pipe, "setup", errno);
    if (setresgid(program_gid, program_gid, program_gid) < 0 || setresuid(program_uid, program_uid, program_uid) < 0)
        child_fail(err_pipe, "setup", errno);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 || syscall(SYS_capset, &hdr, data) < 0)
        child_fail(err_pipe, "setup", errno);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(err_pipe, "setup", errno);
}

/* The filter is the last step before execve, so none of the steps above needs allowing. */
static void load_filter(int err_pipe, int bpf_fd)
{
    struct stat st;
    if (fstat(bpf_fd, &st) < 0 || st.st_size <= 0 || st.st_size % sizeof(struct sock_filter))
        child_fail(err_pipe, "seccomp", EINVAL);
    static struct sock_filter insns[BPF_MAXINSNS];
    if (st.st_size > (off_t)sizeof insns || pread(bpf_fd, insns, st.st_size, 0) != st.st_size)
        child_fail(err_pipe, "seccomp", EIO);
    struct sock_fprog prog = {(unsigned short)(st.st_size / sizeof *insns), insns};
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0)
        child_fail(err_pipe, "seccomp", errno);
    send_msg("{\"listener\":true}", (int)listener);
    close((int)listener);
}

struct run {
    char *cwd;
    int nrlimits;
    char **rlimits; /* 3 tokens each */
    char **argv;
    char **envp;
    int fds[MAX_FDS];
    int nfds, has_bpf, has_cgroup;
};

static void exec_program(struct run *r, int err_pipe)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    setsid();
    for (int i = 0; i < 3; i++)
        if (dup2(r->fds[i], i) < 0)
            child_fail(err_pipe, "setup", errno);
    if (chdir(r->cwd) < 0)
        child_fail(err_pipe, "cwd", errno);
    for (int i = 0; i < r->nrlimits; i++) {
        struct rlimit rl = {strtoull(r->rlimits[3 * i + 1], NULL, 10), strtoull(r->rlimits[3 * i + 2], NULL, 10)};
        if (setrlimit(atoi(r->rlimits[3 * i]), &rl) < 0)
            child_fail(err_pipe, "setup", errno);
    }
    int next = 3;
    int bpf_fd = r->has_bpf ? r->fds[next++] : -1;
    if (r->has_cgroup && write(r->fds[next], "0", 1) != 1)
        child_fail(err_pipe, "cgroup", errno);
    drop_privileges(err_pipe);
    if (bpf_fd >= 0)
        load_filter(err_pipe, bpf_fd);
    syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
    execvpe(r->argv[0], r->argv, r->envp);
    int err = errno;
    struct stat st;
    if (err == EACCES && strchr(r->argv[0], '/') && stat(r->argv[0], &st) == 0 && S_ISDIR(st.st_mode))
        err = EISDIR;
    child_fail(err_pipe, "exec", err);
}

/* --- the spawner's loop ----------------------------------------------------------------------- */

static pid_t main_pid;
static int main_status, main_done;
static double cpu;
static long maxrss;

static void account(struct rusage *ru)
{
    cpu += ru->ru_utime.tv_sec + ru->ru_stime.tv_sec + (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
    if (ru->ru_maxrss > maxrss)
        maxrss = ru->ru_maxrss;
}

static void reap(int options)
{
    int st;
    struct rusage ru;
    pid_t p;
    while ((p = wait4(-1, &st, options, &ru)) > 0) {
        account(&ru);
        if (p == main_pid) {
            main_status = st;
            main_done = 1;
        }
    }
}

static void finish_run(void)
{
    kill(-1, SIGKILL);
    reap(0);
    char msg[128];
    snprintf(msg, sizeof msg, "{\"wait_status\":%d,\"cpu\":%.6f,\"maxrss\":%ld}", main_status, cpu, maxrss);
    send_msg(msg, -1);
    main_pid = 0;
}

static int parse_run(char *buf, size_t len, struct run *r)
{
    static char *tok[8 + 3 * 64 + 2 * MAX_ARGS];
    size_t ntok = 0;
    for (char *p = buf; p < buf + len && ntok < sizeof tok / sizeof *tok; p += strlen(p) + 1)
        tok[ntok++] = p;
    if (ntok < 7 || strcmp(tok[0], "run") != 0)
        return -1;
    r->has_bpf = atoi(tok[1]);
    r->has_cgroup = atoi(tok[2]);
    r->nrlimits = atoi(tok[3]);
    int argc = atoi(tok[4]), envc = atoi(tok[5]);
    if (r->nrlimits < 0 || r->nrlimits > 64 || argc < 1 || argc > MAX_ARGS || envc < 0 || envc > MAX_ARGS ||
        7 + 3 * (size_t)r->nrlimits + argc + envc != ntok)
        return -1;
    if (r->nfds != 3 + r->has_bpf + r->has_cgroup)
        return -1;
    r->cwd = tok[6];
    r->rlimits = tok + 7;
    static char *argv[MAX_ARGS + 1], *envp[MAX_ARGS + 1];
    char **a = tok + 7 + 3 * r->nrlimits;
    memcpy(argv, a, argc * sizeof *a);
    argv[argc] = NULL;
    memcpy(envp, a + argc, envc * sizeof *a);
    envp[envc] = NULL;
    r->argv = argv;
    r->envp = envp;
    return 0;
}

static void start_run(struct run *r)
{
    int err_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC) < 0) {
        send_msg("{\"stage\":\"setup\",\"errno\":24}", -1);
        return;
    }
    cpu = 0;
    maxrss = 0;
    main_done = 0;
    main_status = 0;
    main_pid = vfork();
    if (main_pid == 0) {
        close(err_pipe[0]);
        exec_program(r, err_pipe[1]);
    }
    close(err_pipe[1]);
    char buf[96] = {0};
    ssize_t n;
    while ((n = read(err_pipe[0], buf, sizeof buf - 1)) < 0 && errno == EINTR)
        ;
    close(err_pipe[0]);
    if (main_pid < 0 || n > 0) {
        char stage[32] = "setup";
        int err = main_pid < 0 ? errno : 0;
        if (n > 0)
            sscanf(buf, "%31s %d", stage, &err);
        if (main_pid > 0)
            reap(0);
        char msg[96];
        snprintf(msg, sizeof msg, "{\"stage\":\"%s\",\"errno\":%d}", stage, err);
        send_msg(msg, -1);
        main_pid = 0;
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 125;
    ctl = atoi(argv[1]);
    program_uid = (uid_t)atol(argv[2]);
    program_gid = (gid_t)atol(argv[3]);
    use_setgroups = atoi(argv[4]);
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
    if (f) {
        if (fscanf(f, "%d", &last_cap) != 1)
            last_cap = CAP_LAST_CAP;
        fclose(f);
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    static char buf[MAX_MSG];
    for (;;) {
        struct pollfd pfd[2] = {{ctl, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(pfd, 2, -1) < 0 && errno != EINTR)
            return 1;
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap(WNOHANG);
            if (main_pid && main_done)
                finish_run();
        }
        if (!pfd[0].revents)
            continue;
        union { struct cmsghdr h; char b[CMSG_SPACE(MAX_FDS * sizeof(int))]; } anc;
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = anc.b, .msg_controllen = sizeof anc.b};
        ssize_t n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return n == 0 ? 0 : 1;
        buf[n] = 0;
        struct run r = {.nfds = 0};
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (int i = 0; i < k && r.nfds < MAX_FDS; i++)
                    memcpy(&r.fds[r.nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        if (strcmp(buf, "kill") == 0) {
            if (main_pid)
                finish_run();
        } else if (main_pid == 0 && parse_run(buf, n, &r) == 0) {
            start_run(&r);
        } else {
            send_msg("{\"stage\":\"setup\",\"errno\":22}", -1);
        }
        for (int i = 0; i < r.nfds; i++)
            close(r.fds[i]);
    }
}
