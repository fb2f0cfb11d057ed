/*
 * sandboxd-keeper: the host-side half of one idle sandbox, after its set-up.
 *
 * Why native: the keeper is one process per sandbox for the sandbox's whole life, and after
 * set-up it only copies the main process's output into main.log, the agent's diagnostics
 * into agent.log, collects two kinds of status line, and writes exit.json when PID 1 is
 * gone. As a fork of the Python zygote it cost ~2 MiB of private memory per sandbox (the
 * pages CPython's reference counts and fork hooks copy), a minimal forked Python loop still
 * ~0.7 MiB; this program costs ~0.1 MiB. The Python keeper (keeper.py) does the set-up,
 * forks the agent, then execs this with the descriptors it keeps. keeper.py's KeeperLoop
 * does the same work when this program was not built; the two must agree on every byte.
 *
 * Input from the sandbox is hostile: pipes are read non-blocking in bounded chunks, status
 * lines longer than 4,096 bytes are dropped, and only two exact forms are accepted:
 *     "started <seconds since the epoch>\n"      "exit <0-255> <reason>\n"
 * with a reason from a fixed list. Nothing read is ever used as a path or a format.
 *
 * Usage (argv from keeper.py, all descriptors already open):
 *   sandboxd-keeper STATE_DIR_FD LOG_FD AGENT_PID STDOUT_FD STDERR_FD STATUS_FD DIAG_FD
 *                   LOG_LIMIT
 * Exit status 0 after exit.json is written; 2 on bad arguments (keeper.py checks them).
 *
 * Second use, the namespace helper (syscalls.namespace_by_helper):
 *   sandboxd-keeper unshare FLAG READY_FD GO_FD
 * unshares a user (CLONE_NEWUSER) or network (CLONE_NEWNET, its lo then brought up)
 * namespace, writes "1" to READY_FD and waits for EOF on GO_FD, while its parent writes the
 * maps and opens /proc/PID/ns/KIND.
 * Why here: the zygote used to fork itself for this, twice per sandbox (its user namespace
 * and, without a network, an empty network namespace); a fork of a Python process and its
 * exit cost ~3 ms of CPU, copy-on-write faults in the zygote included, against ~0.5 ms for
 * starting this program with posix_spawn. Exit 1 if the unshare failed (nothing written),
 * 2 on bad arguments; every other descriptor is closed first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define CHUNK 65536
#define STATUS_LINE_LIMIT 4096
#define DIAG_LIMIT (1 << 20)
#define DRAIN_SECONDS 5.0
#define KILLED 137
#define TRUNCATION_NOTICE "[sandboxd: log limit reached, further output dropped]\n"

enum { OUT, ERR, STATUS, DIAG, PIDFD, NSLOTS };

static int state_fd, log_fd;
static long long log_limit, log_written;
static int log_truncated;
static long long diag_written;
static char status_buf[STATUS_LINE_LIMIT + 1];
static size_t status_len;
static int status_dropping; /* inside an over-long line: skip to its end */
static int have_started, have_exit, exit_code;
static double started_at;
static char exit_reason[16];
/* 32 bytes of record header + a chunk + the newline; static: no heap at all. */
static char record[CHUNK + 64];
static char chunk[CHUNK];

static const char *const REASONS[] = {"exited", "stopped", "lifetime", "start_failed"};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_int(const char *text, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || end == text || *end || value < lo || value > hi)
        return -1;
    *out = value;
    return 0;
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* One main.log record, "<time> <o|e> <length>\n<data>\n", as ONE write (logfile.py). */
static void log_write(char stream, const char *data, size_t len) {
    if (log_truncated || len == 0)
        return;
    if (log_written + (long long)len > log_limit) {
        log_truncated = 1;
        data = TRUNCATION_NOTICE;
        len = sizeof(TRUNCATION_NOTICE) - 1;
        stream = 'e';
    }
    int head = snprintf(record, 64, "%.6f %c %zu\n", now(), stream, len);
    if (head < 0 || head >= 64)
        return;
    memcpy(record + head, data, len);
    record[head + len] = '\n';
    size_t total = (size_t)head + len + 1;
    ssize_t n = write(log_fd, record, total);
    if (n < 0) {
        log_truncated = 1;
        return;
    }
    log_written += (long long)total;
}

static void diag_write(const char *data, size_t len) {
    if (diag_written >= DIAG_LIMIT)
        return;
    if ((long long)len > DIAG_LIMIT - diag_written)
        len = (size_t)(DIAG_LIMIT - diag_written);
    int fd = openat(state_fd, "agent.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
                    0600);
    if (fd >= 0) {
        write_all(fd, data, len);
        close(fd);
    }
    diag_written += (long long)len;
}

/* "started <float>" or "exit <code> <reason>"; anything else is ignored. */
static void status_line(char *line) {
    char *sp = strchr(line, ' ');
    if (!sp)
        return;
    *sp = '\0';
    char *arg = sp + 1;
    if (strcmp(line, "started") == 0) {
        char *end;
        errno = 0;
        double at = strtod(arg, &end);
        if (errno || end == arg || *end || !(at >= 0.0 && at < 1e11))
            return; /* also refuses nan and inf */
        have_started = 1;
        started_at = at;
    } else if (strcmp(line, "exit") == 0) {
        char *sp2 = strchr(arg, ' ');
        if (!sp2)
            return;
        *sp2 = '\0';
        long long code;
        if (parse_int(arg, 0, 255, &code) < 0)
            return;
        for (size_t i = 0; i < sizeof(REASONS) / sizeof(REASONS[0]); i++) {
            if (strcmp(sp2 + 1, REASONS[i]) == 0) {
                have_exit = 1;
                exit_code = (int)code;
                snprintf(exit_reason, sizeof(exit_reason), "%s", REASONS[i]);
                return;
            }
        }
    }
}

static void status_feed(const char *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (c == '\n') {
            if (!status_dropping) {
                status_buf[status_len] = '\0';
                if (strlen(status_buf) == status_len) /* no NUL inside */
                    status_line(status_buf);
            }
            status_len = 0;
            status_dropping = 0;
        } else if (!status_dropping) {
            if (status_len >= STATUS_LINE_LIMIT) {
                status_dropping = 1; /* not a line an honest agent writes */
                status_len = 0;
            } else {
                status_buf[status_len++] = c;
            }
        }
    }
}

/* exit.json, atomically (tmp + rename), never through a symlink. */
static void write_exit(void) {
    char text[256];
    char started[40];
    if (have_started)
        snprintf(started, sizeof(started), "%.6f", started_at);
    else
        snprintf(started, sizeof(started), "null");
    int n = snprintf(text, sizeof(text),
                     "{\"exit_code\": %d, \"reason\": \"%s\", \"started_at\": %s, "
                     "\"finished_at\": %.6f}",
                     have_exit ? exit_code : KILLED, have_exit ? exit_reason : "killed", started,
                     now());
    if (n < 0 || n >= (int)sizeof(text))
        return;
    int fd = openat(state_fd, "exit.json.tmp",
                    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return;
    write_all(fd, text, (size_t)n);
    close(fd);
    renameat(state_fd, "exit.json.tmp", state_fd, "exit.json");
}

/* A new network namespace's lo, up. The zygote makes empty network namespaces ahead of
 * need with this helper, so bringing lo up here takes the kernel's network configuration
 * lock (RTNL) off a create's path: the agent then finds it up and only reads its flags.
 * A failure is left to the agent, which brings lo up itself when it finds it down. */
static void loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return;
    struct ifreq req;
    memset(&req, 0, sizeof req);
    memcpy(req.ifr_name, "lo", 3);
    if (ioctl(sock, SIOCGIFFLAGS, &req) == 0 && !(req.ifr_flags & IFF_UP)) {
        req.ifr_flags |= IFF_UP;
        (void)ioctl(sock, SIOCSIFFLAGS, &req);
    }
    close(sock);
}

/* The namespace helper (see the top of this file); argv[1] is "unshare". */
static int unshare_helper(char **argv) {
    long long flag, ready, go;
    if (parse_int(argv[2], 0, INT_MAX, &flag) < 0 || parse_int(argv[3], 3, INT_MAX, &ready) < 0 ||
        parse_int(argv[4], 3, INT_MAX, &go) < 0 || ready == go)
        return 2;
    if (flag != CLONE_NEWUSER && flag != CLONE_NEWNET)
        return 2; /* only the two kinds the zygote and keepers ask for */
    prctl(PR_SET_NAME, "sandboxd-nshelp", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* Nothing else the parent held stays open here (descriptors 3.. other than the two). */
    int lo = (int)(ready < go ? ready : go), hi = (int)(ready < go ? go : ready);
    if (lo > 3)
        syscall(SYS_close_range, 3u, (unsigned)lo - 1, 0u);
    if (hi > lo + 1)
        syscall(SYS_close_range, (unsigned)lo + 1, (unsigned)hi - 1, 0u);
    syscall(SYS_close_range, (unsigned)hi + 1, ~0u, 0u);
    if (unshare((int)flag) != 0)
        return 1;
    if (flag == CLONE_NEWNET)
        loopback_up();
    char c = '1';
    if (write((int)ready, &c, 1) != 1)
        return 1;
    while (read((int)go, &c, 1) < 0 && errno == EINTR) {
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "unshare") == 0)
        return unshare_helper(argv);
    long long v[8];
    static const long long hi[8] = {INT_MAX, INT_MAX, INT_MAX, INT_MAX,
                                    INT_MAX, INT_MAX, INT_MAX, LLONG_MAX};
    if (argc != 9)
        return 2;
    for (int i = 0; i < 8; i++)
        if (parse_int(argv[i + 1], 0, hi[i], &v[i]) < 0)
            return 2;
    prctl(PR_SET_NAME, "sandboxd-keeper", 0, 0, 0);
    state_fd = (int)v[0];
    log_fd = (int)v[1];
    pid_t agent = (pid_t)v[2];
    int fds[NSLOTS] = {(int)v[3], (int)v[4], (int)v[5], (int)v[6], -1};
    log_limit = v[7];
    struct stat st;
    log_written = fstat(log_fd, &st) == 0 ? (long long)st.st_size : 0;

    int ep = epoll_create1(EPOLL_CLOEXEC);
    fds[PIDFD] = (int)syscall(SYS_pidfd_open, agent, 0);
    if (ep < 0 || fds[PIDFD] < 0) {
        /* Cannot watch: wait for the agent the old way, then record its end. */
        while (waitpid(agent, NULL, 0) < 0 && errno == EINTR) {
        }
        write_exit();
        return 0;
    }
    int open_pipes = 0;
    for (int i = 0; i < NSLOTS; i++) {
        if (i != PIDFD)
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
            close(fds[i]);
            fds[i] = -1;
        } else if (i != PIDFD) {
            open_pipes++;
        }
    }
    int reaped = 0;
    double drain_deadline = 0.0;
    for (;;) {
        if (reaped && open_pipes == 0)
            break;
        int timeout = -1;
        if (reaped) {
            double left = drain_deadline - monotonic();
            if (left <= 0)
                break;
            timeout = (int)(left * 1000) + 1;
        }
        struct epoll_event events[NSLOTS];
        int n = epoll_wait(ep, events, NSLOTS, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        for (int e = 0; e < n; e++) {
            int slot = (int)events[e].data.u32;
            if (fds[slot] < 0)
                continue;
            if (slot == PIDFD) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[PIDFD], NULL);
                close(fds[PIDFD]);
                fds[PIDFD] = -1;
                while (waitpid(agent, NULL, 0) < 0 && errno == EINTR) {
                }
                reaped = 1;
                drain_deadline = monotonic() + DRAIN_SECONDS;
                continue;
            }
            ssize_t got = read(fds[slot], chunk, sizeof(chunk));
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[slot], NULL);
                close(fds[slot]);
                fds[slot] = -1;
                open_pipes--;
                continue;
            }
            if (slot == OUT || slot == ERR)
                log_write(slot == OUT ? 'o' : 'e', chunk, (size_t)got);
            else if (slot == STATUS)
                status_feed(chunk, (size_t)got);
            else
                diag_write(chunk, (size_t)got);
        }
    }
    write_exit();
    return 0;
}
