/*
 * Ask the kernel to cache what pyfuse3 3.5 gives PeaFS no way to ask for:
 * symlink bodies (FUSE_CAP_CACHE_SYMLINKS, below) and directory listings
 * (cache_readdir and keep_cache on every opendir reply: see
 * opendir_with_cache). And answer requests that need no Python at all:
 * GETXATTR of security.capability (getxattr_caps_here) and FSYNC, in C
 * threads (fuse_fsync.c).
 *
 * Symlink bodies.
 *
 * Why: without it the kernel sends FUSE_READLINK every time a path walk
 * crosses a symlink. A usr-merged pod root has /lib -> usr/lib, so one exec
 * of a dynamic program made 22 readlinks of /lib (the loader's library
 * search) and 3 more of /bin, /lib64 and the loader's own link: 25 round
 * trips to the daemon out of ~30 per exec (strace of the daemon, 200 execs
 * of /bin/true).
 *
 * Why it is safe: PeaFS answers readlink the same for every caller (the
 * only check is that the caller is in a pea of the pod at all); a symlink's
 * body never changes (a new body is a new inode); and PeaFS never gives a
 * node id to a second object (peafs/inodes.py: node ids only grow, a reused
 * inode number with another file handle gets a new node). So a cached body
 * is what the daemon would answer, to any pod process.
 *
 * How: this library is loaded with RTLD_GLOBAL before pyfuse3 calls
 * fuse_session_new (peafs/fusecaps.py), so the dynamic linker binds
 * pyfuse3's call to the fuse_session_new below. It wraps the init (and opendir) operation
 * of the table pyfuse3 passes, then calls libfuse's own. After pyfuse3's
 * init has set its flags, the wrapper adds FUSE_CAP_CACHE_SYMLINKS when the
 * kernel offers it. Each session made through the wrapper is counted
 * (peapod_sessions_wrapped, read by peafs/fusecaps.py to check that the
 * wrapper was used).
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 34
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <fuse_lowlevel.h>

#include "fuse_fsync.h"

/* How many sessions were made through the wrapper (fusecaps.check_wrapped). */
int peapod_sessions_wrapped = 0;

static struct fuse_lowlevel_ops wrapped_ops;
static struct fuse_session *wrapped_session;
static void (*pyfuse3_init)(void *userdata, struct fuse_conn_info *conn);
static void (*pyfuse3_opendir)(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

static void init_with_symlink_cache(void *userdata, struct fuse_conn_info *conn)
{
    if (pyfuse3_init)
        pyfuse3_init(userdata, conn);
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
}

/* The directory listings. pyfuse3 copies the fuse_file_info it is given
 * into the request it hands to Python and replies with that copy, so flags
 * set here, before its opendir runs, reach the kernel with the reply:
 * cache_readdir (FOPEN_CACHE_DIR: the kernel keeps the entries READDIR
 * returned and serves the next listings itself) and keep_cache (the kept
 * entries survive the next opendir). OPENDIR itself still reaches PeaFS
 * every time, so the pea check and the barrier hold for each listing; only
 * the list of names, the same for every caller, is kept. The kernel drops
 * it when the directory changes through the mount and, with
 * FUSE_CAP_AUTO_INVAL_DATA (libfuse's default), when the directory's mtime
 * changes under it. */
static void opendir_with_cache(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    pyfuse3_opendir(req, ino, fi);
}

/* GETXATTR of security.capability. The kernel asks it before every write to
 * a file of a FUSE mount (file_remove_privs: FUSE never marks an inode
 * S_NOSEC, so each write asks again): about 7 of the ~64 requests per
 * message Postfix accepts, most of them for its log. PeaFS's answer is
 * always ENODATA, without a check or a syscall (fs.py, getxattr: file
 * capabilities never apply on a nosuid mount and a pod cannot set them), so
 * it is given here, in libfuse's dispatch, without creating a Python task
 * for it. Every other name goes to PeaFS. */
static void (*pyfuse3_getxattr)(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);

static void getxattr_caps_here(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    if (strcmp(name, "security.capability") == 0) {
        fuse_reply_err(req, ENODATA);
        return;
    }
    pyfuse3_getxattr(req, ino, name, size);
}

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
                                               const struct fuse_lowlevel_ops *,
                                               size_t, void *);

struct fuse_session *fuse_session_new(struct fuse_args *args,
                                      const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    session_new_fn libfuse_session_new =
        (session_new_fn)dlvsym(RTLD_NEXT, "fuse_session_new", "FUSE_3.0");
    if (!libfuse_session_new)
        return NULL;     /* libfuse's own is missing: pyfuse3 reports the failure */
    size_t n = op_size < sizeof wrapped_ops ? op_size : sizeof wrapped_ops;
    memset(&wrapped_ops, 0, sizeof wrapped_ops);
    memcpy(&wrapped_ops, op, n);
    pyfuse3_init = wrapped_ops.init;
    wrapped_ops.init = init_with_symlink_cache;
    pyfuse3_opendir = wrapped_ops.opendir;
    if (pyfuse3_opendir)
        wrapped_ops.opendir = opendir_with_cache;
    pyfuse3_getxattr = wrapped_ops.getxattr;
    if (pyfuse3_getxattr)
        wrapped_ops.getxattr = getxattr_caps_here;
    if (wrapped_ops.fsync)
        wrapped_ops.fsync = peapod_fsync;
    peapod_sessions_wrapped++;
    wrapped_session = libfuse_session_new(args, &wrapped_ops, n, userdata);
    return wrapped_session;
}

/* The session ends: first every fsync in progress answers (its thread
 * writes to the session's descriptor), then libfuse frees the session. */
void fuse_session_destroy(struct fuse_session *se)
{
    void (*libfuse_session_destroy)(struct fuse_session *) =
        (void (*)(struct fuse_session *))dlvsym(RTLD_NEXT, "fuse_session_destroy", "FUSE_3.0");
    peapod_fsync_drain();
    if (se == wrapped_session)
        wrapped_session = NULL;
    if (libfuse_session_destroy)
        libfuse_session_destroy(se);
}

/* For peafs/readloop.py, which waits for requests in pyfuse3's stead: the
 * session's descriptor and whether it was told to exit (pyfuse3 keeps both
 * to itself). -1 before a session exists. */
int peapod_session_fd(void)
{
    return wrapped_session ? fuse_session_fd(wrapped_session) : -1;
}

int peapod_session_exited(void)
{
    return wrapped_session ? fuse_session_exited(wrapped_session) : 1;
}
