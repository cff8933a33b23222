/*
 * FSYNC answered by C threads, without Python (part of fuse_caches.so).
 *
 * Why: PeaFS's fsync was a Python handler that awaited os.fsync in one of
 * trio's worker threads. The worker needs the GIL to start the call and
 * again to hand the result back, and the GIL is held by the thread that
 * serves every other FUSE request of the pod. Measured on the mail pod
 * (perf's fuse and syscall tracepoints, 660 FSYNCs while Postfix accepts
 * 500 messages): the fsync itself took 0.97 ms on average, the caller
 * waited 3.07 ms; 0.96 ms went before the worker's call and 1.13 ms after
 * it. Postfix's cleanup fsyncs every queue file before smtpd answers the
 * client, so that wait was on the path of every accepted message.
 *
 * Why it is safe: PeaFS's fsync makes no check and keeps no state. The
 * caller's rights were judged when the file was opened (its handle is the
 * descriptor PeaFS opened then: fs.py, open and create), and an fsync only
 * writes what the file already holds. The call is made on a duplicate of
 * that descriptor, taken here in libfuse's dispatch, before any later
 * request is read: a RELEASE that closes the handle meanwhile (the caller
 * killed during its fsync) cannot make the thread act on whatever file
 * reuses the number. The answer is the call's own errno, as before.
 *
 * Threads: one per fsync in progress, up to MAX_WORKERS, kept once made (an
 * fsync can wait on a slow disk or another file system: one pea's fsync
 * must not make another pea's wait, tests/peafs/test_blocking_io.py). Past
 * MAX_WORKERS calls queue in arrival order. They block every signal
 * (signals are Python's main thread's) and are named "peafs-fsync". fuse_session_destroy waits until
 * no call is in progress, so no answer is written to a freed session.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <fuse_lowlevel.h>

#include "fuse_fsync.h"

#define MAX_WORKERS 32

struct job {
    fuse_req_t req;
    int fd;              /* our duplicate of the open file's descriptor */
    int datasync;
    struct job *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;   /* a job was queued */
static pthread_cond_t drained = PTHREAD_COND_INITIALIZER;  /* none in progress */
static struct job *head, *tail;
static int workers, idle, queued, in_progress;

static void *worker(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head) {
            idle++;
            pthread_cond_wait(&work, &lock);
            idle--;
        }
        struct job *j = head;
        head = j->next;
        if (!head)
            tail = NULL;
        queued--;
        pthread_mutex_unlock(&lock);

        int err = (j->datasync ? fdatasync(j->fd) : fsync(j->fd)) < 0 ? errno : 0;
        close(j->fd);
        fuse_reply_err(j->req, err);
        free(j);

        pthread_mutex_lock(&lock);
        if (--in_progress == 0)
            pthread_cond_broadcast(&drained);
    }
    return NULL;
}

/* With the lock held: one more thread unless an idle one is left over for
 * this job (a woken thread stays counted idle until it runs, and each
 * queued job has one coming). False only if there is no thread at all. */
static int enough_workers(void)
{
    if (idle > queued || workers >= MAX_WORKERS)
        return 1;
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&t, &attr, worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e == 0) {
        pthread_setname_np(t, "peafs-fsync");  /* what tests and ps see */
        workers++;
    }
    return workers > 0;
}

void peapod_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    int fd = fcntl((int)fi->fh, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        fuse_reply_err(req, errno);
        return;
    }
    struct job *j = malloc(sizeof *j);
    if (!j) {
        close(fd);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    *j = (struct job){.req = req, .fd = fd, .datasync = datasync, .next = NULL};
    pthread_mutex_lock(&lock);
    if (!enough_workers()) {
        pthread_mutex_unlock(&lock);
        close(fd);
        free(j);
        fuse_reply_err(req, EAGAIN);  /* no thread could be made: the caller may retry */
        return;
    }
    in_progress++;
    queued++;
    if (tail)
        tail->next = j;
    else
        head = j;
    tail = j;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);
}

void peapod_fsync_drain(void)
{
    pthread_mutex_lock(&lock);
    while (in_progress > 0)
        pthread_cond_wait(&drained, &lock);
    pthread_mutex_unlock(&lock);
}
