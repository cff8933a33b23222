/*
 * The supervisor's receiving thread: seccomp notifications received outside
 * Python's GIL, the repeated alarm() of a noted process answered here.
 *
 * Why: Postfix calls alarm() some 23 times per message it accepts (its
 * watchdog, re-armed at every turn of its event loop). Each call of a pod
 * process is a seccomp notification (pods/seccomp.py: interval timers are
 * noted so that they never cross a pea transition), and a noted process's
 * later calls need no decision at all (pods/supervisor.py, "_armed_already").
 * Answered in Python, each of them waited for the GIL that PeaFS's thread
 * holds between requests: in `bench apps_mail` the daemon made ~490 futex
 * calls per message, and letting alarm() through unmediated (a measurement,
 * never a mode) made the pod accept 35-50% more mail. One filter chain can
 * have one listener only (the kernel answers EBUSY to a second), so the
 * alarm calls cannot go to a listener of their own: this thread receives
 * every notification of every listener, answers the one case that needs no
 * decision, and hands all others unchanged to Python through a pipe.
 *
 * What is answered here, and why it is the supervisor's own rule: alarm or
 * setitimer (x86_64) from a thread whose id is a key of the armed table,
 * whose pidfd (a duplicate of the supervisor's note) does not poll readable
 * (the process has not exited; the pidfd pins it, so while it lives no
 * other thread can carry its tgid as a tid: the caller *is* the noted
 * process's main thread), and whose notification is still valid right
 * before the answer (NOTIF_ID_VALID). Then CONTINUE: the call runs as made.
 * Any doubt (no entry, a dead note, another thread, a full table, an error)
 * passes the notification to Python, which decides it in full.
 *
 * Descriptor lifetimes: a listener is received from only while it is
 * registered, under the lock; relay_remove() takes the lock, so once it
 * returns this thread never touches that descriptor again and the caller
 * may close it. Records already in the pipe carry the registration's serial
 * number, and Python drops records of a serial it no longer serves. The
 * pipe is written without the lock held (a full pipe must not block
 * relay_remove, which Python calls from the thread that drains the pipe).
 * Python holds at most WINDOW notifications at a time (relay_done).
 *
 * Stopping: Python closes the pipe's read end first, so that a thread
 * blocked on a full pipe gets EPIPE and returns to see the stop event.
 *
 * Build: `make deps` (cc -shared). Loaded by pods/notifrelay.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_LISTENERS 4096         /* filter chains of one pod: services and execs */
#define ARMED_SLOTS 8192            /* power of two; at most ARMED_MAX used */
#define ARMED_MAX 4096              /* the supervisor's ARM_LIMIT */
#define EMPTY 0
#define TOMB -1

/* One record to Python: which listener (fd and registration serial), what
 * happened, and the notification as the kernel gave it. */
enum { REC_NOTIF = 1, REC_HUP = 2, REC_ERROR = 3 };
struct record {
    int32_t fd;
    uint32_t serial;
    int32_t kind;
    int32_t error;                  /* REC_ERROR: the errno of NOTIF_RECV */
    struct seccomp_notif notif;
};

struct listener {
    int fd;
    uint32_t serial;
};

/* How many notifications Python may hold at once (received from the
 * kernel, not yet decided). A received notification's caller waits
 * killably only (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV): SIGSTOP no longer
 * stops it. Receiving ahead of Python would make every caller with a
 * pending call unstoppable until Python reached it; under a storm of
 * kill() calls, `pod checkpoint`'s hold could then not stop the pod
 * (tests/pods/test_podhold.py, the forking SIGCONT attackers: it failed so
 * with an unbounded relay). With one, the relay takes the next call only
 * when Python has decided the last, as the supervisor did before it. */
#define WINDOW 1

struct relay {
    pthread_mutex_t lock;
    pthread_cond_t room;            /* signalled when outstanding drops, or at stop */
    int outstanding;                /* notifications passed, not yet done */
    int stopping;
    pthread_t thread;
    int epfd;
    int out;                        /* write end of the pipe to Python */
    int stop;                       /* eventfd: relay_stop() */
    uint32_t next_serial;
    struct listener listeners[MAX_LISTENERS];   /* registered ones; a few dozen at most */
    int nlisteners;
    int32_t keys[ARMED_SLOTS];      /* tgid, EMPTY or TOMB */
    int32_t pidfds[ARMED_SLOTS];
    int armed;
    uint64_t fast;                  /* alarm calls continued here */
    uint64_t passed;                /* notifications handed to Python */
};

/* ---------------------------------------------------------------- armed */
static unsigned slot_of(int32_t tgid) {
    return ((uint32_t)tgid * 2654435761u) & (ARMED_SLOTS - 1);
}

/* Index of tgid's slot, or -1. Lock held. */
static int armed_find(struct relay *r, int32_t tgid) {
    unsigned i = slot_of(tgid);
    for (unsigned n = 0; n < ARMED_SLOTS; n++, i = (i + 1) & (ARMED_SLOTS - 1)) {
        if (r->keys[i] == EMPTY)
            return -1;
        if (r->keys[i] == tgid)
            return (int)i;
    }
    return -1;
}

static int exited(int pidfd) {
    /* A pidfd polls readable once its process has exited (as
     * peafs.execwatch.process_exited reads it). */
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    return poll(&p, 1, 0) != 0;
}

/* Note tgid, pinned by a duplicate of pidfd. 0, or -errno (ENOSPC: full;
 * the supervisor still decides that process's calls itself). */
int relay_arm(struct relay *r, int tgid, int pidfd) {
    if (tgid <= 0)
        return -EINVAL;
    int own = fcntl(pidfd, F_DUPFD_CLOEXEC, 3);
    if (own < 0)
        return -errno;
    pthread_mutex_lock(&r->lock);
    int i = armed_find(r, tgid);
    if (i >= 0) {                   /* a new note replaces a dead one */
        close(r->pidfds[i]);
        r->pidfds[i] = own;
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    if (r->armed >= ARMED_MAX) {
        pthread_mutex_unlock(&r->lock);
        close(own);
        return -ENOSPC;
    }
    unsigned s = slot_of(tgid);
    while (r->keys[s] != EMPTY && r->keys[s] != TOMB)
        s = (s + 1) & (ARMED_SLOTS - 1);
    r->keys[s] = tgid;
    r->pidfds[s] = own;
    r->armed++;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

void relay_disarm(struct relay *r, int tgid) {
    pthread_mutex_lock(&r->lock);
    int i = armed_find(r, tgid);
    if (i >= 0) {
        close(r->pidfds[i]);
        r->keys[i] = TOMB;
        r->pidfds[i] = -1;
        r->armed--;
    }
    pthread_mutex_unlock(&r->lock);
}

/* The fast path's whole condition on the caller (lock held). Exported for
 * the tests, which must see the same code the thread runs. */
static int continues_locked(struct relay *r, int tid) {
    int i = armed_find(r, tid);
    return i >= 0 && !exited(r->pidfds[i]);
}

int relay_would_continue(struct relay *r, int tid) {
    pthread_mutex_lock(&r->lock);
    int yes = continues_locked(r, tid);
    pthread_mutex_unlock(&r->lock);
    return yes;
}

/* ------------------------------------------------------------ listeners */
/* The serial fd is registered under, or 0. Lock held. */
static uint32_t serial_of(struct relay *r, int fd) {
    for (int i = 0; i < r->nlisteners; i++)
        if (r->listeners[i].fd == fd)
            return r->listeners[i].serial;
    return 0;
}

/* Serve listener fd from now on; returns its registration serial (> 0), or
 * -errno. */
long relay_add(struct relay *r, int fd) {
    if (fd < 0)
        return -EBADF;
    pthread_mutex_lock(&r->lock);
    if (r->nlisteners >= MAX_LISTENERS || serial_of(r, fd)) {
        pthread_mutex_unlock(&r->lock);
        return r->nlisteners >= MAX_LISTENERS ? -EMFILE : -EEXIST;
    }
    uint32_t serial = ++r->next_serial ? r->next_serial : ++r->next_serial;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)serial << 32) | (uint32_t)fd};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        pthread_mutex_unlock(&r->lock);
        return -e;
    }
    r->listeners[r->nlisteners++] = (struct listener){.fd = fd, .serial = serial};
    pthread_mutex_unlock(&r->lock);
    return serial;
}

static void unregister_locked(struct relay *r, int fd) {
    for (int i = 0; i < r->nlisteners; i++) {
        if (r->listeners[i].fd == fd) {
            epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
            r->listeners[i] = r->listeners[--r->nlisteners];
            return;
        }
    }
}

/* Stop serving fd; when this returns, the thread no longer uses it. */
void relay_remove(struct relay *r, int fd) {
    pthread_mutex_lock(&r->lock);
    unregister_locked(r, fd);
    pthread_mutex_unlock(&r->lock);
}

static void put(struct relay *r, const struct record *rec) {
    const char *p = (const char *)rec;
    size_t left = sizeof *rec;      /* < PIPE_BUF: written whole, never interleaved */
    while (left) {
        ssize_t n = write(r->out, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;                 /* Python's end is gone: the supervisor is closing */
        }
        p += n;
        left -= (size_t)n;
    }
}

/* Receive what fd has pending (bounded), answer or pass each. */
static void drain(struct relay *r, int fd, uint32_t serial, uint32_t events) {
    for (int turn = 0; turn < 64; turn++) {
        struct record rec;
        memset(&rec, 0, sizeof rec);
        rec.fd = fd;
        rec.serial = serial;
        pthread_mutex_lock(&r->lock);
        if (serial_of(r, fd) != serial || r->outstanding >= WINDOW) {
            /* removed meanwhile, or Python's hands are full: epoll
             * reports the listener again once serve() may receive. */
            pthread_mutex_unlock(&r->lock);
            return;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN)) {
            if (turn == 0 && (events & (EPOLLHUP | EPOLLERR))) {
                /* No process uses this filter any more. */
                unregister_locked(r, fd);
                pthread_mutex_unlock(&r->lock);
                rec.kind = REC_HUP;
                put(r, &rec);
            } else {
                pthread_mutex_unlock(&r->lock);
            }
            return;
        }
        /* The kernel checks that the buffer is zeroed. */
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &rec.notif) < 0) {
            int e = errno;
            if (e == ENOENT || e == EINTR) {
                pthread_mutex_unlock(&r->lock);
                continue;           /* the caller went away meanwhile */
            }
            /* Python logs it and closes the listener (its calls then fail). */
            unregister_locked(r, fd);
            pthread_mutex_unlock(&r->lock);
            rec.kind = REC_ERROR;
            rec.error = e;
            put(r, &rec);
            return;
        }
        const struct seccomp_data *d = &rec.notif.data;
        if ((d->nr == __NR_alarm || d->nr == __NR_setitimer) && d->arch == AUDIT_ARCH_X86_64 &&
            continues_locked(r, (int)rec.notif.pid)) {
            __u64 id = rec.notif.id;
            struct seccomp_notif_resp resp = {.id = id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
            if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0)
                ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
            /* ENOENT from either: the caller is gone, nothing to answer. */
            r->fast++;
            pthread_mutex_unlock(&r->lock);
            continue;
        }
        r->passed++;
        r->outstanding++;
        pthread_mutex_unlock(&r->lock);
        rec.kind = REC_NOTIF;
        put(r, &rec);
    }
}

static void *serve(void *arg) {
    struct relay *r = arg;
    struct epoll_event evs[32];
    for (;;) {
        pthread_mutex_lock(&r->lock);
        while (r->outstanding >= WINDOW && !r->stopping)
            pthread_cond_wait(&r->room, &r->lock);
        int stopping = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stopping)
            return NULL;
        int n = epoll_wait(r->epfd, evs, 32, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 0)
                return NULL;        /* the stop eventfd */
            int fd = (int)(uint32_t)evs[i].data.u64;
            drain(r, fd, (uint32_t)(evs[i].data.u64 >> 32), evs[i].events);
        }
    }
}

/* ---------------------------------------------------------------- life */
/* A relay writing its records to out (the caller keeps out open until
 * relay_stop returns). NULL and errno on failure. */
struct relay *relay_new(int out) {
    struct relay *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->room, NULL);
    r->out = out;
    r->epfd = r->stop = -1;
    for (int i = 0; i < ARMED_SLOTS; i++)
        r->pidfds[i] = -1;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->stop = eventfd(0, EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (r->epfd < 0 || r->stop < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->stop, &ev) < 0)
        goto fail;
    /* Signals stay with Python's main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&r->thread, NULL, serve, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        errno = e;
        goto fail;
    }
    return r;
fail:;
    int saved = errno;
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->stop >= 0)
        close(r->stop);
    free(r);
    errno = saved;
    return NULL;
}

/* Stop the thread and free everything but the listeners (their owner
 * closes them). */
void relay_stop(struct relay *r) {
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_signal(&r->room);
    pthread_mutex_unlock(&r->lock);
    uint64_t one = 1;
    if (write(r->stop, &one, sizeof one) < 0) {
        /* an eventfd write of 1 cannot fail short of a counter overflow */
    }
    pthread_join(r->thread, NULL);
    for (int i = 0; i < ARMED_SLOTS; i++)
        if (r->keys[i] != EMPTY && r->keys[i] != TOMB)
            close(r->pidfds[i]);
    close(r->epfd);
    close(r->stop);
    pthread_cond_destroy(&r->room);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Python has decided a notification it was passed: room for the next. */
void relay_done(struct relay *r) {
    pthread_mutex_lock(&r->lock);
    if (r->outstanding > 0)
        r->outstanding--;
    pthread_cond_signal(&r->room);
    pthread_mutex_unlock(&r->lock);
}

void relay_counts(struct relay *r, uint64_t *fast, uint64_t *passed) {
    pthread_mutex_lock(&r->lock);
    *fast = r->fast;
    *passed = r->passed;
    pthread_mutex_unlock(&r->lock);
}

unsigned relay_record_size(void) {
    return sizeof(struct record);
}
