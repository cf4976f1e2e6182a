/*
 * sbx spawner: the small, long-lived parent of every program run in a box, and the watcher of its runs.
 *
 * Why C: a process forked from Python pays copy-on-write faults on the
 * interpreter's heap (1-7 ms per run) and reports the interpreter's peak RSS
 * as its own (Linux keeps ru_maxrss across execve).  Forking from this tiny
 * image costs tens of microseconds and gives exact accounting.  It also talks
 * to the supervisor directly and enforces the CPU and wall limits and the
 * seccomp policy's notifications itself: every process hand-off of a run costs
 * 50-100 us of wake-ups, so a run is one request and one report.
 *
 * Box init execs it once per box, as box root with its capabilities in the
 * box's user namespace (none outside it).  It is a child subreaper, so every
 * process of a run, orphans included, is its descendant: it reaps them all and
 * sums their wait4() accounting, and ends a run with kill(-1) when any of them
 * is left, which spares box init and itself.  In the range id mapping the
 * program runs under another uid and cannot signal it; in the single mapping
 * it can, and box init, which nothing in the box can signal, continues a
 * stopped spawner.
 *
 * CPU time: RLIMIT_CPU is per process with one-second resolution, and isolate
 * and go-judge poll every 100 ms.  The spawner instead sums the CPU of the run
 * and sleeps until the earliest moment the run could reach its limit with every
 * core busy, then looks again; the sleeps shrink as the limit nears, so the
 * kill lands within about a millisecond of it.  A run shorter than limit/cores
 * is never looked at.  The sum is the run cgroup's cpu.stat when there is one.
 * Without it, it is the CPU clocks of the live processes plus what the dead
 * ones used; and a child that the kernel reaps by itself (its parent ignores
 * SIGCHLD) takes its time with it.  So with TRACE the spawner ptraces every
 * process of the run (PTRACE_SEIZE before execve; forks, vforks and clones
 * are attached by the kernel) and reaps each one itself, reading the CPU clock
 * of the zombie first: a traced child is never reaped behind its tracer's back.
 *
 * Memory without cgroups (MEM_LIMIT): RLIMIT_AS is per process and counts what
 * is reserved, not used.  The spawner sums the resident memory of the run's
 * processes and ends the run MLE when the sum reaches the limit.  Like the CPU
 * look, it sleeps until the earliest moment the run could reach the limit with
 * every core making pages resident faster than a core can zero them, then looks
 * again, at least a millisecond apart (and more when a look is costly: many
 * processes).  The supervisor sets RLIMIT_AS per process as a backstop above
 * the limit.
 *
 * usage: sbx-spawner CONTROL_FD PROGRAM_UID PROGRAM_GID SETGROUPS(0|1)
 *
 * Captured output: with CAPTURE 1, the stdout and stderr fds of a request are
 * files (the supervisor's memfds); the program gets pipes, and the spawner
 * copies them into the files, ending the run (OLE) at OUTPUT_LIMIT bytes of the
 * two together.  So a judge's run needs no reader task in the supervisor.
 *
 * Requests on CONTROL_FD (SOCK_SEQPACKET), NUL-separated tokens:
 *   run HAS_BPF HAS_CGROUP TRACE CPU_LIMIT WALL_LIMIT MEM_LIMIT CAPTURE OUTPUT_LIMIT NRLIMITS ARGC ENVC CWD
 *       CPUS NFDS FLAGS (RES SOFT HARD)* ARGV* ENV*
 *       with fds: the program's 0 to NFDS-1 (3 <= NFDS <= MAX_PROGRAM_FDS) [, bpf file] [, cgroup.procs,
 *       cpu.stat]; a limit of 0 is none, CPUS the CPUs to pin the program to ("0,2", "" for any); FLAGS:
 *       SAY_STARTED, say {"started":true} once the program's execve succeeded (a detached box's monitor waits
 *       for it); TERMINAL, the program's stdin is a terminal the supervisor made for this run alone (sbx exec -t),
 *       to be its controlling terminal
 *   kill        end the current run now (ignored between runs)
 * Replies (JSON):
 *   {"stage":S,"errno":N}      the program could not be started
 *   {"started":true}           the program runs (only when the request's FLAGS ask), before its end's reply
 *   {"wait_status":N,"cpu":S,"maxrss":KIB,"wall":S,"limit":L,"syscall":[ARCH,NR],"out":[B,B],
 *    "refused":[[ARCH,NR,COUNT],...]}
 *       the run is over, every process reaped; L is "TLE", "WLE", "MLE", "SV", "OLE"
 *       or null, syscall (else null) is the first call the policy refused, out
 *       the bytes captured into each file, and refused the calls the policy
 *       failed with an errno, counted (the first MAX_REFUSED distinct ones)
 *
 * Refusals are counted so that a program a policy breaks (ENOSYS where it
 * expected a call to work) shows which call did it.  The program's process
 * loads the policy with every ERRNO return turned into USER_NOTIF; the
 * spawner runs the policy as compiled on each notified call (bpf_action) to
 * tell a refusal (answered with its errno, counted) from a kill.  Only when
 * the request says so (seccomp token 2): a policy that refuses a call this
 * process makes between loading the filter and execve would wait for an
 * answer that the spawner, waiting for that execve, never gives (seccomp/compiler.py,
 * SPAWN_CALLS); such a policy is loaded as it is (token 1).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sys/mount.h>

#include "send_msg.h"

#define MAX_MSG (1 << 20)
#define MAX_PROGRAM_FDS 64 /* the fds a program may be given; sandbox/box/run_protocol.py has the same bound */
#define MAX_FDS (MAX_PROGRAM_FDS + 3)
#define MAX_ARGS 4096 /* each of argv and the environment; sandbox/box/run_protocol.py has the same bound */
#define HEAD_TOKENS 16 /* "run" up to FLAGS; as sandbox/box/run_protocol.py */
#define SAY_STARTED 1   /* FLAGS */
#define TERMINAL 2
#define CHUNK (1 << 16)
#define COPY_ROUNDS 16
#define MIN_CPU_SLEEP 0.0002
#define MIN_MEM_SLEEP 0.001
#define MEM_LOOK_SHARE 20   /* a memory look costs at most 1/20 of the time between looks */
#define TOUCH_RATE 16e9     /* bytes a core can make resident per second: more than it can zero */
#define MAX_REFUSED 16
#define TRACE_OPTIONS (PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | \
                       PTRACE_O_EXITKILL)

static int ctl;
static int listener_pair[2]; /* the program's process hands its seccomp listener to the spawner over it */
static uid_t program_uid;
static gid_t program_gid;
static int use_setgroups;
static int program_userns = -1; /* with a program that is root of the box: its own user namespace (starter.c) */
static pid_t spawner_pid; /* a program's process outliving it is killed (parent-death signal) */
static int last_cap = CAP_LAST_CAP;
static long clock_tick;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* After a run's report, the spawner polls for the next request for SPIN_S before it sleeps: a pool's next run
 * comes a few hundred microseconds later, and on a virtual machine each sleep and wake-up costs 50-100 us.  Only
 * with another CPU for the supervisor to run on meanwhile. */
#define SPIN_S 0.0003
static int spin;
static double spin_until;

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

/* What root of its own user namespace keeps (as podman's default): enough for package managers to own files and
 * drop to their users; its namespace owns nothing of the box's. */
static const unsigned long long ROOT_CAPS = 1ULL << CAP_CHOWN | 1ULL << CAP_DAC_OVERRIDE | 1ULL << CAP_FOWNER |
                                            1ULL << CAP_FSETID | 1ULL << CAP_KILL | 1ULL << CAP_SETGID |
                                            1ULL << CAP_SETUID | 1ULL << CAP_SETPCAP | 1ULL << CAP_NET_BIND_SERVICE |
                                            1ULL << CAP_SYS_CHROOT | 1ULL << CAP_SETFCAP;

/* Empty the bounding set but for `keep`.  A program that is not root of its own user namespace inherits the
 * spawner's, which main empties once (the spawner never execs, so its own only bounds its children): a run
 * saves last_cap + 1 prctl calls.  Entering the program's own namespace fills it again, so that case drops in
 * each run. */
static int drop_bounding(unsigned long long keep)
{
    for (int cap = 0; cap <= last_cap; cap++)
        if (!(keep >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
            return -1;
    return 0;
}

static void drop_privileges(int err_pipe)
{
    /* first, while this process is the box's root: entering the namespace takes its owner's rights over it */
    if (program_userns >= 0 && (setns(program_userns, CLONE_NEWUSER) < 0 || drop_bounding(ROOT_CAPS) < 0))
        child_fail(err_pipe, "setup", errno);
    unsigned long long keep = program_userns >= 0 ? ROOT_CAPS : 0;
    if (use_setgroups && setgroups(0, NULL) < 0)
        child_fail(err_pipe, "setup", errno);
    if (setresgid(program_gid, program_gid, program_gid) < 0 || setresuid(program_uid, program_uid, program_uid) < 0)
        child_fail(err_pipe, "setup", errno);
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 || syscall(SYS_capset, &hdr, data) < 0)
        child_fail(err_pipe, "setup", errno);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(err_pipe, "setup", errno);
}

/* The filter is the last step before execve, so none of the steps above needs allowing. */
static void load_filter(int err_pipe, int bpf_fd, int count_refusals, int listener_sock)
{
    struct stat st;
    if (fstat(bpf_fd, &st) < 0 || st.st_size <= 0 || st.st_size % sizeof(struct sock_filter))
        child_fail(err_pipe, "seccomp", EINVAL);
    static struct sock_filter insns[BPF_MAXINSNS];
    if (st.st_size > (off_t)sizeof insns || pread(bpf_fd, insns, st.st_size, 0) != st.st_size)
        child_fail(err_pipe, "seccomp", EIO);
    for (size_t i = 0; count_refusals && i < st.st_size / sizeof *insns; i++)
        if (insns[i].code == (BPF_RET | BPF_K) && (insns[i].k & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_ERRNO)
            insns[i].k = SECCOMP_RET_USER_NOTIF; /* the spawner answers with the errno, and counts it */
    struct sock_fprog prog = {(unsigned short)(st.st_size / sizeof *insns), insns};
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0)
        child_fail(err_pipe, "seccomp", errno);
    send_msg(listener_sock, "L", (int)listener);
    close((int)listener);
}

struct run {
    char *cwd;
    double cpu_limit, wall_limit;
    long long mem_limit;
    int trace;
    int capture;
    long long output_limit;
    int nrlimits;
    char **rlimits; /* 3 tokens each */
    char **argv;
    char **envp;
    int fds[MAX_FDS];
    int nfds, nprogram, has_bpf, has_cgroup, count_refusals;
    cpu_set_t cpus; /* with `pin`, the CPUs the program may run on (go-judge's cpuSetLimit) */
    int pin;
    int flags;
};

/* `go`: with TRACE, a socket to say "ready to be traced" on, and to wait on until the spawner has seized
 * this process (else -1). */
/* `fd`, or a copy of it at `floor` or above: the program's fds below `floor` are made with dup2, which must
 * not replace one this process still needs. */
static int above(int fd, int floor, int err_pipe)
{
    if (fd < 0 || fd >= floor)
        return fd;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, floor);
    if (copy < 0)
        child_fail(err_pipe, "setup", errno);
    return copy;
}

static void exec_program(struct run *r, int err_pipe, int go)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    int floor = r->nprogram, fds[MAX_FDS];
    err_pipe = above(err_pipe, floor, err_pipe);
    go = above(go, floor, err_pipe);
    int listener_sock = above(listener_pair[1], floor, err_pipe);
    for (int i = 0; i < r->nfds; i++)
        fds[i] = above(r->fds[i], floor, err_pipe);
    for (int i = 0; i < r->nprogram; i++)
        if (dup2(fds[i], i) < 0)
            child_fail(err_pipe, "setup", errno);
    /* The terminal the supervisor made for this run alone (sbx exec -t) is the controlling terminal of the
     * program's new session, for job control and ^C.  Never another: a terminal someone outside reads would let
     * the program push input to them (TIOCSTI works on a process's own controlling terminal). */
    if ((r->flags & TERMINAL) && ioctl(0, TIOCSCTTY, 0) < 0)
        child_fail(err_pipe, "setup", errno);
    if (chdir(r->cwd) < 0)
        child_fail(err_pipe, "cwd", errno);
    for (int i = 0; i < r->nrlimits; i++) {
        struct rlimit rl = {strtoull(r->rlimits[3 * i + 1], NULL, 10), strtoull(r->rlimits[3 * i + 2], NULL, 10)};
        if (setrlimit(atoi(r->rlimits[3 * i]), &rl) < 0)
            child_fail(err_pipe, "setup", errno);
    }
    int next = r->nprogram;
    int bpf_fd = r->has_bpf ? fds[next++] : -1;
    if (r->has_cgroup && write(fds[next], "0", 1) != 1)
        child_fail(err_pipe, "cgroup", errno);
    if (r->pin && sched_setaffinity(0, sizeof r->cpus, &r->cpus) < 0)
        child_fail(err_pipe, "setup", errno);
    drop_privileges(err_pipe);
    /* After the ids change: changing them clears the parent-death signal. The spawner is suspended
     * until execve (vfork), but may have been killed meanwhile: then the signal never comes. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        child_fail(err_pipe, "setup", errno);
    if (getppid() != spawner_pid)
        _exit(127);
    /* Dumpable, as execve will make it anyway: the single mapping's spawner has no CAP_SYS_PTRACE, and
     * this process inherited the spawner's non-dumpable flag, which would keep it from being traced. */
    char c = 'r';
    if (go >= 0 && (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0 || write(go, &c, 1) != 1 || read(go, &c, 1) != 1))
        _exit(127); /* the spawner could not trace it and closed its end */
    if (syscall(SYS_close_range, r->nprogram, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) < 0)
        child_fail(err_pipe, "setup", errno); /* no descriptor of sbx's may reach the program */
    if (bpf_fd >= 0) /* after it, only what seccomp/compiler.py's SPAWN_CALLS names */
        load_filter(err_pipe, bpf_fd, r->count_refusals, listener_sock);
    execvpe(r->argv[0], r->argv, r->envp);
    int err = errno;
    struct stat st;
    if (err == EACCES && strchr(r->argv[0], '/') && stat(r->argv[0], &st) == 0 && S_ISDIR(st.st_mode))
        err = EISDIR;
    child_fail(err_pipe, "exec", err);
}

/* --- the current run -------------------------------------------------------------------------- */

static struct {
    pid_t main_pid; /* 0 between runs */
    int main_status, main_done;
    double cpu;   /* of every reaped process of the run, exact */
    long maxrss;  /* KiB */
    double started, cpu_limit, wall_limit, next_cpu_look, next_mem_look;
    long long mem_limit, mem_peak; /* bytes; the peak of the sampled sum */
    int cores, trace;
    int cpu_stat; /* the run cgroup's cpu.stat, or -1 */
    int listener; /* -1 without a policy, or once every process under the filter is gone */
    int pipe[2];  /* read ends of the captured stdout and stderr, -1 at EOF or without capture */
    int file[2];  /* where they go */
    long long out[2], output_limit;
    const char *limit;
    unsigned syscall_arch;
    int syscall_nr;
    struct sock_filter bpf[BPF_MAXINSNS]; /* the policy as compiled (ERRNO returns kept) */
    unsigned bpf_len;
    struct { unsigned arch; int nr; long count; } refused[MAX_REFUSED];
    int nrefused;
} run;

static double seconds(const struct timespec *ts)
{
    return ts->tv_sec + ts->tv_nsec / 1e9;
}

/* A process's CPU clock: every thread of it, live or exited, but none of its children (exact). */
static int process_clock(pid_t pid, double *cpu)
{
    struct timespec ts;
    if (clock_gettime(((~(clockid_t)pid) << 3) | 2, &ts) < 0)
        return -1;
    *cpu = seconds(&ts);
    return 0;
}

static void account(struct rusage *ru)
{
    run.cpu += ru->ru_utime.tv_sec + ru->ru_stime.tv_sec + (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
    if (ru->ru_maxrss > run.maxrss)
        run.maxrss = ru->ru_maxrss;
}

static void reaped(pid_t p, int st)
{
    if (p == run.main_pid) {
        run.main_status = st;
        run.main_done = 1;
    }
}

/* A traced process stopped: let it go on.  Group-stops (PTRACE_EVENT_STOP with a stop signal) are kept
 * with PTRACE_LISTEN, so SIGSTOP and SIGCONT mean what they would untraced; a signal is delivered. */
static void resume(pid_t p, int st)
{
    int sig = WSTOPSIG(st), event = (unsigned)st >> 16;
    if (event == PTRACE_EVENT_STOP && (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU))
        ptrace(PTRACE_LISTEN, p, 0, 0);
    else
        ptrace(PTRACE_CONT, p, 0, event ? 0 : sig);
}

/* Traced: every process is counted at its death by its own CPU clock, read while it is a zombie (a
 * thread counts with its process).  Its parent's later wait adds it to the parent's children's times,
 * which no clock of the parent's includes: nothing is counted twice. */
static void reap_traced(int options)
{
    for (;;) {
        siginfo_t si;
        si.si_pid = 0;
        if (waitid(P_ALL, 0, &si, WEXITED | WNOWAIT | __WALL | options) < 0 || si.si_pid == 0)
            return;
        pid_t p = si.si_pid;
        int st;
        struct rusage ru;
        if (si.si_code == CLD_TRAPPED || si.si_code == CLD_STOPPED) {
            if (wait4(p, &st, __WALL, NULL) == p)
                resume(p, st);
            continue;
        }
        double own = 0;
        int pidfd = (int)syscall(SYS_pidfd_open, p, 0); /* fails for a thread other than its leader */
        if (pidfd >= 0) {
            close(pidfd);
            process_clock(p, &own);
        }
        if (wait4(p, &st, __WALL, &ru) != p)
            continue;
        run.cpu += own;
        if (ru.ru_maxrss > run.maxrss)
            run.maxrss = ru.ru_maxrss;
        reaped(p, st);
    }
}

static void reap(int options)
{
    if (run.trace) {
        reap_traced(options);
        return;
    }
    int st;
    struct rusage ru;
    pid_t p;
    while ((p = wait4(-1, &st, options, &ru)) > 0) {
        account(&ru);
        reaped(p, st);
    }
}

/* A procfs of this spawner's own pid namespace, mounted nowhere (no program sees it): the box's /proc shows the
 * same processes for a box's own spawner, but not for one `sbx exec` started, whose pid namespace is nested in the
 * box's (starter.c: joined_init), where the box's /proc would count the box's processes as the run's.  Either way
 * only the processes of this spawner's own pid namespace are counted (`ours`). */
static int proc_dir = -1;

static int own_proc(void)
{
    int fs = fsopen("proc", FSOPEN_CLOEXEC), mnt = -1;
    if (fs >= 0 && fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mnt = fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    if (fs >= 0)
        close(fs);
    int dir = mnt >= 0 ? openat(mnt, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (mnt >= 0)
        close(mnt);
    /* without the capability to mount one (the single mapping's spawner has none), the box's own */
    return dir >= 0 ? dir : open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* A small /proc file of a process of the run, or "" if it is gone. */
static char *proc_file(pid_t pid, const char *name, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "%d/%s", pid, name);
    int fd = openat(proc_dir, path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? 0 : read(fd, buf, size - 1);
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = 0;
    return buf;
}

/* A live process's CPU: its own threads (exact) plus, untraced, the children it has waited for (clock
 * ticks: the kernel keeps no finer sum).  Reaped processes count through reap(). */
static double live_cpu(pid_t pid)
{
    double own = 0;
    if (process_clock(pid, &own) < 0 || run.trace)
        return own;
    char buf[1024];
    char *p = strrchr(proc_file(pid, "stat", buf, sizeof buf), ')');
    unsigned long long f[15] = {0};
    if (!p)
        return own;
    p += 2;
    for (int i = 0; i < 15 && *p; i++) { /* f[0] is field 3 (state) of proc(5), skipped */
        f[i] = i ? strtoull(p, &p, 10) : (p++, 0);
        while (*p == ' ')
            p++;
    }
    return own + (double)(f[13] + f[14]) / clock_tick;
}

static char own_pid_ns[64]; /* this spawner's pid namespace, as /proc names it */

/* Whether `pid` is in this spawner's own pid namespace: a box's /proc also shows the processes `sbx exec` runs, in
 * a pid namespace nested in the box's, which are no part of this spawner's run (they have limits of their own). */
static int ours(pid_t pid)
{
    char path[32], link[64];
    snprintf(path, sizeof path, "%d/ns/pid", pid);
    ssize_t n = readlinkat(proc_dir, path, link, sizeof link - 1);
    if (n <= 0)
        return 0;
    link[n] = 0;
    return !strcmp(link, own_pid_ns);
}

/* Every process of the run: each pid in /proc but box init's and the spawner's, in this spawner's namespace. */
static double for_each_process(double (*f)(pid_t))
{
    double sum = 0;
    int dir = fcntl(proc_dir, F_DUPFD_CLOEXEC, 3);
    DIR *d = dir < 0 ? NULL : fdopendir(dir);
    if (!d)
        return sum;
    rewinddir(d); /* (the copy shares its offset with proc_dir: the last walk left it at the end) */
    pid_t self = getpid();
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = atoi(e->d_name);
        if (pid > 1 && pid != self && ours(pid))
            sum += f(pid);
    }
    closedir(d);
    return sum;
}

static double cpu_used(void)
{
    if (run.cpu_stat < 0)
        return run.cpu + for_each_process(live_cpu);
    char buf[512];
    ssize_t n = pread(run.cpu_stat, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    char *usage = strstr(buf, "usage_usec ");
    return usage ? strtoull(usage + 11, NULL, 10) / 1e6 : 0;
}

static long page_size;

static double resident(pid_t pid)
{
    char buf[128];
    unsigned long size = 0, pages = 0;
    sscanf(proc_file(pid, "statm", buf, sizeof buf), "%lu %lu", &size, &pages);
    return (double)pages * page_size;
}
static void end_run(const char *why)
{
    if (!run.limit)
        run.limit = why;
    kill(-1, SIGKILL);
}

/* Copy what the program wrote on one captured stream; `drain`: until EOF (every writer is gone).
 * Otherwise at most COPY_ROUNDS chunks, so a program that writes without pause cannot keep the
 * spawner from its limits. */
static void copy_output(int i, int drain)
{
    static char chunk[CHUNK];
    for (int rounds = 0; run.pipe[i] >= 0 && (drain || rounds < COPY_ROUNDS); rounds++) {
        ssize_t n = read(run.pipe[i], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && !drain)
            return;
        if (n <= 0) {
            close(run.pipe[i]);
            run.pipe[i] = -1;
            return;
        }
        long long room = run.output_limit > 0 ? run.output_limit - run.out[0] - run.out[1] : n;
        if (n > room) {
            n = room;
            end_run("OLE");
        }
        if (n > 0 && pwrite(run.file[i], chunk, n, run.out[i]) != n) {
            end_run("OLE"); /* the supervisor's file is full: no more output can be kept */
            n = 0;
        }
        run.out[i] += n;
    }
}

/* Seconds until the run must be looked at again (negative: never), ending it at a limit it reached. */
static double check_limits(void)
{
    double t = now(), wait = -1;
    if (run.wall_limit > 0) {
        wait = run.started + run.wall_limit - t;
        if (wait <= 0) {
            end_run("WLE");
            return -1;
        }
    }
    if (run.cpu_limit > 0) {
        if (t >= run.next_cpu_look) {
            double left = run.cpu_limit - cpu_used();
            if (left <= 0) {
                end_run("TLE");
                return -1;
            }
            run.next_cpu_look = t + (left / run.cores > MIN_CPU_SLEEP ? left / run.cores : MIN_CPU_SLEEP);
        }
        if (wait < 0 || run.next_cpu_look - t < wait)
            wait = run.next_cpu_look - t;
    }
    if (run.mem_limit > 0) {
        if (t >= run.next_mem_look) {
            long long used = (long long)for_each_process(resident);
            if (used > run.mem_peak)
                run.mem_peak = used;
            if (used >= run.mem_limit) {
                end_run("MLE");
                return -1;
            }
            double cost = now() - t, sleep = (run.mem_limit - used) / (TOUCH_RATE * run.cores);
            if (sleep < MEM_LOOK_SHARE * cost)
                sleep = MEM_LOOK_SHARE * cost;
            run.next_mem_look = t + (sleep > MIN_MEM_SLEEP ? sleep : MIN_MEM_SLEEP);
        }
        if (wait < 0 || run.next_mem_look - t < wait)
            wait = run.next_mem_look - t;
    }
    return wait;
}

/* What the policy as compiled returns for a call: classic BPF as libseccomp emits it, run over the
 * notification's seccomp_data.  Anything unexpected (an opcode, an offset, a jump out of the program)
 * is the kill action, so a fault here can only end a run, never let a call through. */
static unsigned bpf_action(const struct seccomp_data *d)
{
    uint32_t a = 0, x = 0, mem[BPF_MEMWORDS] = {0};
    const unsigned char *data = (const unsigned char *)d;
    for (unsigned pc = 0; pc < run.bpf_len; pc++) {
        const struct sock_filter *f = &run.bpf[pc];
        uint32_t k = f->k, src = BPF_SRC(f->code) == BPF_X ? x : k;
        switch (BPF_CLASS(f->code)) {
        case BPF_LD:
            if (f->code == (BPF_LD | BPF_W | BPF_ABS) && k % 4 == 0 && k + 4 <= sizeof *d)
                memcpy(&a, data + k, 4);
            else if (f->code == (BPF_LD | BPF_IMM))
                a = k;
            else if (f->code == (BPF_LD | BPF_MEM) && k < BPF_MEMWORDS)
                a = mem[k];
            else
                return SECCOMP_RET_USER_NOTIF;
            break;
        case BPF_LDX:
            if (f->code == (BPF_LDX | BPF_IMM))
                x = k;
            else if (f->code == (BPF_LDX | BPF_MEM) && k < BPF_MEMWORDS)
                x = mem[k];
            else
                return SECCOMP_RET_USER_NOTIF;
            break;
        case BPF_ST:
        case BPF_STX:
            if (k >= BPF_MEMWORDS)
                return SECCOMP_RET_USER_NOTIF;
            mem[k] = BPF_CLASS(f->code) == BPF_ST ? a : x;
            break;
        case BPF_ALU:
            switch (BPF_OP(f->code)) {
            case BPF_ADD: a += src; break;
            case BPF_SUB: a -= src; break;
            case BPF_MUL: a *= src; break;
            case BPF_AND: a &= src; break;
            case BPF_OR: a |= src; break;
            case BPF_XOR: a ^= src; break;
            case BPF_LSH: a = src < 32 ? a << src : 0; break;
            case BPF_RSH: a = src < 32 ? a >> src : 0; break;
            case BPF_NEG: a = -a; break;
            default: return SECCOMP_RET_USER_NOTIF;
            }
            break;
        case BPF_JMP: {
            unsigned next;
            if (BPF_OP(f->code) == BPF_JA) {
                next = pc + 1 + k;
            } else {
                int taken;
                switch (BPF_OP(f->code)) {
                case BPF_JEQ: taken = a == src; break;
                case BPF_JGT: taken = a > src; break;
                case BPF_JGE: taken = a >= src; break;
                case BPF_JSET: taken = (a & src) != 0; break;
                default: return SECCOMP_RET_USER_NOTIF;
                }
                next = pc + 1 + (taken ? f->jt : f->jf);
            }
            if (next <= pc || next >= run.bpf_len) /* forward only, as the kernel checked (and no wrap-around) */
                return SECCOMP_RET_USER_NOTIF;
            pc = next - 1;
            break;
        }
        case BPF_RET:
            return BPF_RVAL(f->code) == BPF_A ? a : k;
        case BPF_MISC:
            if (BPF_MISCOP(f->code) == BPF_TAX)
                x = a;
            else
                a = x;
            break;
        default:
            return SECCOMP_RET_USER_NOTIF;
        }
    }
    return SECCOMP_RET_USER_NOTIF;
}

static void count_refusal(unsigned arch, int nr)
{
    for (int i = 0; i < run.nrefused; i++)
        if (run.refused[i].arch == arch && run.refused[i].nr == nr) {
            run.refused[i].count++;
            return;
        }
    if (run.nrefused < MAX_REFUSED) {
        run.refused[run.nrefused].arch = arch;
        run.refused[run.nrefused].nr = nr;
        run.refused[run.nrefused++].count = 1;
    }
}

/* A call the policy notifies: a refusal is answered with its errno and counted; a kill names the first
 * call, ends the run, and refuses the call (it never runs).  The kill comes first: answered first, the
 * program would run on for a moment with EPERM. */
static void notified(void)
{
    struct seccomp_notif req;
    memset(&req, 0, sizeof req);
    if (ioctl(run.listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
        return; /* withdrawn: the caller died or a signal interrupted it */
    unsigned action = bpf_action(&req.data);
    if ((action & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_ERRNO) {
        struct seccomp_notif_resp resp = {.id = req.id, .error = -(int)(action & SECCOMP_RET_DATA)};
        ioctl(run.listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
        count_refusal(req.data.arch, req.data.nr);
        return;
    }
    if (!run.limit) {
        run.syscall_arch = req.data.arch;
        run.syscall_nr = req.data.nr;
    }
    end_run("SV");
    struct seccomp_notif_resp resp = {.id = req.id, .error = -EPERM};
    ioctl(run.listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* Whether any process of the run is left.  Each is a descendant of the spawner, its subreaper: an orphan becomes
 * its child before its parent can be reaped, so none is left once the spawner has no child. */
static int run_processes_left(void)
{
    siginfo_t si;
    return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0 || errno != ECHILD;
}

static void finish_run(void)
{
    double wall = now() - run.started;
    reap(WNOHANG);
    if (run_processes_left()) /* kill(-1) walks every process of the host: 95 us a run with 3,000 of them */
        kill(-1, SIGKILL);
    reap(0);
    for (int i = 0; i < 2; i++) {
        copy_output(i, 1);
        if (run.file[i] >= 0)
            close(run.file[i]);
    }
    if (run.listener >= 0)
        close(run.listener);
    run.listener = -1;
    if (run.cpu_stat >= 0)
        close(run.cpu_stat);
    run.cpu_stat = -1;
    if (run.mem_peak / 1024 > run.maxrss)
        run.maxrss = run.mem_peak / 1024;
    char msg[320 + MAX_REFUSED * 48], limit[16] = "null", syscall[48] = "null", refused[MAX_REFUSED * 48 + 4] = "";
    for (int i = 0, at = 0; i < run.nrefused; i++)
        at += snprintf(refused + at, sizeof refused - at, "%s[%u,%d,%ld]", i ? "," : "", run.refused[i].arch,
                       run.refused[i].nr, run.refused[i].count);
    if (run.limit)
        snprintf(limit, sizeof limit, "\"%s\"", run.limit);
    if (run.limit && strcmp(run.limit, "SV") == 0)
        snprintf(syscall, sizeof syscall, "[%u,%d]", run.syscall_arch, run.syscall_nr);
    snprintf(msg, sizeof msg,
             "{\"wait_status\":%d,\"cpu\":%.6f,\"maxrss\":%ld,\"wall\":%.6f,\"limit\":%s,\"syscall\":%s,"
             "\"out\":[%lld,%lld],\"refused\":[%s]}",
             run.main_done ? run.main_status : -1, run.cpu, run.maxrss, wall, limit, syscall, run.out[0], run.out[1],
             refused);
    send_msg(ctl, msg, -1);
    run.main_pid = 0;
    spin_until = spin ? now() + SPIN_S : 0;
}

static int parse_run(char *buf, size_t len, struct run *r)
{
    static char *tok[HEAD_TOKENS + 3 * 64 + 2 * MAX_ARGS];
    size_t ntok = 0;
    for (char *p = buf; p < buf + len && ntok < sizeof tok / sizeof *tok; p += strlen(p) + 1)
        tok[ntok++] = p;
    if (ntok < HEAD_TOKENS || strcmp(tok[0], "run") != 0)
        return -1;
    r->has_bpf = atoi(tok[1]) != 0;
    r->count_refusals = atoi(tok[1]) == 2;
    r->has_cgroup = atoi(tok[2]);
    r->trace = atoi(tok[3]);
    r->cpu_limit = strtod(tok[4], NULL);
    r->wall_limit = strtod(tok[5], NULL);
    r->mem_limit = strtoll(tok[6], NULL, 10);
    r->capture = atoi(tok[7]);
    r->output_limit = strtoll(tok[8], NULL, 10);
    r->nrlimits = atoi(tok[9]);
    int argc = atoi(tok[10]), envc = atoi(tok[11]);
    if (r->nrlimits < 0 || r->nrlimits > 64 || argc < 1 || argc > MAX_ARGS || envc < 0 || envc > MAX_ARGS ||
        HEAD_TOKENS + 3 * (size_t)r->nrlimits + argc + envc != ntok)
        return -1;
    r->nprogram = atoi(tok[14]);
    if (r->nprogram < 3 || r->nprogram > MAX_PROGRAM_FDS || r->nfds != r->nprogram + r->has_bpf + 2 * r->has_cgroup)
        return -1;
    r->cwd = tok[12];
    r->flags = atoi(tok[15]);
    CPU_ZERO(&r->cpus);
    r->pin = 0;
    for (char *p = tok[13]; *p;) { /* CPU numbers separated by ',' ("" for no pinning) */
        char *end;
        long cpu = strtol(p, &end, 10);
        if (end == p || cpu < 0 || cpu >= CPU_SETSIZE || (*end && *end != ','))
            return -1;
        CPU_SET(cpu, &r->cpus);
        r->pin = 1;
        p = *end ? end + 1 : end;
    }
    r->rlimits = tok + HEAD_TOKENS;
    static char *argv[MAX_ARGS + 1], *envp[MAX_ARGS + 1];
    char **a = tok + HEAD_TOKENS + 3 * r->nrlimits;
    memcpy(argv, a, argc * sizeof *a);
    argv[argc] = NULL;
    memcpy(envp, a + argc, envc * sizeof *a);
    envp[envc] = NULL;
    r->argv = argv;
    r->envp = envp;
    return 0;
}

/* The listener the program's process sent before execve (it is queued by the time vfork returns). */
static int take_listener(void)
{
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } anc;
    char c;
    struct iovec iov = {&c, 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = anc.b, .msg_controllen = sizeof anc.b};
    if (recvmsg(listener_pair[0], &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) <= 0)
        return -1;
    struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
    int fd = -1;
    if (h && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
        memcpy(&fd, CMSG_DATA(h), sizeof fd);
    return fd;
}

/* With capture, the program's stdout and stderr become pipes whose read ends the spawner keeps. */
static int capture_pipes(struct run *r)
{
    run.pipe[0] = run.pipe[1] = run.file[0] = run.file[1] = -1;
    if (!r->capture)
        return 0;
    for (int i = 0; i < 2; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return -1;
        /* the program may reopen its stdout through /proc/self/fd/1 (/dev/stdout), as another uid */
        if (fchmod(p[1], 0666) < 0) {
            close(p[0]);
            close(p[1]);
            return -1;
        }
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        run.pipe[i] = p[0];
        run.file[i] = r->fds[1 + i];
        r->fds[1 + i] = p[1]; /* the caller closes the request's fds: now the write end, after vfork */
    }
    return 0;
}

/* A run that did not start: its capture pipes and files are not needed. */
static void drop_capture(void)
{
    for (int i = 0; i < 2; i++)
        if (run.pipe[i] >= 0)
            close(run.pipe[i]), close(run.file[i]);
}

/* The program's process.  Untraced: vfork, which runs on the spawner's memory until execve.  Traced:
 * fork, seize, then let it go on to execve, so that no instruction of the program runs untraced. */
static pid_t spawn(struct run *r, int err_pipe[2], int *err, int *trace_err)
{
    int go[2] = {-1, -1};
    if (r->trace && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) < 0) {
        *err = errno;
        return -1;
    }
    pid_t pid = r->trace ? fork() : vfork();
    if (pid == 0) {
        close(err_pipe[0]);
        if (go[1] >= 0)
            close(go[1]);
        exec_program(r, err_pipe[1], go[0]);
    }
    *err = errno;
    if (r->trace) {
        close(go[0]);
        char c;
        ssize_t ready;
        while ((ready = read(go[1], &c, 1)) < 0 && errno == EINTR)
            ;
        /* not ready: the child failed on the way and says why on err_pipe; closing `go` unwritten ends it */
        if (pid > 0 && ready == 1) {
            if (ptrace(PTRACE_SEIZE, pid, 0, TRACE_OPTIONS) < 0 || write(go[1], "g", 1) != 1)
                *trace_err = errno;
        }
        close(go[1]);
    }
    return pid;
}

static void start_run(struct run *r)
{
    int err_pipe[2];
    memset(&run, 0, sizeof run);
    run.listener = run.cpu_stat = -1;
    if (capture_pipes(r) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0) {
        drop_capture();
        send_msg(ctl, "{\"stage\":\"setup\",\"errno\":24}", -1);
        return;
    }
    run.output_limit = r->output_limit;
    cpu_set_t cpus;
    run.cores = sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 0 ? CPU_COUNT(&cpus) : 1;
    run.cpu_limit = r->cpu_limit;
    run.wall_limit = r->wall_limit;
    run.mem_limit = r->mem_limit;
    run.trace = r->trace;
    if (r->has_cgroup)
        run.cpu_stat = fcntl(r->fds[r->nprogram + r->has_bpf + 1], F_DUPFD_CLOEXEC, 3);
    if (r->has_bpf) {
        ssize_t got = pread(r->fds[r->nprogram], run.bpf, sizeof run.bpf, 0);
        run.bpf_len = got > 0 ? (unsigned)(got / sizeof *run.bpf) : 0; /* none: every notified call is a kill */
    }
    run.started = now();
    run.next_cpu_look = run.started + r->cpu_limit / run.cores;
    run.next_mem_look = run.started + r->mem_limit / (TOUCH_RATE * run.cores);
    int spawn_err = 0, trace_err = 0;
    run.main_pid = spawn(r, err_pipe, &spawn_err, &trace_err);
    close(err_pipe[1]);
    char buf[96] = {0};
    ssize_t n;
    while ((n = read(err_pipe[0], buf, sizeof buf - 1)) < 0 && errno == EINTR)
        ;
    close(err_pipe[0]);
    run.listener = r->has_bpf && run.main_pid > 0 && n == 0 ? take_listener() : -1;
    if (run.main_pid < 0 || n > 0 || trace_err) {
        char stage[32] = "setup";
        int err = run.main_pid < 0 ? spawn_err : trace_err;
        if (trace_err)
            strcpy(stage, "trace");
        else if (n > 0)
            sscanf(buf, "%31s %d", stage, &err);
        if (run.main_pid > 0) {
            kill(run.main_pid, SIGKILL);
            reap(0);
        }
        while ((run.listener = take_listener()) >= 0)
            close(run.listener);
        if (run.cpu_stat >= 0)
            close(run.cpu_stat);
        drop_capture();
        char msg[96];
        snprintf(msg, sizeof msg, "{\"stage\":\"%s\",\"errno\":%d}", stage, err);
        send_msg(ctl, msg, -1);
        run.main_pid = 0;
    } else if (r->flags & SAY_STARTED) {
        send_msg(ctl, "{\"started\":true}", -1);
    }
}

/* One request from the supervisor; the fds it carried are closed by the caller. */
static void handle_request(char *buf, ssize_t n, struct run *r)
{
    if (strcmp(buf, "kill") == 0) {
        if (run.main_pid)
            finish_run();
    } else if (strncmp(buf, "signal ", 7) == 0) { /* to the run's first process (docker stop's SIGTERM) */
        int sig = atoi(buf + 7);
        if (run.main_pid && sig > 0 && sig < NSIG && !run.main_done)
            kill(run.main_pid, sig);
    } else if (run.main_pid == 0 && parse_run(buf, n, r) == 0) {
        start_run(r);
    } else {
        send_msg(ctl, "{\"stage\":\"setup\",\"errno\":22}", -1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return 125;
    ctl = atoi(argv[1]);
    spawner_pid = getpid();
    if (fcntl(ctl, F_SETFD, FD_CLOEXEC) < 0) /* no program may inherit it, whatever else fails */
        return 125;
    program_uid = (uid_t)atol(argv[2]);
    program_gid = (gid_t)atol(argv[3]);
    use_setgroups = atoi(argv[4]);
    program_userns = atoi(argv[5]);
    if (program_userns >= 0 && fcntl(program_userns, F_SETFD, FD_CLOEXEC) < 0)
        return 125;
    clock_tick = sysconf(_SC_CLK_TCK);
    spin = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    page_size = sysconf(_SC_PAGESIZE);
    proc_dir = own_proc();
    ssize_t ns_len = proc_dir < 0 ? -1 : readlinkat(proc_dir, "self/ns/pid", own_pid_ns, sizeof own_pid_ns - 1);
    if (ns_len <= 0)
        return 125;
    own_pid_ns[ns_len] = 0;
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
    if (f) {
        if (fscanf(f, "%d", &last_cap) != 1)
            last_cap = CAP_LAST_CAP;
        fclose(f);
    }
    if (program_userns < 0 && drop_bounding(0) < 0)
        return 125;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, listener_pair) < 0)
        return 1;
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    static char buf[MAX_MSG];
    run.listener = -1;
    for (;;) {
        double wait = run.main_pid ? check_limits() : -1;
        if (run.main_pid && run.limit) {
            finish_run(); /* a limit was reached: every process is killed, collect them */
            continue;
        }
        int spinning = !run.main_pid && spin_until > 0 && now() < spin_until;
        if (spinning)
            wait = 0;
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        struct pollfd pfd[5] = {{ctl, POLLIN, 0}, {sfd, POLLIN, 0}, {run.main_pid ? run.listener : -1, POLLIN, 0},
                                {run.main_pid ? run.pipe[0] : -1, POLLIN, 0}, {run.main_pid ? run.pipe[1] : -1, POLLIN, 0}};
        int ready = ppoll(pfd, 5, wait < 0 ? NULL : &ts, NULL);
        if (ready < 0 && errno != EINTR)
            return 1;
        if (ready == 0 && spinning) {
            sched_yield();
            continue;
        }
        for (int i = 0; i < 2; i++)
            if (pfd[3 + i].revents)
                copy_output(i, 0);
        if (pfd[2].revents & POLLIN)
            notified();
        else if (pfd[2].revents) {
            close(run.listener); /* every process under the filter is gone */
            run.listener = -1;
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap(WNOHANG);
            if (run.main_pid && run.main_done)
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
        handle_request(buf, n, &r);
        for (int i = 0; i < r.nfds; i++)
            close(r.fds[i]);
    }
}
