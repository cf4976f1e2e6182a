/*
 * Lets a pyfuse3 daemon answer open and opendir with ENOSYS.
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
 * It works by wrapping fuse_session_new: loaded with RTLD_GLOBAL before
 * pyfuse3, this definition is the one pyfuse3 binds to.  The wrappers touch
 * nothing else.  `sbx_noopen_active` tells the daemon whether the
 * negotiation really went through here.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <fuse_lowlevel.h>
#include <string.h>

int sbx_noopen_active;

static struct fuse_lowlevel_ops orig, ops;

static void w_init(void *userdata, struct fuse_conn_info *conn)
{
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    sbx_noopen_active = 1;
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

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    typedef struct fuse_session *(*session_new)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                                size_t, void *);
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
    session_new real = lib == NULL ? NULL : (session_new)dlvsym(lib, "fuse_session_new", "FUSE_3.0");

    if (real == NULL)
        return NULL;
    if (op_size > sizeof(orig))  /* a newer pyfuse3 than these headers: serve it unwrapped */
        return real(args, op, op_size, userdata);
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
    return real(args, &ops, sizeof(ops), userdata);
}
