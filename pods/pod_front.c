/*
 * The `pod` command's front: `pod exec` without starting Python; every other
 * use of `pod` runs the Python command (pods/cli.py) with the same words.
 *
 * Why C: on this machine a Python start-up alone takes 11 ms (`python -I -S
 * -c pass`), 2.5 times a whole `bwrap --unshare-all true` (4.4 ms), and
 * issue #15 asks for `pod exec NAME true` within 5 times of bwrap. The
 * daemon's side of an exec takes 8-9 ms, so only a client that does not
 * start Python can get there.
 *
 * The front takes the fast path only for the plain case, and hands
 * everything else, unchanged, to the Python command *before it has sent
 * anything*, so that every usage error, --help and "not running" message
 * stays the Python command's (pods/cli.py, pods/exec_cmd.py,
 * pods/cliout.py):
 *   - the words are `exec [--pea P] [--user DIGITS] NAME [--pea P]
 *     [--user DIGITS] [--] CMD [ARG...]` (pods/exec_cmd.split_exec_argv's
 *     grammar); a user given by name needs the pod's /etc/passwd, and any
 *     other option is the parser's to refuse;
 *   - NAME matches kernel/names.py's NAME_RE, so it can only name a
 *     directory under RUN/pods;
 *   - stdin is not a terminal (the pty, raw mode and window size are the
 *     Python client's);
 *   - every word is valid UTF-8 (JSON strings; the Python client sends
 *     other bytes as surrogate escapes);
 *   - the effective uid is 0 and the pod's control socket accepts the
 *     connection (the socket is root's, mode 0600).
 * Once the request is sent the front sees the exec through as
 * exec_cmd.cmd_exec does: it forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT,
 * SIGUSR1 and SIGUSR2 to the command, prints a daemon's error with every
 * control character escaped (kernel/text.py's one_line: the message quotes
 * words the pod chose), and exits with the command's status.
 * tests/pods/test_pod_front.py runs both clients on the same cases.
 *
 * POD_PYTHON (the venv's interpreter) is set by the Makefile. The run
 * directory is $PEAPOD_RUN, else /run/peapod, as kernel/rundir.py says:
 * this is a command's entry, like pods/cli.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef POD_PYTHON
#error "POD_PYTHON (the interpreter that runs pods.cli) must be defined"
#endif

/* The daemon's limits (pods/control.py MAX_MSG, MAX_FDS). */
#define MAX_MSG (1 << 20)
#define MAX_FDS 8

/* The Python command, with the front's own argv[0] as its sys.argv[0], as
 * the console script that pip used to write did. */
static const char PY_MAIN[] =
    "import sys; sys.argv = sys.argv[1:]; from pods.cli import main; sys.exit(main())";

static _Noreturn void run_python(int argc, char **argv)
{
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (args) {
        args[0] = (char *)POD_PYTHON;
        args[1] = (char *)"-c";
        args[2] = (char *)PY_MAIN;
        for (int i = 0; i < argc; i++)
            args[3 + i] = argv[i];
        execv(POD_PYTHON, args);
    }
    fprintf(stderr, "pod: cannot run %s: %s\n", POD_PYTHON, strerror(errno));
    exit(126);
}

/* ------------------------------------------------------------ the words */

/* kernel/names.py NAME_RE: [a-z][a-z0-9-]{0,30} */
static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 31 || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF:
 * exactly what Python decodes without a surrogate escape. */
static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s++;
        int more;
        uint32_t cp, min;
        if (c < 0x80)
            continue;
        if ((c & 0xE0) == 0xC0) { more = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { more = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { more = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        while (more--) {
            if ((*s & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (*s++ & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
    }
    return 1;
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

struct request {
    const char *name, *pea, *user;
    char **cmd;
    int ncmd;
};

/* split_exec_argv's grammar, for the fast path only: 0 if the words are
 * something else (the Python command then parses them and says why). */
static int parse(int argc, char **argv, struct request *r)
{
    int i = 2, named = 0;
    memset(r, 0, sizeof *r);
    while (i < argc) {
        const char *w = argv[i];
        if (!strcmp(w, "--")) {
            if (!named && i + 1 < argc) {       /* `pod exec -- NAME CMD...` */
                r->name = argv[i + 1];
                named = 1;
                i++;
            }
            i++;
            break;
        }
        if (!strcmp(w, "--pea") || !strcmp(w, "--user")) {
            /* argparse takes a value that starts with "-" for an option. */
            if (i + 1 >= argc || argv[i + 1][0] == '-')
                return 0;
            /* A repeated option: argparse keeps the last, and so do we. */
            if (w[2] == 'p')
                r->pea = argv[i + 1];
            else
                r->user = argv[i + 1];
            i += 2;
        } else if (w[0] == '-' && w[1]) {
            return 0;                           /* --help, -h, --pea=X, a typo */
        } else if (!named) {
            r->name = w;
            named = 1;
            i++;
        } else {
            break;
        }
    }
    if (!named || i >= argc || !valid_name(r->name))
        return 0;
    if (r->user && !(all_digits(r->user) && strlen(r->user) <= 9))
        return 0;
    r->cmd = argv + i;
    r->ncmd = argc - i;
    for (int k = 0; k < r->ncmd; k++)
        if (!valid_utf8((const unsigned char *)r->cmd[k]))
            return 0;
    if (r->pea && !valid_utf8((const unsigned char *)r->pea))
        return 0;
    return 1;
}

/* ------------------------------------------------------------- the JSON */

struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = cap <= MAX_MSG ? realloc(b->p, cap) : NULL;
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void puts_raw(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string; the text is valid UTF-8 (checked), so only '"', '\\' and
 * the C0 controls need escapes. */
static void put_str(struct buf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(b, e, 2);
        } else if (c < 0x20) {
            char e[7];
            snprintf(e, sizeof e, "\\u%04x", c);
            put(b, e, 6);
        } else {
            put(b, s, 1);
        }
    }
    put(b, "\"", 1);
}

/* What the front needs of one daemon message: {"exit": N}, {"error": TEXT,
 * "status": N}; anything else ({"started": ...}) is passed over, as the
 * Python client does. The daemon is host root, but an error's text quotes
 * what the pod chose, so it is decoded here and escaped when printed. */
struct reply {
    int has_exit, has_error, has_status;
    long exit_status, status;
    char *error;          /* decoded UTF-8, lone surrogates kept as markers */
    size_t error_len;
};

static const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int hexval(const char *p, const char *end, unsigned *out)
{
    unsigned v = 0;
    if (end - p < 4)
        return 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Code points are stored as UTF-8; a lone surrogate (Python's escape for a
 * byte that was not UTF-8) is stored as the 3-byte form CESU would use,
 * which no valid UTF-8 contains, so print_one_line can tell it apart. */
static void put_cp(struct buf *b, uint32_t cp)
{
    char u[4];
    if (cp < 0x80) { u[0] = (char)cp; put(b, u, 1); }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); put(b, u, 2); }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); put(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); put(b, u, 4);
    }
}

/* A JSON string starting at p (on the '"'); decoded into out if out. */
static const char *string(const char *p, const char *end, struct buf *out)
{
    p++;
    while (p < end && *p != '"') {
        if (*p != '\\') {
            if (out)
                put(out, p, 1);
            p++;
            continue;
        }
        if (++p >= end)
            return NULL;
        char c = *p++;
        uint32_t cp;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            unsigned hi, lo;
            if (!hexval(p, end, &hi))
                return NULL;
            p += 4;
            cp = hi;
            if (hi >= 0xD800 && hi <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
                hexval(p + 2, end, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            break;
        }
        default:
            return NULL;
        }
        if (out)
            put_cp(out, cp);
    }
    return p < end ? p + 1 : NULL;
}

/* Any JSON value, passed over; nested arrays and objects by depth. */
static const char *skip_value(const char *p, const char *end)
{
    int depth = 0;
    do {
        p = ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == '"') {
            p = string(p, end, NULL);
            if (!p)
                return NULL;
        } else if (*p == '[' || *p == '{') {
            depth++;
            p++;
        } else if (*p == ']' || *p == '}') {
            if (--depth < 0)
                return NULL;
            p++;
        } else if (*p == ',' || *p == ':') {
            if (!depth)
                return NULL;
            p++;
        } else {
            const char *start = p;
            while (p < end && *p && !strchr(",]} \t\r\n", *p))
                p++;
            if (p == start)
                return NULL;                    /* a stray byte: not JSON */
        }
    } while (depth > 0);
    return p;
}

static const char *number(const char *p, const char *end, long *out, int *ok)
{
    const char *q = skip_value(p, end);
    char tmp[32];
    if (!q)
        return NULL;
    size_t n = (size_t)(q - p);
    *ok = 0;
    if (n && n < sizeof tmp) {
        char *e;
        memcpy(tmp, p, n);
        tmp[n] = 0;
        errno = 0;
        *out = strtol(tmp, &e, 10);
        *ok = !errno && *e == 0;
    }
    return q;
}

/* 0 if the message is not a JSON object (the Python client takes it as
 * {}: ignored). */
static int parse_reply(const char *p, size_t n, struct reply *r)
{
    const char *end = p + n;
    struct buf err = {0};
    memset(r, 0, sizeof *r);
    p = ws(p, end);
    if (p >= end || *p++ != '{')
        return 0;
    p = ws(p, end);
    if (p < end && *p == '}')
        return 1;
    for (;;) {
        struct buf key = {0};
        p = ws(p, end);
        if (p >= end || *p != '"' || !(p = string(p, end, &key)))
            goto bad_key;
        put(&key, "", 1);
        p = ws(p, end);
        if (p >= end || *p++ != ':' || key.failed)
            goto bad_key;
        p = ws(p, end);
        int ok = 0;
        if (!strcmp(key.p, "exit") || !strcmp(key.p, "status")) {
            long v;
            int is_exit = key.p[0] == 'e';
            if (!(p = number(p, end, &v, &ok)))
                goto bad_key;
            if (ok && is_exit) { r->has_exit = 1; r->exit_status = v; }
            else if (ok) { r->has_status = 1; r->status = v; }
        } else if (!strcmp(key.p, "error")) {
            r->has_error = 1;
            if (p < end && *p == '"') {
                free(err.p);
                memset(&err, 0, sizeof err);
                if (!(p = string(p, end, &err)) || err.failed)
                    goto bad_key;
            } else if (!(p = skip_value(p, end))) {
                goto bad_key;
            }
        } else if (!(p = skip_value(p, end))) {
            goto bad_key;
        }
        free(key.p);
        p = ws(p, end);
        if (p < end && *p == ',') { p++; continue; }
        if (p < end && *p == '}') break;
        goto bad;
    bad_key:
        free(key.p);
        goto bad;
    }
    r->error = err.p;
    r->error_len = err.len;
    return 1;
bad:
    free(err.p);
    memset(r, 0, sizeof *r);
    return 0;
}

/* kernel/text.py one_line: every C0 control (newline as "\n"), DEL and C1
 * control as \xHH, a surrogate escape of byte B as \xB, any other lone
 * surrogate as \uHHHH. */
static void print_one_line(struct buf *o, const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        uint32_t cp = c;
        size_t len = 1;
        if (c >= 0xC0 && (c & 0xE0) == 0xC0 && i + 1 < n) {
            cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
            len = 2;
        } else if ((c & 0xF0) == 0xE0 && i + 2 < n) {
            cp = ((c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
            len = 3;
        } else if ((c & 0xF8) == 0xF0 && i + 3 < n) {
            len = 4;
            cp = 0x10000;   /* astral: printable, copied as is */
        }
        char e[8];
        if (cp == '\n') {
            put(o, "\\n", 2);
        } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
            snprintf(e, sizeof e, "\\x%02x", cp);
            put(o, e, 4);
        } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
            snprintf(e, sizeof e, "\\x%02x", cp - 0xDC00);
            put(o, e, 4);
        } else if (cp >= 0xD800 && cp <= 0xDFFF) {
            snprintf(e, sizeof e, "\\u%04x", cp);
            put(o, e, 6);
        } else {
            put(o, (const char *)s + i, len);
        }
        i += len;
    }
}

/* ------------------------------------------------------------ the socket */

static int send_json(int s, struct buf *b, const int *fds, int nfds)
{
    struct iovec iov = {b->p, b->len};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        m.msg_control = u.buf;
        m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    /* MSG_NOSIGNAL: a daemon gone away is an error to report, not SIGPIPE. */
    return sendmsg(s, &m, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* One message; its descriptors (the daemon sends none to a client) are
 * closed. Returns its length, 0 at the end of the stream, -1 on error. */
static ssize_t recv_json(int s, char *data, size_t cap, int *truncated)
{
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {data, cap};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    ssize_t n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
                close(fd);
            }
    *truncated = (m.msg_flags & MSG_TRUNC) != 0;
    return n;
}

static void say(const char *prefix, const char *argv0, const char *msg, size_t msg_len)
{
    struct buf o = {0};
    puts_raw(&o, "pod: ");
    puts_raw(&o, prefix);
    if (argv0) {
        print_one_line(&o, (const unsigned char *)argv0, strlen(argv0));
        puts_raw(&o, ": ");
    }
    print_one_line(&o, (const unsigned char *)msg, msg_len);
    put(&o, "\n", 1);
    if (!o.failed)
        (void)!write(2, o.p, o.len);
    free(o.p);
}

static int connect_pod(const char *name)
{
    const char *run = getenv("PEAPOD_RUN");
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (!run || !*run)
        run = "/run/peapod";
    int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/pods/%s/control", run, name);
    if (n < 0 || (size_t)n >= sizeof a.sun_path)
        return -1;
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        close(s);
        return -1;
    }
    return s;
}

/* The request, as exec_cmd.cmd_exec builds it for a stdin that is no
 * terminal; 0 if it does not fit the daemon's datagram. */
static int build_request(const struct request *r, struct buf *msg_out)
{
    struct buf msg = {0};
    const char *term = getenv("TERM");
    if (!term || !valid_utf8((const unsigned char *)term))
        term = "";
    puts_raw(&msg, "{\"op\": \"exec\", \"argv\": [");
    for (int k = 0; k < r->ncmd; k++) {
        if (k)
            puts_raw(&msg, ", ");
        put_str(&msg, r->cmd[k]);
    }
    puts_raw(&msg, "], \"pea\": ");
    if (r->pea)
        put_str(&msg, r->pea);
    else
        puts_raw(&msg, "null");
    puts_raw(&msg, ", \"uid\": ");
    if (r->user) {
        char uid[16];                           /* "007" is 7, and not JSON */
        snprintf(uid, sizeof uid, "%ld", strtol(r->user, NULL, 10));
        puts_raw(&msg, uid);
    } else {
        puts_raw(&msg, "null");
    }
    puts_raw(&msg, ", \"tty\": false, \"winsize\": null, \"term\": ");
    put_str(&msg, term);
    puts_raw(&msg, "}");
    if (msg.failed) {
        free(msg.p);
        return 0;
    }
    *msg_out = msg;
    return 1;
}

static int exec_in_pod(const struct request *r, struct buf *msg, int s, sigset_t *forwarded)
{
    static const int stdio[3] = {0, 1, 2};
    if (send_json(s, msg, stdio, 3) < 0) {
        const char *e = strerror(errno);
        say("exec: ", NULL, e, strlen(e));
        return 1;
    }

    int sfd = signalfd(-1, forwarded, SFD_CLOEXEC);
    char *data = malloc(MAX_MSG);
    if (sfd < 0 || !data) {
        const char *e = strerror(errno);
        say("exec: ", NULL, e, strlen(e));
        return 1;
    }
    for (;;) {
        struct pollfd p[2] = {{.fd = s, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                char note[64];
                struct buf b = {0};
                snprintf(note, sizeof note, "{\"op\": \"signal\", \"sig\": %u}", si.ssi_signo);
                puts_raw(&b, note);
                (void)send_json(s, &b, NULL, 0);   /* a closed socket: the next read says so */
                free(b.p);
            }
        }
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        int truncated;
        ssize_t n = recv_json(s, data, MAX_MSG, &truncated);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        struct reply rep;
        if (truncated || !parse_reply(data, (size_t)n, &rep))
            continue;
        if (rep.has_error) {
            say("exec ", r->cmd[0], rep.error ? rep.error : "", rep.error_len);
            free(rep.error);
            return (int)(rep.has_status ? rep.status : 126);
        }
        free(rep.error);
        if (rep.has_exit)
            return (int)rep.exit_status;
    }
    char text[128];
    snprintf(text, sizeof text, "pod %s: the daemon closed the connection", r->name);
    say("", NULL, text, strlen(text));
    return 125;
}

int main(int argc, char **argv)
{
    struct request r;
    struct buf msg;
    if (argc < 3 || strcmp(argv[1], "exec") || !parse(argc, argv, &r) || geteuid() != 0 ||
        isatty(0) || fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0 || fcntl(2, F_GETFD) < 0 ||
        !build_request(&r, &msg))
        run_python(argc, argv);
    int s = connect_pod(r.name);
    if (s < 0)
        run_python(argc, argv);
    /* From here on the request is ours. The signals the Python client
     * forwards are blocked and read from a signalfd, so none is lost
     * between the request and the loop. */
    sigset_t forwarded;
    sigemptyset(&forwarded);
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t k = 0; k < sizeof sigs / sizeof *sigs; k++)
        sigaddset(&forwarded, sigs[k]);
    sigprocmask(SIG_BLOCK, &forwarded, NULL);
    /* A closed stderr fails the write of an error, as in the Python client
     * (which ignores SIGPIPE), instead of killing the front. Set only here:
     * an ignored signal would be inherited by the Python command. */
    signal(SIGPIPE, SIG_IGN);
    int status = exec_in_pod(&r, &msg, s, &forwarded);
    close(s);
    return status & 0xFF;
}
