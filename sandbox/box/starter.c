/*
 * sbx starter: a box's first processes, built from the plan the supervisor sends (sandbox/box/plan.py).
 *
 * Why C: the box used to start from a Python zygote (an interpreter the
 * supervisor spawned, ~80 ms to boot, and one more per `sbx run`) whose fork
 * built the root in Python.  This static binary is spawned fresh for each box
 * (posix_spawn: nothing of the caller's memory, command line or environment
 * comes with it) and does what bubblewrap does, on directory fds.
 *
 * usage: sbx-starter SUPERVISOR_PID single|range OUTER_UID OUTER_GID PROGRAM_UID PROGRAM_GID CGROUP(0|1)
 * fds:   3 the control socket (SOCK_SEQPACKET), 4 the spawner's binary (O_PATH), 5 the "unshared" pipe's
 *        write end, 6 the "mapped" pipe's read end, and with CGROUP 7 the box's init cgroup.procs
 *
 * Two processes:
 *   outer     joins the box's cgroup, unshares the user namespace and has its
 *             id map written (itself in the single mapping; in the range
 *             mapping it says "u" and the supervisor runs newuidmap, then
 *             says "g"), unshares the other namespaces and waits for box init,
 *             its child, which is pid 1 of the new pid namespace.
 *   box init  carries out the plan under an intermediate root and pivots into
 *             the new one (the host tree is detached, not hidden), starts the
 *             spawner (spawner.c), hands its control socket to the supervisor,
 *             and serves the supervisor's file requests until the supervisor
 *             closes the control socket.  Nothing in the box can signal it.
 *
 * Messages on the control socket.  The supervisor sends NUL-separated tokens;
 * the starter answers in JSON ({"error": MESSAGE} on any failure):
 *   (first)  the plan: per step its name and its fields in order; a tuple is its
 *            length then its items, None is "" (plan.tokens)
 *            answers: {"fuse":true} + the FUSE connection (a FuseUnion step),
 *            then {"ready":true} + the spawner's control socket
 *   respawn                       kill every process of the box, start a new spawner: {"ok":true} + its socket
 *   reset                         empty the writable dirs, remove IPC objects, rewind the pid counter
 *   read PATH DIR REL             {"ok":true} + a read-only fd of a regular file or directory
 *   write PATH DIR REL MODE + fd  create or replace a file with the fd's contents, owned by the program
 *   symlink PATH DIR REL TARGET   make a symlink, owned by the program
 * DIR is one of the box's writable dirs (home, /tmp, /dev/shm) and REL the
 * normalised path beneath it ("." for DIR itself); PATH names it in errors.
 *
 * Paths the program can change are only ever walked from a directory fd with
 * openat2 (RESOLVE_BENEATH | NO_SYMLINKS | NO_MAGICLINKS) or O_NOFOLLOW, and
 * a mount point is attached to the fd of the very object that was checked.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/sendfile.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "send_msg.h"

#define MAX_MSG (1 << 20)
#define MAX_STEPS 512
#define MAX_DIRS 64 /* home, /tmp, /dev/shm and the --tmpfs dirs a reset restores */
#define MAX_NOTES 3
#define SPAWNER_FD_MIN 100
#define SYS_FCHMODAT2 452
#define NAMESPACES (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
#define RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
#define PATH_FLAGS (O_PATH | O_NOFOLLOW | O_CLOEXEC)
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define BASE_FLAGS (O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
#define NEVER_FOLLOWED "(links in the root are never followed)"

static int ctl = 3;
static int range_map;
static unsigned outer_uid, outer_gid, program_uid, program_gid;
static int program_userns = -1; /* the program's own user namespace (NESTED_ROOT), or none */
static char err[8192]; /* the message of the last failure, for the supervisor */

/* -- failures and messages ------------------------------------------------------------------------------------ */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, sizeof err, fmt, ap);
    va_end(ap);
    errno = saved;
    return -1;
}

/* fail with "WHAT: strerror" */
static int fail_errno(const char *what)
{
    return fail("%s: %s", what, strerror(errno));
}

/* {"error": err}, as JSON the supervisor can decode whatever bytes a path had (invalid UTF-8 becomes U+FFFD) */
static void send_error(void)
{
    static char out[sizeof err * 6 + 16];
    char *o = out + sprintf(out, "{\"error\":\"");
    const unsigned char *s = (const unsigned char *)err;
    while (*s) {
        unsigned char c = *s;
        int len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        for (int i = 1; i < len; i++)
            if ((s[i] & 0xc0) != 0x80)
                len = 0;
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else if (len == 0) {
            o += sprintf(o, "\\ufffd");
            len = 1;
        } else {
            memcpy(o, s, len);
            o += len;
        }
        s += len ? len : 1;
    }
    strcpy(o, "\"}");
    send_msg(ctl, out, -1);
}

static void die(void) __attribute__((noreturn));
static void die(void)
{
    send_error();
    _exit(1);
}

static void check(int result)
{
    if (result < 0)
        die();
}

/* -- messages in ---------------------------------------------------------------------------------------------- */

struct tokens {
    char *next, *end;
};

static char *token(struct tokens *t)
{
    if (t->next >= t->end)
        return NULL;
    char *s = t->next;
    t->next += strlen(s) + 1;
    return s;
}

/* one message into `buf` (NUL-terminated tokens), with up to one fd; 0 at EOF */
static ssize_t recv_msg(char *buf, size_t size, int *fd)
{
    union { struct cmsghdr h; char b[CMSG_SPACE(8 * sizeof(int))]; } anc;
    struct iovec iov = {buf, size - 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = anc.b, .msg_controllen = sizeof anc.b};
    ssize_t n;
    while ((n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    *fd = -1;
    if (n <= 0)
        return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                if (*fd < 0)
                    *fd = got;
                else
                    close(got);
            }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        return -1;
    buf[n] = 0;
    return n;
}

/* -- syscalls ------------------------------------------------------------------------------------------------- */

static int openat2_(int dirfd, const char *path, int flags, mode_t mode, uint64_t resolve)
{
    struct open_how how = {.flags = (uint64_t)flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fail_errno(path);
    int r = write_all(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return r < 0 ? fail_errno(path) : 0;
}

/* copy up to `size` bytes from the start of `source` to `target`'s position; fewer if `source` ends first */
static int copy(int source, int target, off_t size)
{
    off_t at = 0;
    while (at < size) {
        ssize_t n = sendfile(target, source, &at, (size_t)(size - at));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
    }
    return 0;
}

/* -- the plan ------------------------------------------------------------------------------------------------- */

enum kind { SCRATCH, TMPFS_ROOT, KERNEL_UNION, FUSE_UNION, MIRROR, FILE_, BOUND_FILE, WRITABLE, DEVICES, PROC,
            BIND, VOLUME, TMPFS, SECRETS, READ_ONLY_ROOT, PIVOT, HOSTNAME, LOOPBACK, NESTED_ROOT };

static const char *const KINDS[] = {"scratch", "tmpfs-root", "kernel-union", "fuse-union", "mirror", "file",
                                    "bound-file", "writable", "devices", "proc", "bind", "volume", "tmpfs", "secrets",
                                    "read-only-root", "pivot", "hostname", "loopback", "nested-root"};

struct list {
    int n;
    char **items;
};

struct step {
    enum kind kind;
    char *s[3];        /* the string fields, in order */
    long long n[2];    /* the number fields, in order */
    int flag;          /* writable / union */
    int flag2;         /* WRITABLE: /tmp on the scratch tmpfs */
    struct list l[2];  /* the tuple fields */
    int has_identity;
};

static struct step steps[MAX_STEPS];
static int nsteps;

static char *need(struct tokens *t)
{
    char *s = token(t);
    if (!s) {
        fail("the box's plan ends in the middle of a step");
        die();
    }
    return s;
}

static long long number(struct tokens *t)
{
    char *s = need(t), *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) {
        fail("the box's plan has %s where a number goes", s);
        die();
    }
    return v;
}

static struct list list(struct tokens *t)
{
    struct list l = {0, NULL};
    char *count = need(t);
    if (!*count)
        return l; /* None */
    t->next = count; /* read it again as a number */
    l.n = (int)number(t);
    if (l.n < 0 || l.n > 4096) {
        fail("the box's plan has a list of %d items", l.n);
        die();
    }
    l.items = calloc((size_t)l.n + 1, sizeof(char *));
    for (int i = 0; i < l.n; i++)
        l.items[i] = need(t);
    return l;
}

static void parse_plan(struct tokens *t)
{
    char *name;
    while ((name = token(t))) {
        if (nsteps == MAX_STEPS) {
            fail("the box's plan has more than %d steps", MAX_STEPS);
            die();
        }
        struct step *s = &steps[nsteps++];
        size_t k = 0;
        while (k < sizeof KINDS / sizeof *KINDS && strcmp(KINDS[k], name))
            k++;
        if (k == sizeof KINDS / sizeof *KINDS) {
            fail("the box's plan has a step the starter does not know: %s", name);
            die();
        }
        s->kind = (enum kind)k;
        switch (s->kind) {
        case SCRATCH:
            s->n[0] = number(t), s->n[1] = number(t);
            break;
        case KERNEL_UNION:
            s->l[0] = list(t), s->s[0] = need(t), s->s[1] = need(t);
            break;
        case MIRROR:
            s->s[0] = need(t), s->s[1] = need(t), s->s[2] = need(t);
            break;
        case FILE_:
        case BOUND_FILE:
            s->s[0] = need(t), s->s[1] = need(t);
            break;
        case WRITABLE:
            s->s[0] = need(t), s->flag = (int)number(t), s->n[0] = number(t), s->n[1] = number(t);
            s->flag2 = (int)number(t);
            break;
        case DEVICES:
            s->l[0] = list(t);
            break;
        case PROC:
            s->l[0] = list(t), s->l[1] = list(t);
            break;
        case BIND:
            s->s[0] = need(t), s->s[1] = need(t), s->flag = (int)number(t), s->l[0] = list(t);
            s->has_identity = s->l[0].items != NULL;
            if (s->has_identity && s->l[0].n != 2) {
                fail("the box's plan has a bind identity of %d numbers", s->l[0].n);
                die();
            }
            break;
        case TMPFS:
            s->s[0] = need(t), s->n[0] = number(t), s->n[1] = number(t);
            break;
        case VOLUME:
            s->s[0] = need(t), s->flag = (int)number(t), s->n[0] = number(t), s->n[1] = number(t);
            break;
        case NESTED_ROOT:
            s->n[0] = number(t), s->n[1] = number(t);
            if (s->n[0] < 2 || s->n[1] < 2 || s->n[0] > UINT32_MAX || s->n[1] > UINT32_MAX) {
                fail("the box's plan has a nested root of %lld:%lld", s->n[0], s->n[1]);
                die();
            }
            break;
        case SECRETS:
            s->l[0] = list(t), s->l[1] = list(t), s->n[0] = number(t), s->n[1] = number(t);
            if (s->l[0].n != s->l[1].n) {
                fail("the box's plan has %d secrets' names and %d values", s->l[0].n, s->l[1].n);
                die();
            }
            break;
        case HOSTNAME:
            s->s[0] = need(t);
            break;
        default:
            break;
        }
    }
}

/* -- mount points, through fds only --------------------------------------------------------------------------- */

/*
 * A directory that mounts go into (the new root, or a filesystem made for the
 * box), held as an fd.  `place` walks to a mount point one component at a
 * time, relative to the fd of the directory before it: it makes what is
 * missing (mkdirat, or an O_EXCL create) and opens it with openat2 confined
 * beneath that directory, following no link; what was there already it opens
 * as it is (a link's own O_PATH fd) and checks its kind with fstat.  The mount
 * is attached to the fd it hands out.  A link, or a file of the wrong kind, is
 * never followed or used: where the mount point itself must be, in a tree that
 * is ours to rewrite (a union root: the change goes to the box's upper), it is
 * replaced; anywhere else setup stops with an error naming it.
 */
struct tree {
    int fd;
    int replaceable;
};

static const char *kind_name(mode_t m)
{
    return S_ISLNK(m) ? "a symlink" : S_ISDIR(m) ? "a directory" : S_ISREG(m) ? "a regular file" : "a special file";
}

static int misplaced(const char *box_path, mode_t kind, int want_dir, const char *so_far, int last)
{
    errno = S_ISLNK(kind) ? ELOOP : ENOTDIR;
    if (!last)
        return fail("%s: cannot create mount point: %s is %s%s", box_path, so_far, kind_name(kind),
                    S_ISLNK(kind) ? " " NEVER_FOLLOWED : "");
    if (S_ISLNK(kind))
        return fail("%s: cannot create mount point: %s is there " NEVER_FOLLOWED, box_path, kind_name(kind));
    return fail("%s: cannot create mount point: %s is there, not a %s", box_path, kind_name(kind),
                want_dir ? "directory" : "regular file");
}

/* a new directory or empty regular file `name` in `parent`, as an fd of it; -2 if the name exists, -1 on error */
static int create(int parent, const char *name, int want_dir, mode_t mode, const char *box_path)
{
    int fd;
    if (!want_dir) { /* O_EXCL: the fd is of the file made here, never of something that was there */
        fd = openat2_(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644, RESOLVE);
        if (fd < 0 && errno == EEXIST)
            return -2;
    } else {
        if (mkdirat(parent, name, mode) < 0) {
            if (errno == EEXIST)
                return -2;
            return fail("%s: cannot create mount point: %s", box_path, strerror(errno));
        }
        fd = openat2_(parent, name, PATH_FLAGS | O_DIRECTORY, 0, RESOLVE);
    }
    return fd < 0 ? fail("%s: cannot create mount point: %s", box_path, strerror(errno)) : fd;
}

/* an O_PATH fd of `name` in `parent` as it is (a link's own), -2 if there is none; *ours goes false past a mount */
static int lookup(int parent, const char *name, int *ours)
{
    int fd = openat2_(parent, name, PATH_FLAGS, 0, RESOLVE | (*ours ? RESOLVE_NO_XDEV : 0));
    if (fd < 0 && errno == EXDEV) {
        *ours = 0;
        fd = openat2_(parent, name, PATH_FLAGS, 0, RESOLVE);
    }
    if (fd < 0 && errno == ENOENT)
        return -2;
    if (fd < 0) {
        char what[PATH_MAX + 8];
        snprintf(what, sizeof what, "open %s", name);
        return fail_errno(what);
    }
    return fd;
}

static int place_step(int parent, const char *name, const char *box_path, const char *so_far, int want_dir,
                      int last, int *ours, mode_t mode)
{
    int fd = create(parent, name, want_dir, mode, box_path);
    if (fd != -2)
        return fd;
    fd = lookup(parent, name, ours);
    if (fd == -1)
        return -1;
    struct stat st = {0};
    if (fd >= 0 && fstat(fd, &st) < 0) {
        close(fd);
        return fail_errno(box_path);
    }
    if (fd >= 0 && (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)))
        return fd;
    if (fd >= 0)
        close(fd);
    else {
        errno = EAGAIN; /* only a concurrent writer could do this */
        return fail("%s: cannot create mount point: %s changed while it was made", box_path, so_far);
    }
    if (!(last && *ours))
        return misplaced(box_path, st.st_mode, want_dir, so_far, last);
    /* in a union root: the link or file goes (a whiteout in the upper where a lower has it) */
    if (unlinkat(parent, name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0) {
        int e = errno;
        misplaced(box_path, st.st_mode, want_dir, so_far, last);
        char why[sizeof err];
        snprintf(why, sizeof why, "%s", err);
        errno = e;
        return fail("%s", why);
    }
    fd = create(parent, name, want_dir, mode, box_path);
    if (fd == -2) {
        errno = EEXIST;
        return fail("%s: cannot create mount point: %s came back", box_path, so_far);
    }
    return fd;
}

/* an fd (O_PATH, or write-only for a file made here) of the mount point `box_path` in `t`, made if missing */
static int place(struct tree *t, const char *box_path, int directory, mode_t mode)
{
    char path[PATH_MAX], so_far[PATH_MAX] = "";
    if (snprintf(path, sizeof path, "%s", box_path) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return fail("%s: cannot create mount point: %s", box_path, strerror(errno));
    }
    int fd = t->fd, ours = t->replaceable;
    char *save = NULL;
    char *name = strtok_r(path, "/", &save);
    while (name) {
        char *next = strtok_r(NULL, "/", &save);
        if (!strcmp(name, ".") || !strcmp(name, "..")) {
            if (fd != t->fd)
                close(fd);
            errno = EINVAL;
            return fail("%s: cannot create mount point: %s in its path", box_path, name);
        }
        size_t len = strlen(so_far);
        snprintf(so_far + len, sizeof so_far - len, "/%s", name);
        int last = next == NULL;
        int child = place_step(fd, name, box_path, so_far, directory || !last, last, &ours, last ? mode : 0755);
        if (fd != t->fd)
            close(fd);
        if (child < 0)
            return -1;
        fd = child;
        name = next;
    }
    return fd == t->fd ? (int)fcntl(fd, F_DUPFD_CLOEXEC, 0) : fd;
}

/* -- mounts ------------------------------------------------------------------------------------------------- */

/* bind `src` (relative to `dir`; "" for `dir` itself) onto the mount point fd `target`, restricted before it is
 * attached; `what` names it in errors */
static int bind_(int dir, const char *src, int target, int writable, int devices, const char *what)
{
    char msg[PATH_MAX + 32];
    int tree = open_tree(dir, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_SYMLINK_NOFOLLOW |
                                       (*src ? 0 : AT_EMPTY_PATH));
    if (tree < 0) {
        snprintf(msg, sizeof msg, "bind %s", what);
        return fail_errno(msg);
    }
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_NOSUID | (devices ? 0 : MOUNT_ATTR_NODEV) |
                                          (writable ? 0 : MOUNT_ATTR_RDONLY)};
    int r = mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
    if (r < 0)
        snprintf(msg, sizeof msg, "mount_setattr %s", what);
    else if ((r = move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)) < 0)
        snprintf(msg, sizeof msg, "mount on %s", what);
    int e = errno;
    close(tree);
    errno = e;
    return r < 0 ? fail_errno(msg) : 0;
}

static int bind_path(const char *src, int target, int writable, int devices)
{
    return bind_(AT_FDCWD, src, target, writable, devices, src);
}

/* a new `fstype` (options "key=value" or "flag", NULL-ended) on the mount point fd `target`; its root's fd */
static int new_fs(int target, const char *fstype, const char *const *options, unsigned attrs)
{
    char msg[128];
    int fs = fsopen(fstype, FSOPEN_CLOEXEC);
    if (fs < 0) {
        snprintf(msg, sizeof msg, "fsopen %s", fstype);
        return fail_errno(msg);
    }
    int mnt = -1;
    for (const char *const *o = options; *o; o++) {
        char key[64];
        const char *eq = strchr(*o, '=');
        snprintf(key, sizeof key, "%.*s", eq ? (int)(eq - *o) : (int)strlen(*o), *o);
        if (fsconfig(fs, eq ? FSCONFIG_SET_STRING : FSCONFIG_SET_FLAG, key, eq ? eq + 1 : NULL, 0) < 0) {
            snprintf(msg, sizeof msg, "%s option %s", fstype, key);
            goto out;
        }
    }
    if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        snprintf(msg, sizeof msg, "mount %s", fstype);
        goto out;
    }
    if ((mnt = fsmount(fs, FSMOUNT_CLOEXEC, attrs)) < 0) {
        snprintf(msg, sizeof msg, "fsmount %s", fstype);
        goto out;
    }
    if (target >= 0 && move_mount(mnt, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
        snprintf(msg, sizeof msg, "mount on %s", fstype);
        int e = errno;
        close(mnt);
        errno = e;
        mnt = -1;
    }
out:;
    int e = errno;
    close(fs);
    errno = e;
    return mnt < 0 ? fail_errno(msg) : mnt;
}

static int mount_(const char *src, const char *target, const char *type, unsigned long flags, const char *data)
{
    char msg[PATH_MAX + 16];
    if (mount(src, target, type, flags, data) == 0)
        return 0;
    snprintf(msg, sizeof msg, "mount %s", target);
    return fail_errno(msg);
}

static int setattr(int fd, unsigned attrs)
{
    struct mount_attr attr = {.attr_set = attrs};
    return mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0 ? fail_errno("mount_setattr") : 0;
}

/* the host's `host_dir/name` in `into`, read-only: a link as the same link, a directory or file as a bind */
static void mirror(struct tree *into, const char *host_dir, const char *name)
{
    char host[PATH_MAX], link[PATH_MAX];
    snprintf(host, sizeof host, "/oldroot%s/%s", host_dir, name);
    size_t len = strlen(host_dir);
    if (len && host_dir[len - 1] == '/') /* "/" is the root itself */
        snprintf(host, sizeof host, "/oldroot%.*s/%s", (int)len - 1, host_dir, name);
    struct stat st;
    if (lstat(host, &st) < 0) {
        if (errno == ENOENT)
            return;
        check(fail_errno(host));
    }
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(host, link, sizeof link - 1);
        check(n < 0 ? fail_errno(host) : 0);
        link[n] = 0;
        check(symlinkat(link, into->fd, name) < 0 ? fail_errno(name) : 0);
    } else if (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)) {
        int target = place(into, name, S_ISDIR(st.st_mode), 0755);
        check(target);
        check(bind_path(host, target, 0, 0));
        close(target);
    }
}

/* a directory of the new root (made if missing, never through a link) to put entries in */
static struct tree subtree(struct tree *root, const char *box_dir)
{
    const char *p = box_dir;
    while (*p == '/')
        p++;
    struct tree t = {-1, 0};
    t.fd = *p ? place(root, box_dir, 1, 0755) : (int)fcntl(root->fd, F_DUPFD_CLOEXEC, 0);
    check(t.fd);
    return t;
}

static void make_file(struct tree *root, const char *path, const char *text)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *name = slash ? slash + 1 : dir;
    if (slash)
        *slash = 0;
    struct tree into = subtree(root, dir);
    int fd = openat(into.fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    check(fd < 0 ? fail_errno(path) : 0);
    check(write_all(fd, text, strlen(text)) < 0 ? fail_errno(path) : 0);
    close(fd);
    close(into.fd);
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* /run/secrets: a tmpfs of its own, filled while it is still detached (so no program ever sees it half made),
 * one file per secret, 0400 and the program's; then read-only, and only then in the box */
static void mount_secrets(struct tree *root, struct step *s)
{
    size_t total = 0;
    for (int i = 0; i < s->l[1].n; i++)
        total += strlen(s->l[1].items[i]) / 2 + 4096;
    char size[48], inodes[48];
    snprintf(size, sizeof size, "size=%zu", total + 4096);
    snprintf(inodes, sizeof inodes, "nr_inodes=%d", s->l[0].n + 2);
    const char *const opts[] = {"mode=0755", size, inodes, NULL};
    int fs = new_fs(-1, "tmpfs", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    check(fs);
    for (int i = 0; i < s->l[0].n; i++) {
        const char *name = s->l[0].items[i], *hex = s->l[1].items[i];
        size_t len = strlen(hex) / 2;
        char *value = malloc(len + 1);
        for (size_t j = 0; value && j < len; j++) {
            int hi = unhex(hex[2 * j]), lo = unhex(hex[2 * j + 1]);
            if (hi < 0 || lo < 0) {
                errno = EINVAL;
                check(fail("the box's plan has a secret that is not hex"));
            }
            value[j] = (char)(hi << 4 | lo);
        }
        if (!value || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") || strlen(hex) % 2) {
            errno = EINVAL;
            check(fail("the box's plan has a secret named %s that cannot be made", name));
        }
        int fd = openat(fs, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
        check(fd < 0 || write_all(fd, value, len) < 0 || fchown(fd, (uid_t)s->n[0], (gid_t)s->n[1]) < 0 ?
              fail_errno(name) : 0);
        close(fd);
        explicit_bzero(value, len);
        free(value);
    }
    check(setattr(fs, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC));
    int target = place(root, "/run/secrets", 1, 0755);
    check(target);
    check(move_mount(fs, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0 ?
          fail_errno("mount /run/secrets") : 0);
    close(target);
    close(fs);
}

/* a file made for a box over a union root: written on the scratch tmpfs (out of the program's reach once the old
 * root is detached) and bound read-only over the image's own, which stays as it is */
static void bound_file(struct tree *root, const char *path, const char *text, int n)
{
    char scratch[64];
    snprintf(scratch, sizeof scratch, "/rw/.file-%d", n);
    int fd = open(scratch, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    check(fd < 0 || write_all(fd, text, strlen(text)) < 0 ? fail_errno(scratch) : 0);
    close(fd);
    int target = place(root, path, 0, 0644);
    check(target);
    check(bind_path(scratch, target, 0, 0));
    close(target);
}

static void own(int target, unsigned uid, unsigned gid, mode_t mode)
{
    int fd = openat(target, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    check(fd < 0 ? fail_errno("open the home dir") : 0);
    check(fchown(fd, uid, gid) < 0 || fchmod(fd, mode) < 0 ? fail_errno("own the home dir") : 0);
    close(fd);
}

/* home (/box), /tmp and /dev/shm share one size-limited tmpfs, so --disk caps them together; over a union root,
 * home is the union's own directory instead, so that an upper keeps what the program wrote there */
static void mount_writable(struct tree *root, struct step *s)
{
    const char *dirs[] = {"/rw/box", "/rw/tmp", "/rw/shm"};
    for (int i = 0; i < 3; i++)
        check(mkdir(dirs[i], 0777) < 0 ? fail_errno(dirs[i]) : 0);
    check(chmod("/rw/tmp", 01777) < 0 || chmod("/rw/shm", 01777) < 0 ? fail_errno("/rw") : 0);
    if (*s->s[0]) { /* none for a build step: it sees the image's own dirs */
        int box = place(root, s->s[0], 1, 0755);
        check(box);
        if (s->flag) {
            own(box, (unsigned)s->n[0], (unsigned)s->n[1], 0755);
        } else {
            check(chown("/rw/box", (uid_t)s->n[0], (gid_t)s->n[1]) < 0 || chmod("/rw/box", 0755) < 0 ?
                  fail_errno("/rw/box") : 0);
            check(bind_path("/rw/box", box, 1, 0));
        }
        close(box);
    }
    if (!s->flag2)
        return;
    int tmp = place(root, "tmp", 1, 0755);
    check(tmp);
    check(bind_path("/rw/tmp", tmp, 1, 0));
    close(tmp);
}

static void mount_dev(struct tree *root, struct list *names)
{
    static const char *const tmpfs_opts[] = {"mode=0755", NULL};
    static const char *const pts_opts[] = {"newinstance", "ptmxmode=0666", "mode=620", NULL};
    int target = place(root, "dev", 1, 0755);
    check(target);
    struct tree dev = {new_fs(target, "tmpfs", tmpfs_opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC), 0};
    check(dev.fd);
    close(target);
    for (int i = 0; i < names->n; i++) {
        char host[PATH_MAX];
        snprintf(host, sizeof host, "/oldroot/dev/%s", names->items[i]);
        int node = place(&dev, names->items[i], 0, 0644);
        check(node);
        check(bind_path(host, node, 1, 1));
        close(node);
    }
    target = place(&dev, "pts", 1, 0755);
    check(target);
    int pts = new_fs(target, "devpts", pts_opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
    check(pts);
    close(pts);
    close(target);
    static const char *const links[][2] = {{"ptmx", "pts/ptmx"}, {"fd", "/proc/self/fd"},
                                           {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
                                           {"stderr", "/proc/self/fd/2"}};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++)
        check(symlinkat(links[i][1], dev.fd, links[i][0]) < 0 ? fail_errno(links[i][0]) : 0);
    target = place(&dev, "shm", 1, 0755);
    check(target);
    check(bind_path("/rw/shm", target, 1, 0));
    close(target);
    check(setattr(dev.fd, MOUNT_ATTR_RDONLY));
    close(dev.fd);
}

/* a procfs of this process's pid namespace on `target` (hidepid=invisible: box init and the spawner are not there
 * to open at all), the kernel-tuning parts read-only and the host's facts masked by read-only binds of an empty
 * file and directory (/rw/masked-file, /rw/masked), or, with `masks` a /proc already masked, of its own same-named
 * masks; returns a writable fd of its sys/kernel/ns_last_pid, opened before /proc/sys went read-only */
static int proc_on(int target, struct step *s, int masks)
{
    static const char *const opts[] = {"hidepid=invisible", NULL};
    int proc = new_fs(target, "proc", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    check(proc);
    int last_pid = openat(proc, "sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    check(last_pid < 0 ? fail_errno("ns_last_pid") : 0);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < s->l[k].n; i++) {
            const char *name = s->l[k].items[i];
            int ours = 0, fd = lookup(proc, name, &ours);
            check(fd == -1 ? -1 : 0);
            if (fd < 0)
                continue;
            struct stat st;
            check(fstat(fd, &st) < 0 ? fail_errno(name) : 0);
            const char *mask = masks >= 0 ? name : S_ISDIR(st.st_mode) ? "/rw/masked" : "/rw/masked-file";
            check(k == 0 ? bind_(proc, name, fd, 0, 0, name)
                         : bind_(masks >= 0 ? masks : AT_FDCWD, mask, fd, 0, 0, name));
            close(fd);
        }
    close(proc);
    return last_pid;
}

/* the box's procfs */
static int mount_proc(struct tree *root, struct step *s)
{
    check(mkdir("/rw/masked", 0555) < 0 ? fail_errno("/rw/masked") : 0);
    int empty = open("/rw/masked-file", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0444);
    check(empty < 0 ? fail_errno("/rw/masked-file") : 0);
    close(empty);
    int target = place(root, "proc", 1, 0555);
    check(target);
    int last_pid = proc_on(target, s, -1);
    close(target);
    return last_pid;
}

static struct step *joined_proc; /* a joined init's plan's /proc (sbx exec) */

/* a joined init's spawner, pid 1 of the pid namespace nested in the box's: a procfs of that namespace over the
 * box's /proc, in the joined init's own mount namespace, masked as the box's is, so that the pids its programs
 * see in /proc are the pids they have */
static void own_proc(void)
{
    int box_proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    check(box_proc < 0 ? fail_errno("/proc") : 0);
    close(proc_on(box_proc, joined_proc, box_proc));
    close(box_proc);
}

/* the bind's source under /oldroot, by the link-free path the supervisor resolved, and only if it is still what
 * the supervisor saw there (a program of another box may have swapped a directory on the way since) */
static void mount_bind(struct tree *root, struct step *s)
{
    int oldroot = open("/oldroot", PATH_FLAGS | O_DIRECTORY);
    check(oldroot < 0 ? fail_errno("/oldroot") : 0);
    const char *rel = s->s[0];
    while (*rel == '/')
        rel++;
    int src = openat2_(oldroot, *rel ? rel : ".", O_PATH | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    if (src < 0) {
        char msg[PATH_MAX + 8];
        snprintf(msg, sizeof msg, "open %s", s->s[0]);
        check(fail_errno(msg));
    }
    close(oldroot);
    struct stat st;
    check(fstat(src, &st) < 0 ? fail_errno(s->s[0]) : 0);
    if (s->has_identity && ((long long)st.st_dev != atoll(s->l[0].items[0]) ||
                            (long long)st.st_ino != atoll(s->l[0].items[1]))) {
        errno = ESTALE;
        check(fail("%s: replaced since the sandbox resolved it", s->s[0]));
    }
    int target = place(root, s->s[1], S_ISDIR(st.st_mode), 0755);
    check(target);
    check(bind_(src, "", target, s->flag, 0, s->s[0]));
    close(target);
    close(src);
}

static void mount_union(struct step *s)
{
    char upper[PATH_MAX + 16], work[PATH_MAX + 16];
    if (*s->s[0]) {
        snprintf(upper, sizeof upper, "/oldroot%s", s->s[0]);
        snprintf(work, sizeof work, "/oldroot%s", s->s[1]);
    } else {
        snprintf(upper, sizeof upper, "/rw/upper");
        snprintf(work, sizeof work, "/rw/work");
        check(mkdir(upper, 0755) < 0 || mkdir(work, 0700) < 0 ? fail_errno("/rw") : 0);
    }
    size_t size = 64 + 2 * sizeof upper;
    for (int i = 0; i < s->l[0].n; i++)
        size += strlen(s->l[0].items[i]) + 10;
    char *data = malloc(size), *o = data;
    o += sprintf(o, "lowerdir=");
    for (int i = 0; i < s->l[0].n; i++)
        o += sprintf(o, "%s/oldroot%s", i ? ":" : "", s->l[0].items[i]);
    sprintf(o, ",upperdir=%s,workdir=%s,userxattr", upper, work);
    check(mount_("overlay", "/new", "overlay", MS_NOSUID | MS_NODEV, data));
    free(data);
}

/* the FUSE union as the new root, served from outside the box: the connection goes to the supervisor, which starts
 * the daemon on it; the first access to /new waits until the daemon has answered the kernel's INIT */
static void mount_fuse(void)
{
    char data[256];
    int fd = open("/oldroot/dev/fuse", O_RDWR | O_CLOEXEC);
    check(fd < 0 ? fail_errno("/dev/fuse") : 0);
    /* user_id/group_id name the mounter in this user namespace's terms: 0 in the range mapping, the caller's own
     * ids in the single one (where 0 is unmapped: EINVAL) */
    snprintf(data, sizeof data, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,default_permissions,allow_other", fd,
             getuid(), getgid());
    check(mount_("sbx-overlayfs", "/new", "fuse.sbx-overlayfs", MS_NOSUID | MS_NODEV, data));
    send_msg(ctl, "{\"fuse\":true}", fd);
    close(fd);
}

/* a named volume at its path: a FUSE filesystem of its own, served from outside the box like a FUSE root; the
 * connection goes to the supervisor with the volume's index.  A volume no box has used yet is given to the program
 * (its owner is kept by the daemon); the chown goes through the mount, so it waits for the daemon to answer. */
static void mount_volume(struct tree *root, struct step *s, int index)
{
    char fd_opt[32], ids[2][32], msg[64];
    int fd = open("/oldroot/dev/fuse", O_RDWR | O_CLOEXEC);
    check(fd < 0 ? fail_errno("/dev/fuse") : 0);
    snprintf(fd_opt, sizeof fd_opt, "fd=%d", fd);
    snprintf(ids[0], sizeof ids[0], "user_id=%u", getuid());
    snprintf(ids[1], sizeof ids[1], "group_id=%u", getgid());
    const char *const opts[] = {"source=sbx-volume", "subtype=sbx-overlayfs", fd_opt, "rootmode=40000", ids[0],
                                ids[1], "default_permissions", "allow_other", NULL};
    int target = place(root, s->s[0], 1, 0755);
    check(target);
    int mnt = new_fs(target, "fuse", opts,
                     MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (s->flag ? MOUNT_ATTR_RDONLY : 0));
    check(mnt);
    close(target);
    snprintf(msg, sizeof msg, "{\"volume\":%d}", index);
    send_msg(ctl, msg, fd);
    close(fd);
    if (s->n[0] >= 0)
        check(fchownat(mnt, "", (uid_t)s->n[0], (gid_t)s->n[1], AT_EMPTY_PATH) < 0 ? fail_errno(s->s[0]) : 0);
    close(mnt);
}

/* The program's own user namespace, for a program that is root of the box (--user 0): its 0 is the box's uid
 * s->n[0] (gid s->n[1]), the top of the subordinate range, and its 1..N-1 are the box's 1..N-1, so an image's ids
 * keep their meaning.  The box's root, which box init and the spawner are, is not in it: the program's capabilities
 * reach what its namespace owns, never the box's mounts, processes or accounting, and it cannot signal box init or
 * the spawner (another uid).  Made once per box, by a child that unshares and is mapped from here; the spawner
 * enters it (setns) for each run.  Returns the namespace's fd. */
static int nested_root(struct step *s)
{
    int unshared[2], done[2];
    check(pipe2(unshared, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0 ? fail_errno("pipe") : 0);
    pid_t pid = fork();
    check(pid < 0 ? fail_errno("fork") : 0);
    if (pid == 0) {
        char c = 'u';
        close(unshared[0]);
        close(done[1]);
        if (unshare(CLONE_NEWUSER) < 0 || write(unshared[1], &c, 1) != 1)
            _exit(1);
        _exit(read(done[0], &c, 1) < 0); /* (waits until box init has what it needs of this namespace) */
    }
    close(unshared[1]);
    close(done[0]);
    char c, path[64], map[96];
    int ns = -1;
    if (read(unshared[0], &c, 1) == 1) {
        const char *const files[] = {"uid_map", "gid_map"};
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, files[i]);
            snprintf(map, sizeof map, "0 %lld 1\n1 1 %lld\n", s->n[i], s->n[i] - 1);
            check(write_file(path, map));
        }
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        ns = open(path, O_RDONLY | O_CLOEXEC);
    }
    int e = errno;
    close(unshared[0]);
    close(done[1]);
    waitpid(pid, NULL, 0);
    errno = e;
    check(ns < 0 ? fail_errno("the program's user namespace") : 0);
    return ns;
}

static void loopback_up(void)
{
    struct ifreq ifr = {0};
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    check(s < 0 ? fail_errno("socket") : 0);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    ifr.ifr_flags = IFF_UP | IFF_RUNNING;
    check(ioctl(s, SIOCSIFFLAGS, &ifr) < 0 ? fail_errno("loopback") : 0);
    close(s);
}

/* carry out the plan under an intermediate root, and switch to it; returns the writable ns_last_pid fd */
static int build_root(void)
{
    check(mount_(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    check(mount_("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
    check(chdir("/tmp") < 0 || mkdir("oldroot", 0777) < 0 ? fail_errno("/tmp") : 0);
    check(syscall(SYS_pivot_root, ".", "oldroot") < 0 ? fail_errno("pivot_root") : 0);
    check(chdir("/") < 0 || mkdir("/new", 0755) < 0 || mkdir("/rw", 0755) < 0 ? fail_errno("/") : 0);
    struct tree root = {-1, 0};
    int last_pid = -1, volumes = 0;
    for (int i = 0; i < nsteps; i++) {
        struct step *s = &steps[i];
        if (root.fd < 0 && s->kind > FUSE_UNION && s->kind < PIVOT) {
            errno = EINVAL;
            check(fail("the box's plan has no root"));
        }
        switch (s->kind) {
        case SCRATCH: {
            char data[128];
            snprintf(data, sizeof data, "mode=0755,size=%lld,nr_inodes=%lld", s->n[0], s->n[1]);
            check(mount_("tmpfs", "/rw", "tmpfs", MS_NOSUID | MS_NODEV, data));
            break;
        }
        case TMPFS_ROOT:
        case KERNEL_UNION:
        case FUSE_UNION:
            /* a union root is untrusted (its layers, an upper an earlier run wrote) and ours to rewrite (writes go
             * to the box's upper); the host's system dirs go into a fresh tmpfs that holds only what is made here */
            if (s->kind == TMPFS_ROOT)
                check(mount_("tmpfs", "/new", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
            else if (s->kind == KERNEL_UNION)
                mount_union(s);
            else
                mount_fuse();
            root.fd = open("/new", PATH_FLAGS | O_DIRECTORY);
            check(root.fd < 0 ? fail_errno("/new") : 0);
            root.replaceable = s->kind != TMPFS_ROOT;
            break;
        case MIRROR: {
            struct tree into = subtree(&root, s->s[2]);
            mirror(&into, s->s[0], s->s[1]);
            close(into.fd);
            break;
        }
        case FILE_:
            make_file(&root, s->s[0], s->s[1]);
            break;
        case BOUND_FILE:
            bound_file(&root, s->s[0], s->s[1], i);
            break;
        case WRITABLE:
            mount_writable(&root, s);
            break;
        case DEVICES:
            mount_dev(&root, &s->l[0]);
            break;
        case PROC:
            last_pid = mount_proc(&root, s);
            break;
        case BIND:
            mount_bind(&root, s);
            break;
        case VOLUME:
            mount_volume(&root, s, volumes++);
            break;
        case TMPFS: {
            char size[32], inodes[32];
            snprintf(size, sizeof size, "size=%lld", s->n[0]);
            snprintf(inodes, sizeof inodes, "nr_inodes=%lld", s->n[1]);
            const char *const opts[] = {"mode=0777", size, inodes, NULL};
            int target = place(&root, s->s[0], 1, 0755);
            check(target);
            int fs = new_fs(target, "tmpfs", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
            check(fs);
            close(fs);
            close(target);
            break;
        }
        case SECRETS:
            mount_secrets(&root, s);
            break;
        case READ_ONLY_ROOT:
            check(setattr(root.fd, MOUNT_ATTR_RDONLY));
            break;
        case PIVOT:
            if (root.fd >= 0)
                close(root.fd);
            root.fd = -1;
            check(chdir("/new") < 0 ? fail_errno("/new") : 0);
            check(syscall(SYS_pivot_root, ".", ".") < 0 ? fail_errno("pivot_root") : 0);
            check(umount2(".", MNT_DETACH) < 0 ? fail_errno("umount the old root") : 0);
            check(chdir("/") < 0 ? fail_errno("/") : 0);
            break;
        case HOSTNAME:
            check(sethostname(s->s[0], strlen(s->s[0])) < 0 ? fail_errno("sethostname") : 0);
            break;
        case LOOPBACK:
            loopback_up();
            break;
        case NESTED_ROOT:
            program_userns = nested_root(s);
            break;
        }
    }
    if (last_pid < 0) {
        errno = EINVAL;
        check(fail("the box's plan mounts no /proc"));
    }
    return last_pid;
}

/* -- files in and out ------------------------------------------------------------------------------------------ */

static const char *writable[MAX_DIRS]; /* home, /tmp, /dev/shm, then the --tmpfs dirs */
static int writable_fd[MAX_DIRS];      /* each, opened (O_PATH) once the root is built, before any program ran */
static int nwritable;

static int fail_path(const char *path)
{
    return fail("%s: %s%s", path, strerror(errno), errno == ELOOP ? " (symlinks in the box are never followed)" : "");
}

/* the directory holding DIR/REL (an fd, never reached through a link) and its last name; with `own`, directories
 * missing on the way are made, owned by the program */
static int parent_beneath(const char *path, const char *dir, char *rel, int own_, const char **name)
{
    int known = -1;
    for (int i = 0; i < 3 && i < nwritable; i++)
        if (!strcmp(dir, writable[i]))
            known = i;
    if (known < 0) {
        errno = EINVAL;
        return fail("%s: not under %s, %s or %s", path, writable[0], writable[1], writable[2]);
    }
    /* through the fd taken before any program ran: in a union root, the program may have moved the dir's name */
    int parent = (int)fcntl(writable_fd[known], F_DUPFD_CLOEXEC, 0);
    if (parent < 0)
        return fail_path(path);
    char *slash;
    while ((slash = strchr(rel, '/'))) {
        *slash = 0;
        if (own_) {
            if (mkdirat(parent, rel, 0755) == 0) {
                if (fchownat(parent, rel, program_uid, program_gid, AT_SYMLINK_NOFOLLOW) < 0)
                    goto failed;
            } else if (errno != EEXIST) {
                goto failed;
            }
        }
        int below = openat2_(parent, rel, O_RDONLY | O_DIRECTORY | BASE_FLAGS, 0, RESOLVE);
        if (below < 0)
            goto failed;
        close(parent);
        parent = below;
        rel = slash + 1;
    }
    *name = rel;
    return parent;
failed:
    fail_path(path);
    close(parent);
    return -1;
}

/* open DIR/REL, never through a link, and only if it is a regular file (or, with `directory`, a directory) */
static int open_beneath(const char *path, const char *dir, char *rel, int flags, mode_t mode, int own_,
                        int directory)
{
    const char *name;
    int parent = parent_beneath(path, dir, rel, own_, &name);
    if (parent < 0)
        return -1;
    int fd = openat2_(parent, name, flags | BASE_FLAGS, mode, RESOLVE);
    int e = errno;
    close(parent);
    errno = e;
    if (fd < 0)
        return fail_path(path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || (directory && S_ISDIR(st.st_mode)))) {
        close(fd);
        errno = EINVAL;
        return fail("%s: not a regular file%s", path, directory ? " or directory" : "");
    }
    return fd;
}

/* an fd the supervisor can read: a regular file's own, or for one of a FUSE union a copy in a memfd (the
 * supervisor, outside the user namespace the FUSE mount serves, would get EACCES), bounded by the box's --disk; or
 * a directory's, whose entries the supervisor lists through it */
static int open_for_reading(const char *path, const char *dir, char *rel)
{
    int fd = open_beneath(path, dir, rel, O_RDONLY, 0, 0, 1);
    if (fd < 0)
        return -1;
    struct statfs fs;
    struct stat st;
    if (fstatfs(fd, &fs) < 0 || fstat(fd, &st) < 0) {
        fail_path(path);
        close(fd);
        return -1;
    }
    if (fs.f_type != FUSE_SUPER_MAGIC)
        return fd;
    int mem = -1;
    struct statvfs room;
    if (S_ISDIR(st.st_mode)) {
        fail("%s: a directory of a FUSE union cannot be listed from outside the box", path);
    } else if (statvfs("/tmp", &room) < 0) {
        fail_path(path);
    } else if ((unsigned long long)st.st_size > (unsigned long long)room.f_blocks * room.f_frsize) {
        fail("%s: %lld bytes, more than the box's --disk", path, (long long)st.st_size);
    } else if ((mem = memfd_create("sbx-read", MFD_CLOEXEC)) < 0 || copy(fd, mem, st.st_size) < 0 ||
               lseek(mem, 0, SEEK_SET) < 0 || fchmod(mem, st.st_mode & 07777) < 0) {
        fail_path(path);
        if (mem >= 0)
            close(mem);
        mem = -1;
    }
    close(fd);
    return mem;
}

/* create or replace DIR/REL with the contents of the fd `source`, owned by the program's uid */
static int write_from(const char *path, const char *dir, char *rel, int source, mode_t mode)
{
    int fd = open_beneath(path, dir, rel, O_WRONLY | O_CREAT, mode, 1, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    int r = ftruncate(fd, 0) < 0 || fstat(source, &st) < 0 || copy(source, fd, st.st_size) < 0 ||
            fchown(fd, program_uid, program_gid) < 0 || fchmod(fd, mode) < 0 ? fail_path(path) : 0;
    close(fd);
    return r;
}

/* a symlink at DIR/REL to `target` (go-judge's copyIn `symlink`), owned by the program's uid, never followed */
static int make_symlink(const char *path, const char *dir, char *rel, const char *target)
{
    const char *name;
    int parent = parent_beneath(path, dir, rel, 1, &name);
    if (parent < 0)
        return -1;
    int r = symlinkat(target, parent, name) < 0 ||
            fchownat(parent, name, program_uid, program_gid, AT_SYMLINK_NOFOLLOW) < 0 ? fail_path(path) : 0;
    close(parent);
    return r;
}

/* -- reset ------------------------------------------------------------------------------------------------------ */

struct notes {
    char lines[MAX_NOTES][PATH_MAX + 64];
    int n, more;
    const char *top;
};

static void note(struct notes *notes, const char *where, const char *why)
{
    if (notes->n < MAX_NOTES)
        snprintf(notes->lines[notes->n++], sizeof notes->lines[0], "%s: %s", where, why);
    else
        notes->more++;
}

/* an fd of the directory `name` (never through a link), readable and writable for its owner, so that it can be
 * emptied: one the starter cannot list is fchmodded to 0700 through an fd of that very directory */
static int open_dir(int parent, const char *name)
{
    int fd = openat(parent, name, DIR_FLAGS);
    if (fd < 0 && errno == EACCES) {
        int path_fd = openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (path_fd < 0)
            return -1;
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", path_fd);
        if (syscall(SYS_FCHMODAT2, path_fd, "", 0700, AT_EMPTY_PATH) == 0 || chmod(self, 0700) == 0)
            fd = openat(path_fd, ".", DIR_FLAGS);
        int e = errno;
        close(path_fd);
        errno = e;
    }
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0700) != 0700)
        fchmod(fd, 0700); /* not ours to chmod: removing in it may still work, else it is reported */
    return fd;
}

struct level {
    dev_t dev;
    ino_t ino;
    char **names;
    size_t n;
    char *child;
    size_t where_len;
};

static char **list_names(int fd, size_t *n, const char *where, struct notes *notes)
{
    *n = 0;
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    DIR *d = dup_fd < 0 ? NULL : fdopendir(dup_fd);
    if (!d) {
        note(notes, where, strerror(errno));
        if (dup_fd >= 0)
            close(dup_fd);
        return NULL;
    }
    size_t cap = 16;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (*n == cap)
            names = realloc(names, (cap *= 2) * sizeof *names);
        names[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    return names;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* empty the directory open as `top` (which stays open): depth first, with a loop and one open directory at a time,
 * never following a link (unlinkat, O_NOFOLLOW); the way back up is ".." checked against the identity it had */
static void empty_tree(int top, const char *top_path, struct notes *notes)
{
    size_t depth = 0, cap = 16;
    struct level *stack = malloc(cap * sizeof *stack);
    static char where[1 << 16];
    snprintf(where, sizeof where, "%s", top_path);
    int cur = fcntl(top, F_DUPFD_CLOEXEC, 0);
    struct stat st;
    if (cur < 0 || fstat(cur, &st) < 0) {
        note(notes, top_path, strerror(errno));
        free(stack);
        return;
    }
    struct level lv = {st.st_dev, st.st_ino, NULL, 0, NULL, strlen(where)};
    lv.names = list_names(cur, &lv.n, where, notes);
    for (;;) {
        if (lv.n) {
            char *name = lv.names[--lv.n];
            size_t len = strlen(where);
            snprintf(where + len, sizeof where - len, "/%s", name);
            int child = -1;
            if (unlinkat(cur, name, 0) == 0 || errno == ENOENT) {
                ;
            } else if (errno != EISDIR) {
                note(notes, where, strerror(errno));
            } else if ((child = open_dir(cur, name)) < 0) {
                if (errno != ENOENT && errno != ENOTDIR)
                    note(notes, where, strerror(errno));
            }
            if (child < 0) {
                where[len] = 0;
                free(name);
                continue;
            }
            if (depth == cap)
                stack = realloc(stack, (cap *= 2) * sizeof *stack);
            lv.child = name;
            lv.where_len = len;
            stack[depth++] = lv;
            close(cur);
            cur = child;
            if (fstat(cur, &st) < 0) {
                note(notes, where, strerror(errno));
                break;
            }
            lv = (struct level){st.st_dev, st.st_ino, NULL, 0, NULL, strlen(where)};
            lv.names = list_names(cur, &lv.n, where, notes);
            continue;
        }
        free_names(lv.names, 0);
        if (!depth)
            break;
        lv = stack[--depth];
        int up = openat(cur, "..", DIR_FLAGS);
        where[lv.where_len] = 0;
        if (up < 0 || fstat(up, &st) < 0) {
            note(notes, where, strerror(errno));
            if (up >= 0)
                close(up);
            stack[depth++] = lv; /* freed below */
            break;
        }
        close(cur);
        cur = up;
        if (st.st_dev != lv.dev || st.st_ino != lv.ino) { /* nothing should move it; if something did, stop */
            note(notes, where, "moved during removal (removal stopped)");
            stack[depth++] = lv;
            break;
        }
        if (unlinkat(cur, lv.child, AT_REMOVEDIR) < 0) {
            char child_where[sizeof where];
            snprintf(child_where, sizeof child_where, "%s/%s", where, lv.child);
            note(notes, child_where, strerror(errno));
        }
        free(lv.child);
    }
    close(cur);
    while (depth--) { /* stopped early: what is left of the walk */
        free_names(stack[depth].names, stack[depth].n);
        free(stack[depth].child);
    }
    free(stack);
}

struct dir_state {
    const char *path;
    struct stat st;
};

static struct dir_state dirs[MAX_DIRS];
static int ndirs, mqueue = -1, last_pid_fd = -1;
static pid_t pids_after;

/* what a run may leave behind, taken right after the root is built: each writable dir's mode, owner and times;
 * and an fd of the box's mqueue filesystem, mounted over /tmp for a moment and detached again at once, so that
 * only box init can reach it */
static void resetter_init(void)
{
    for (int i = 0; i < nwritable; i++) {
        dirs[ndirs].path = writable[i];
        check(fstat(writable_fd[i], &dirs[ndirs++].st) < 0 ? fail_errno(writable[i]) : 0);
    }
    check(mount_("mqueue", "/tmp", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL));
    mqueue = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    check(mqueue < 0 ? fail_errno("mqueue") : 0);
    check(umount2("/tmp", MNT_DETACH) < 0 ? fail_errno("umount mqueue") : 0);
}

static void remove_ipc(void)
{
    static const char *const kinds[] = {"shm", "sem", "msg"};
    for (int k = 0; k < 3; k++) {
        char path[32], line[512];
        snprintf(path, sizeof path, "/proc/sysvipc/%s", kinds[k]);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        int first = 1;
        while (fgets(line, sizeof line, f)) {
            long key, id;
            if (first || sscanf(line, "%ld %ld", &key, &id) != 2) {
                first = 0;
                continue;
            }
            if (k == 0)
                shmctl((int)id, IPC_RMID, NULL);
            else if (k == 1)
                semctl((int)id, 0, IPC_RMID);
            else
                msgctl((int)id, IPC_RMID, NULL);
        }
        fclose(f);
    }
}

/* make the box as new: every writable dir emptied with its mode, owner and times back and its extended attributes
 * removed; no message queue or System V IPC object; the pid counter where the spawner's start left it, so that the
 * next run's pids tell nothing of how many processes the last one made */
static int reset(void)
{
    char text[32];
    snprintf(text, sizeof text, "%d", pids_after);
    if (pwrite(last_pid_fd, text, strlen(text), 0) < 0)
        return fail("reset: ns_last_pid: %s", strerror(errno));
    for (int i = 0; i < ndirs; i++) {
        struct dir_state *d = &dirs[i];
        int fd = openat(writable_fd[i], ".", DIR_FLAGS);
        if (fd < 0)
            return fail("reset: %s: %s", d->path, strerror(errno));
        struct notes notes = {.top = d->path};
        empty_tree(fd, d->path, &notes);
        if (notes.n) {
            char joined[sizeof notes.lines + 64] = "";
            for (int k = 0; k < notes.n; k++)
                snprintf(joined + strlen(joined), sizeof joined - strlen(joined), "%s%s", k ? "; " : "",
                         notes.lines[k]);
            if (notes.more)
                snprintf(joined + strlen(joined), sizeof joined - strlen(joined), "; ... and %d more under %s",
                         notes.more, d->path);
            close(fd);
            errno = ENOTEMPTY;
            return fail("reset: cannot empty %s: %s", d->path, joined);
        }
        char names[1 << 16];
        ssize_t len = flistxattr(fd, names, sizeof names);
        for (ssize_t at = 0; at < len; at += (ssize_t)strlen(names + at) + 1)
            fremovexattr(fd, names + at);
        struct timespec times[2] = {d->st.st_atim, d->st.st_mtim};
        int r = len < 0 || fchown(fd, d->st.st_uid, d->st.st_gid) < 0 || fchmod(fd, d->st.st_mode & 07777) < 0 ||
                futimens(fd, times) < 0 ? fail("reset: %s: %s", d->path, strerror(errno)) : 0;
        close(fd);
        if (r < 0)
            return -1;
    }
    int q = fcntl(mqueue, F_DUPFD_CLOEXEC, 0);
    DIR *dq = q < 0 ? NULL : fdopendir(q);
    if (!dq)
        return fail("reset: mqueue: %s", strerror(errno));
    struct dirent *e;
    while ((e = readdir(dq)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlinkat(mqueue, e->d_name, 0);
    closedir(dq);
    remove_ipc();
    return 0;
}

/* -- box init --------------------------------------------------------------------------------------------------- */

static int spawner_bin;

/* the box's spawner, with its control socket for the supervisor (*sock) */
static pid_t start_spawner(int *sock)
{
    int pair[2];
    check(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0 ? fail_errno("socketpair") : 0);
    pid_t pid = fork();
    check(pid < 0 ? fail_errno("cannot start the spawner: fork") : 0);
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (joined_proc)
            own_proc();
        /* (dup2 onto itself keeps close-on-exec: the flag is cleared by hand) */
        if (dup2(pair[1], 3) < 0 || dup2(spawner_bin, 4) < 0 || fcntl(4, F_SETFD, FD_CLOEXEC) < 0 ||
            (program_userns >= 0 && (dup2(program_userns, 5) < 0 || fcntl(5, F_SETFD, 0) < 0)))
            _exit(127);
        syscall(SYS_close_range, program_userns >= 0 ? 6U : 5U, ~0U, 0U);
        if (!range_map) { /* the spawner keeps no capability across execve here, so drop them from the bounding set */
            for (int cap = 0; prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0; cap++)
                ;
        }
        char uid[16], gid[16];
        /* in its own namespace, the program is its root */
        snprintf(uid, sizeof uid, "%u", program_userns >= 0 ? 0 : program_uid);
        snprintf(gid, sizeof gid, "%u", program_userns >= 0 ? 0 : program_gid);
        char *argv[] = {"sbx-spawner", "3", uid, gid, range_map ? "1" : "0", program_userns >= 0 ? "5" : "-1", NULL};
        char *envp[] = {NULL};
        execveat(4, "", argv, envp, AT_EMPTY_PATH);
        _exit(127);
    }
    close(pair[1]);
    *sock = pair[0];
    return pid;
}

/* the box's audit loginuid, set to the program's uid unless it is set already: a process whose loginuid is unset
 * may set it once without privilege, so a program could otherwise claim any identity the box maps */
static void fix_loginuid(void)
{
    int fd = open("/proc/self/loginuid", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return; /* a kernel without audit: no such identity to claim */
    char buf[16] = "";
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n > 0 && !strncmp(buf, "4294967295", 10)) {
        char uid[16];
        snprintf(uid, sizeof uid, "%u", program_uid);
        check(pwrite(fd, uid, strlen(uid), 0) < 0 ? fail_errno("loginuid") : 0);
    }
    close(fd);
}

/* collect whatever died; continue the spawner if the program stopped it (in the single mapping it shares the
 * spawner's uid and may SIGSTOP it: stopped, it would enforce no limit and end no run) */
static void reap(pid_t spawner)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG | WUNTRACED)) > 0)
        if (pid == spawner && WIFSTOPPED(status))
            kill(pid, SIGCONT);
}

static void reap_all(void)
{
    kill(-1, SIGKILL);
    while (wait(NULL) > 0 || errno == EINTR)
        ;
}

static void file_request(char *op, struct tokens *t, int fd)
{
    int out = -1, r;
    if (!strcmp(op, "reset")) {
        r = last_pid_fd < 0 ? fail("reset: a box with a union root cannot be reset") : reset();
    } else {
        char *path = token(t), *dir = token(t), *rel = token(t), *extra = token(t);
        if (!rel || (strcmp(op, "read") && !extra)) {
            r = fail("%s: a malformed request", op);
        } else if (!strcmp(op, "read")) {
            r = out = open_for_reading(path, dir, rel);
        } else if (!strcmp(op, "write") && fd >= 0) {
            r = write_from(path, dir, rel, fd, (mode_t)strtoul(extra, NULL, 8) & 07777);
        } else if (!strcmp(op, "symlink")) {
            r = make_symlink(path, dir, rel, extra);
        } else {
            r = fail("%s: an unknown request", op);
        }
    }
    if (r < 0)
        send_error();
    else
        send_msg(ctl, "{\"ok\":true}", out);
    if (out >= 0)
        close(out);
}

static void box_init(void) __attribute__((noreturn));
static void box_init(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    last_pid_fd = build_root();
    if (!writable[0]) {
        errno = EINVAL;
        check(fail("the box's plan makes no writable dirs"));
    }
    for (int i = 0; i < nwritable; i++) {
        writable_fd[i] = open(writable[i], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        check(writable_fd[i] < 0 ? fail_errno(writable[i]) : 0);
    }
    int union_root = 0;
    for (int i = 0; i < nsteps; i++)
        union_root |= steps[i].kind == KERNEL_UNION || steps[i].kind == FUSE_UNION;
    if (union_root) { /* a union root is replaced, never reset (its upper keeps the run's writes) */
        close(last_pid_fd);
        last_pid_fd = -1;
    } else {
        resetter_init();
    }
    fix_loginuid();
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    check(sfd < 0 ? fail_errno("signalfd") : 0);
    int sock;
    pid_t spawner = start_spawner(&sock);
    pids_after = spawner;
    send_msg(ctl, "{\"ready\":true}", sock);
    close(sock);
    static char buf[MAX_MSG];
    for (;;) {
        struct pollfd pfd[2] = {{ctl, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap(spawner);
        }
        if (!pfd[0].revents)
            continue;
        int fd;
        ssize_t n = recv_msg(buf, sizeof buf, &fd);
        if (n <= 0)
            _exit(0); /* supervisor gone: dying takes the whole pid namespace with us */
        struct tokens t = {buf, buf + n};
        char *op = token(&t);
        if (op && !strcmp(op, "respawn")) {
            kill(spawner, SIGKILL);
            reap_all();
            spawner = start_spawner(&sock);
            pids_after = spawner;
            send_msg(ctl, "{\"ok\":true}", sock);
            close(sock);
        } else if (op) {
            file_request(op, &t, fd);
        }
        if (fd >= 0)
            close(fd);
    }
}

/* the writable dirs a reset restores and file requests reach, as the plan makes them */
static void find_writable(void)
{
    static const char *const fixed[] = {"/tmp", "/dev/shm"};
    for (int i = 0; i < nsteps; i++)
        if (steps[i].kind == WRITABLE && *steps[i].s[0] && steps[i].flag2) {
            writable[0] = steps[i].s[0];
            writable[1] = fixed[0];
            writable[2] = fixed[1];
            nwritable = 3;
        } else if (steps[i].kind == WRITABLE) { /* a build step's box: the image's own dirs are no scratch */
            writable[0] = fixed[1];
            nwritable = 1;
        }
    for (int i = 0; i < nsteps && nwritable; i++)
        if (steps[i].kind == TMPFS && nwritable < MAX_DIRS)
            writable[nwritable++] = steps[i].s[0];
}

/* -- joining a running box (sbx exec) ---------------------------------------------------------------------------- */

/* one spawner, in the box this process entered: no plan, nothing of the box changed; it serves the supervisor's
 * runs and respawns until the supervisor goes, and its programs die with it.  The spawner is pid 1 of a pid
 * namespace of its own, nested in the box's: it ends a run with kill(-1), which must reach the run's processes
 * and none of the box's own (its program, its spawner).  Not the box's pid 1, this process signals nothing but
 * its own spawner. */
static void joined_init(void) __attribute__((noreturn));
static void joined_init(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* before the new pid namespace (its first child would be its pid 1), and while this process and so the helper
     * it forks are dumpable (else their /proc is not this process's to write) */
    for (int i = 0; i < nsteps; i++)
        if (steps[i].kind == NESTED_ROOT)
            program_userns = nested_root(&steps[i]);
        else if (steps[i].kind == PROC)
            joined_proc = &steps[i];
    fix_loginuid();
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (joined_proc) /* (a copy of the box's mounts: its spawner's /proc is no mount of the box's) */
        check(unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ?
              fail_errno("a mount namespace of its own") : 0);
    check(unshare(CLONE_NEWPID) < 0 ? fail_errno("unshare") : 0);
    int sock;
    pid_t spawner = start_spawner(&sock);
    send_msg(ctl, "{\"ready\":true}", sock);
    close(sock);
    static char buf[MAX_MSG];
    for (;;) {
        int fd;
        ssize_t n = recv_msg(buf, sizeof buf, &fd);
        if (n <= 0)
            _exit(0);
        if (fd >= 0)
            close(fd);
        struct tokens t = {buf, buf + n};
        char *op = token(&t);
        if (op && !strcmp(op, "respawn")) {
            kill(spawner, SIGKILL);
            waitpid(spawner, NULL, 0);
            spawner = start_spawner(&sock);
            send_msg(ctl, "{\"ok\":true}", sock);
            close(sock);
        } else {
            send_msg(ctl, "{\"error\":\"a process joined to a box serves no file requests\"}", -1);
        }
    }
}

/* enter the first `n` of these namespaces of the process `pid`, the user namespace first (it gives the rights over
 * the others); each is opened before any is entered, while this process still sees the host's /proc */
static const char *const NS_NAMES[] = {"user", "net", "mnt", "ipc", "uts", "cgroup", "pid_for_children"};
static const int NS_TYPES[] = {CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP,
                               CLONE_NEWPID};

static void enter(pid_t pid, int n, const char *what)
{
    int fds[7];
    for (int i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, NS_NAMES[i]);
        fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        check(fds[i] < 0 ? fail_errno(what) : 0);
    }
    for (int i = 0; i < n; i++) {
        check(setns(fds[i], NS_TYPES[i]) < 0 ? fail_errno(NS_NAMES[i]) : 0);
        close(fds[i]);
    }
}

/* the outer process's end: it waits for its child (box init, or a joined init) and ends as it did */
static void wait_and_exit(pid_t pid) __attribute__((noreturn));
static void wait_and_exit(pid_t pid)
{
    close(ctl);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            _exit(1);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

/* enter every namespace of the running box whose outer process is `target` (the caller's own: it owns the box's
 * user namespace), as nsenter does, then fork the joined init into its pid namespace */
static void join_box(pid_t target)
{
    enter(target, 7, "the box to join");
    check(chdir("/") < 0 ? fail_errno("/") : 0);
    pid_t pid = fork();
    check(pid < 0 ? fail_errno("cannot fork into the box") : 0);
    if (pid == 0)
        joined_init();
    wait_and_exit(pid);
}

/* -- outer -------------------------------------------------------------------------------------------------- */

/* the new user namespace's id map: the caller alone (single), or the range the supervisor has newuidmap write */
static void map_ids(void)
{
    if (!range_map) {
        char map[64];
        check(write_file("/proc/self/setgroups", "deny"));
        snprintf(map, sizeof map, "%u %u 1\n", outer_uid, outer_uid);
        check(write_file("/proc/self/uid_map", map));
        snprintf(map, sizeof map, "%u %u 1\n", outer_gid, outer_gid);
        check(write_file("/proc/self/gid_map", map));
        return;
    }
    char c = 0;
    if (write(5, "u", 1) != 1 || read(6, &c, 1) != 1 || c != 'g')
        _exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 8 && argc != 9)
        return 125;
    /* argv[8]: "exec:PID", the running box to enter (sbx exec); "net:PID", the network whose user and network
     * namespaces the new box shares (sbx run --network) */
    pid_t join = argc == 9 && !strncmp(argv[8], "exec:", 5) ? (pid_t)atol(argv[8] + 5) : 0;
    pid_t network = argc == 9 && !strncmp(argv[8], "net:", 4) ? (pid_t)atol(argv[8] + 4) : 0;
    if (argc == 9 && join <= 0 && network <= 0)
        return 125;
    int cgroup = atoi(argv[7]);
    syscall(SYS_close_range, cgroup ? 8U : 7U, ~0U, 0U); /* whatever the caller left inheritable */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != (pid_t)atol(argv[1]))
        _exit(1);
    for (int sig = 1; sig < NSIG; sig++) /* an ignored signal survives execve: a Python caller ignores SIGPIPE */
        signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    range_map = !strcmp(argv[2], "range");
    outer_uid = (unsigned)atol(argv[3]);
    outer_gid = (unsigned)atol(argv[4]);
    program_uid = (unsigned)atol(argv[5]);
    program_gid = (unsigned)atol(argv[6]);
    if (fcntl(ctl, F_SETFD, FD_CLOEXEC) < 0)
        return 125;
    spawner_bin = fcntl(4, F_DUPFD_CLOEXEC, SPAWNER_FD_MIN);
    close(4);
    static char plan[MAX_MSG];
    int fd;
    ssize_t n = recv_msg(plan, sizeof plan, &fd);
    if (n <= 0)
        _exit(1);
    if (fd >= 0)
        close(fd);
    struct tokens t = {plan, plan + n};
    if (join) /* a joining starter's plan is "join", then at most the program's own user namespace: it builds nothing */
        token(&t);
    parse_plan(&t);
    if (!join)
        find_writable();
    if (spawner_bin < 0)
        check(fail_errno("the spawner"));
    if (cgroup) {
        check(write(7, "0", 1) < 0 ? fail_errno("cannot join the box's cgroup") : 0);
        close(7);
    }
    if (join > 0) {
        close(5);
        close(6);
        join_box(join);
    }
    int namespaces = NAMESPACES;
    if (network > 0) { /* its namespaces, mapped already, instead of new ones */
        enter(network, 2, "the network"); /* its user and network namespaces: boxes on it share its loopback */
        namespaces &= ~CLONE_NEWNET;
    } else {
        check(unshare(CLONE_NEWUSER) < 0 ? fail_errno("unshare") : 0);
        map_ids();
    }
    close(5);
    close(6);
    check(unshare(namespaces) < 0 ? fail_errno("unshare") : 0);
    pid_t pid = fork();
    check(pid < 0 ? fail_errno("cannot fork box init") : 0);
    if (pid == 0)
        box_init();
    wait_and_exit(pid);
}
