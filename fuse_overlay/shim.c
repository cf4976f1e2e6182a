/*
 * libfuse shim for sbx-overlayfs, loaded with RTLD_GLOBAL before pyfuse3 so
 * that pyfuse3's calls into libfuse's session functions come here first.
 * Two jobs:
 *
 * 1. Let the daemon answer open and opendir with ENOSYS.
 *
 * The kernel then serves every later open itself, with FOPEN_KEEP_CACHE for
 * files and FOPEN_CACHE_DIR for directories, so a warm tree costs the daemon
 * no request at all.  pyfuse3 (3.5) cannot do this on its own, for two
 * reasons this library fixes from inside the process:
 *
 *  - libfuse turns on FUSE_CAP_ATOMIC_O_TRUNC by default and pyfuse3 gives
 *    no way to turn it off.  With no open request the kernel would then drop
 *    O_TRUNC silently; without the flag it sends a setattr(size=0) instead.
 *  - pyfuse3 hands read, write, readdir, fsync, ... only the file handle, not
 *    the inode, and without open the handle is 0.  Here a handle of 0 is
 *    replaced by the inode number, so the daemon always gets the inode (it
 *    hands out the inode number as the handle of the files it creates too).
 *
 * While negotiating it also asks for FUSE_CAP_CACHE_SYMLINKS: a symlink's
 * target never changes (replacing it makes a new inode), so the kernel may
 * keep it like file data.
 *
 * This wraps fuse_session_new; `sbx_noopen_active` tells the daemon whether
 * the negotiation really went through here (and the kernel, 5.1 or later,
 * takes ENOSYS from open and opendir that way rather than as an error).
 *
 * 2. A fast path (below): fuse_session_receive_buf, which pyfuse3's trio
 * loop calls once /dev/fuse is readable, answers getattr and read of objects
 * that can no longer change (lower files and directories the daemon
 * registered) right there in C and reads on, and returns only the first
 * request that needs Python.  It also answers the last readdir of a listing:
 * the kernel reads a directory until a reply comes back empty, so every
 * directory listed costs one request past its end (13,000 of the 34,000
 * that reached Python on a walk of /usr/include and /usr/lib).  Once Python
 * has listed a directory to its end, it registers the last cookie, and a
 * readdir from there is answered empty here until the listing changes.
 * And it reads a lower file Python has not opened: Python registers the
 * path of every lower regular file with its attributes, and the shim opens
 * it on the first read (the 8,000 files of that walk were each a Python
 * request), keeping at most OWN_FDS such descriptors, the oldest closed.
 * Everything runs in the daemon's one thread, so the tables need no lock.
 * When no request is waiting it keeps reading for SPIN_NS before going back
 * to sleep: a walk over a tree sends the next request a few microseconds
 * after the reply, and on a virtual machine each sleep and wake-up of the
 * daemon costs 50-100 us (the second tar+find pass over /usr, 12,000 getattr
 * requests, took 2.2 s with the daemon sleeping between requests and 0.7 s
 * spinning).
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int sbx_noopen_active;

/* libfuse's own definitions of what is wrapped here */
static struct {
    struct fuse_session *(*session_new)(struct fuse_args *, const struct fuse_lowlevel_ops *, size_t, void *);
    int (*session_fd)(struct fuse_session *);
    int (*receive_buf)(struct fuse_session *, struct fuse_buf *);
    void (*exit)(struct fuse_session *);
} real;

static int find_real(void)
{
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);

    if (lib == NULL)
        return -1;
    real.session_new = dlvsym(lib, "fuse_session_new", "FUSE_3.0");
    real.session_fd = dlvsym(lib, "fuse_session_fd", "FUSE_3.0");
    real.receive_buf = dlvsym(lib, "fuse_session_receive_buf", "FUSE_3.0");
    real.exit = dlvsym(lib, "fuse_session_exit", "FUSE_3.0");
    return real.session_new && real.session_fd && real.receive_buf && real.exit ? 0 : -1;
}

static struct fuse_lowlevel_ops orig, ops;

static void w_init(void *userdata, struct fuse_conn_info *conn)
{
    const unsigned noopen = FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_NO_OPENDIR_SUPPORT;

    if ((conn->capable & noopen) == noopen) {  /* Linux 5.1 on */
        conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
        sbx_noopen_active = 1;
    }
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    orig.init(userdata, conn);
    if (conn->want & FUSE_CAP_ATOMIC_O_TRUNC)
        sbx_noopen_active = 0;
}

#define BY_INODE(fi, ino) \
    do { if ((fi) != NULL && (fi)->fh == 0) (fi)->fh = (ino); } while (0)

static void w_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.read(req, ino, size, off, fi);
}

static void w_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.write(req, ino, buf, size, off, fi);
}

static void w_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off,
                        struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.write_buf(req, ino, bufv, off, fi);
}

static void w_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.fsync(req, ino, datasync, fi);
}

static void w_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.readdir(req, ino, size, off, fi);
}

static void w_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.readdirplus(req, ino, size, off, fi);
}

static void w_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.fsyncdir(req, ino, datasync, fi);
}

static void w_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    BY_INODE(fi, ino);
    orig.setattr(req, ino, attr, to_set, fi);
}

#define WRAP(name) if (orig.name != NULL) ops.name = w_##name

static int wrapped;

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    if (real.session_new == NULL && find_real() != 0)
        return NULL;
    if (op_size > sizeof(orig))  /* a newer pyfuse3 than these headers: serve it unwrapped */
        return real.session_new(args, op, op_size, userdata);
    memset(&orig, 0, sizeof(orig));
    memcpy(&orig, op, op_size);
    ops = orig;
    WRAP(init);
    WRAP(read);
    WRAP(write);
    WRAP(write_buf);
    WRAP(fsync);
    WRAP(readdir);
    WRAP(readdirplus);
    WRAP(fsyncdir);
    WRAP(setattr);
    wrapped = 1;
    return real.session_new(args, &ops, sizeof(ops), userdata);
}

/* ---- 2. the fast path ------------------------------------------------------- */

/* What the daemon registered for an inode: attributes that will not change,
 * and a read-only descriptor of content that will not change. */
struct known {
    struct fuse_attr attr;
    uint64_t attr_valid;
    int has_attr;
    int fd;
    int own_fd;       /* the shim opened `fd` from `path` (else Python's) */
    char *path;       /* a lower regular file's, to open on its first read; NULL: Python opens it */
    uint64_t listed;  /* a directory's last cookie, once Python listed it to the end; 0: ask Python */
};

static struct known **table;  /* by inode number: the daemon numbers from 1 up */
static uint64_t table_size;
unsigned long sbx_fast_answered;  /* requests answered here, without Python */
unsigned long sbx_fast_listing_ends;  /* of which readdirs past a listing's end */
unsigned long sbx_fast_opened;  /* lower files the shim opened for a read */

static struct known *known(uint64_t ino, int create)
{
    if (ino >= table_size) {
        uint64_t size = table_size ? table_size : 1024;
        struct known **grown;

        if (!create)
            return NULL;
        while (size <= ino)
            size *= 2;
        grown = realloc(table, size * sizeof(*table));
        if (grown == NULL)
            return NULL;
        memset(grown + table_size, 0, (size - table_size) * sizeof(*table));
        table = grown;
        table_size = size;
    }
    if (table[ino] == NULL && create) {
        table[ino] = calloc(1, sizeof(struct known));
        if (table[ino] != NULL)
            table[ino]->fd = -1;
    }
    return table[ino];
}

/* The descriptors the shim opened, oldest first out: a ring of inodes. */
#define OWN_FDS 256
static uint64_t own_ring[OWN_FDS];
static unsigned own_next;

static void drop_own_fd(struct known *k)
{
    if (k->own_fd && k->fd >= 0)
        close(k->fd);
    k->fd = -1;
    k->own_fd = 0;
}

/* One object's attributes, as Python packs them (libfuse.py's _ATTR, struct "=QQQQqqqIIIIIIiI"): a whole
 * listing's in one call, where a call per entry cost Python more than its lstat. */
struct sbx_attr_rec {
    uint64_t ino, size, blocks, valid;
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint32_t mode, nlink, uid, gid, rdev, blksize;
    int32_t path;  /* offset in `paths` of a lower regular file's path, opened on the first read Python has not
                      answered; -1: none */
    uint32_t unused;
};
_Static_assert(sizeof(struct sbx_attr_rec) == 88, "the record Python packs");

void sbx_fast_attrs(const struct sbx_attr_rec *recs, size_t n, const char *paths)
{
    for (const struct sbx_attr_rec *r = recs; r < recs + n; r++) {
        struct known *k = known(r->ino, 1);

        if (k == NULL)
            continue;
        if (r->path >= 0 && k->path == NULL)
            k->path = strdup(paths + r->path);  /* (none, out of memory: Python opens it) */
        memset(&k->attr, 0, sizeof(k->attr));
        k->attr.ino = r->ino;
        k->attr.mode = r->mode;
        k->attr.nlink = r->nlink;
        k->attr.uid = r->uid;
        k->attr.gid = r->gid;
        k->attr.rdev = r->rdev;
        k->attr.size = r->size;
        k->attr.blocks = r->blocks;
        k->attr.blksize = r->blksize;
        k->attr.atime = r->atime_ns / 1000000000;
        k->attr.atimensec = r->atime_ns % 1000000000;
        k->attr.mtime = r->mtime_ns / 1000000000;
        k->attr.mtimensec = r->mtime_ns % 1000000000;
        k->attr.ctime = r->ctime_ns / 1000000000;
        k->attr.ctimensec = r->ctime_ns % 1000000000;
        k->attr_valid = r->valid;
        k->has_attr = 1;
    }
}

/* Python's descriptor; FD < 0 withdraws it */
void sbx_fast_file(uint64_t ino, int fd)
{
    struct known *k = known(ino, fd >= 0);

    if (k != NULL) {
        drop_own_fd(k);
        k->fd = fd;
    }
}

/* A descriptor of K's path for a read, opened here; -1 leaves the read to Python. */
static int own_fd(uint64_t ino, struct known *k)
{
    if (k->fd >= 0)
        return k->fd;
    if (k->path == NULL)
        return -1;
    int fd = open(k->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd < 0)
        return -1;  /* Python says why */
    struct known *old = known(own_ring[own_next], 0);
    if (old != NULL && old->own_fd)
        drop_own_fd(old);
    own_ring[own_next] = ino;
    own_next = (own_next + 1) % OWN_FDS;
    k->fd = fd;
    k->own_fd = 1;
    sbx_fast_opened++;
    return fd;
}

/* COOKIE 0 withdraws it: the listing changed */
void sbx_fast_listed(uint64_t ino, uint64_t cookie)
{
    struct known *k = known(ino, cookie != 0);

    if (k != NULL)
        k->listed = cookie;
}

void sbx_fast_forget(uint64_t ino)
{
    if (ino < table_size && table[ino] != NULL) {
        drop_own_fd(table[ino]);
        free(table[ino]->path);
        free(table[ino]);
        table[ino] = NULL;
    }
}

#define SPIN_NS 200000

static size_t buf_size;  /* any request (libfuse's own buffer: 256 pages and a header) and any read reply */
static char *reply_buf;
static int spin;  /* only with another CPU for the client to run on meanwhile */

static int64_t now_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Answers the request in IN from the tables; returns 0 to leave it to Python. */
static int answer(int fd, const struct fuse_in_header *in)
{
    struct fuse_out_header *out = (struct fuse_out_header *)reply_buf;
    struct known *k = known(in->nodeid, 0);

    if (k == NULL)
        return 0;
    out->unique = in->unique;
    out->error = 0;
    if (in->opcode == FUSE_GETATTR && k->has_attr) {
        struct fuse_attr_out *ao = (struct fuse_attr_out *)(out + 1);

        memset(ao, 0, sizeof(*ao));
        ao->attr_valid = k->attr_valid;
        ao->attr = k->attr;
        out->len = sizeof(*out) + sizeof(*ao);
    } else if ((in->opcode == FUSE_READDIRPLUS || in->opcode == FUSE_READDIR) && k->listed &&
               ((const struct fuse_read_in *)(in + 1))->offset >= k->listed) {
        out->len = sizeof(*out);  /* nothing after the last entry */
        sbx_fast_listing_ends++;
    } else if (in->opcode == FUSE_READ && own_fd(in->nodeid, k) >= 0) {
        const struct fuse_read_in *ri = (const struct fuse_read_in *)(in + 1);
        size_t size = ri->size < buf_size - sizeof(*out) ? ri->size : buf_size - sizeof(*out);
        ssize_t got = pread(k->fd, out + 1, size, ri->offset);

        if (got < 0)
            out->error = -errno;
        out->len = sizeof(*out) + (got < 0 ? 0 : got);
    } else {
        return 0;
    }
    /* a write error means the request was interrupted meanwhile: nothing to do */
    if (write(fd, out, out->len) >= 0)
        sbx_fast_answered++;
    return 1;
}

int fuse_session_receive_buf(struct fuse_session *se, struct fuse_buf *buf)
{
    int fd;

    if (real.receive_buf == NULL && find_real() != 0)
        return -ENOSYS;
    if (!wrapped)
        return real.receive_buf(se, buf);
    fd = real.session_fd(se);
    if (reply_buf == NULL) {
        buf_size = 258 * (size_t)getpagesize();
        /* nonblocking, so that the loop below ends when nothing is left for now */
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 || (reply_buf = malloc(buf_size)) == NULL)
            return -errno;
        spin = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    }
    if (buf->mem == NULL && (buf->mem = malloc(buf_size)) == NULL)
        return -ENOMEM;
    int64_t last = now_ns();
    for (;;) {
        ssize_t n = read(fd, buf->mem, buf_size);

        if (n < 0) {
            if (errno == EAGAIN) {
                if (spin && now_ns() - last < SPIN_NS) {
                    sched_yield();
                    continue;
                }
                return -EINTR;  /* pyfuse3 waits for the descriptor again */
            }
            if (errno == EINTR || errno == ENOENT)
                continue;
            if (errno == ENODEV) {  /* unmounted */
                real.exit(se);
                return 0;
            }
            return -errno;
        }
        last = now_ns();
        if (n < (ssize_t)sizeof(struct fuse_in_header) || !answer(fd, buf->mem)) {
            buf->size = n;
            buf->flags = 0;
            return n;
        }
    }
}
