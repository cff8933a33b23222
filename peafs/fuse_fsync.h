/* FSYNC answered by C threads (fuse_fsync.c), for fuse_caches.c. */
#ifndef PEAPOD_FUSE_FSYNC_H
#define PEAPOD_FUSE_FSYNC_H

/* The fsync operation: fsync or fdatasync of the open file's descriptor in a
 * thread of our own; the thread answers the request. */
void peapod_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);

/* Return when no fsync is in progress (before the session is freed). */
void peapod_fsync_drain(void);

#endif
