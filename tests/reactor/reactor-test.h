/*
** tests/reactor/reactor-test.h — helpers shared by the reactor tests
** (test_*.c).
**
** A reactor test builds a reactor on the test's main thread, runs it on a
** thread of its own (rt_start), plays the client side with ordinary
** blocking sockets that have time limits (a client that waits too long
** fails instead of hanging), and checks what the callbacks recorded once
** the reactor has stopped (rt_join).  Callbacks share test state with the
** test thread through the STM (state that a re-run must undo) or through
** C11 atomics (counters the test thread polls while the reactor runs).
**
** Every test that frees its reactor also checks that it gave back every
** descriptor (fd_count before and after) and ends with ame_stm_shutdown(),
** so that LeakSanitizer sees handles that were never freed and ASan sees
** handles freed twice.
*/
#ifndef AME_TESTS_REACTOR_TEST_H
#define AME_TESTS_REACTOR_TEST_H

#include "task.h"

#include <ame/reactor.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Under ThreadSanitizer everything runs 5-15 times slower: tests that
** count to large numbers count less far there (and say so). */
#if defined(AME_TEST_TSAN)
#define RT_SCALE_DIV 10
#elif defined(AME_TEST_ASAN)
#define RT_SCALE_DIV 2
#else
#define RT_SCALE_DIV 1
#endif

/* How long a client waits for one read or write, in ms (times the slow
** factor): far longer than any correct run needs. */
#define RT_IO_TIMEOUT_MS 10000u

/* ------------------------------------------------------------------------
** Descriptors.
*/

/* The number of open descriptors of this process. */
static inline int fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  ASSERT_NOT_NULL(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

/* The lowest limit (RLIMIT_NOFILE) under which exactly `room` more
** descriptors can be opened. */
static inline rlim_t limit_for_room(int room) {
  for (rlim_t l = 3;; l++) {
    int used = 0;
    DIR *d = opendir("/proc/self/fd");
    ASSERT_NOT_NULL(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (e->d_name[0] != '.' && (rlim_t)atoi(e->d_name) < l &&
          atoi(e->d_name) != dirfd(d))
        used++;
    closedir(d);
    if ((rlim_t)used + (rlim_t)room == l)
      return l;
  }
}

/* Create and free a reactor once, so that whatever libuv opens once per
** process (its signal pipe) is open before a test counts descriptors;
** return the count. */
static inline int fd_baseline(void) {
  ame_reactor_t *r;
  ame_reactor_config_t cfg = {.workers = 1};
  ASSERT_EQ(ame_reactor_new(&r, &cfg), 0);
  ame_reactor_free(r);
  return fd_count();
}

/* ------------------------------------------------------------------------
** Running a reactor on a thread of its own.
*/

struct rt {
  ame_reactor_t *r;
  pthread_t thread;
  int rc;             /* what ame_reactor_run returned */
  atomic_int done;    /* ame_reactor_run has returned */
};

static inline void *rt_main_(void *arg) {
  struct rt *rt = arg;
  rt->rc = ame_reactor_run(rt->r);
  atomic_store(&rt->done, 1);
  return NULL;
}

/* A reactor with n workers (and the given log, NULL for stderr). */
static inline ame_reactor_t *rt_new(unsigned workers, FILE *log) {
  ame_reactor_t *r = NULL;
  ame_reactor_config_t cfg = {.workers = workers, .log = log};
  ASSERT_EQ(ame_reactor_new(&r, &cfg), 0);
  ASSERT_NOT_NULL(r);
  return r;
}

static inline void rt_start(struct rt *rt, ame_reactor_t *r) {
  rt->r = r;
  rt->rc = -1;
  atomic_store(&rt->done, 0);
  thread_start(&rt->thread, rt_main_, rt);
}

/* Wait (at most ms, times the slow factor) for ame_reactor_run to return
** by itself, and assert that it returned 0. */
static inline void rt_wait(struct rt *rt, unsigned ms) {
  ASSERT_WAIT(atomic_load(&rt->done), ms);
  thread_join(rt->thread);
  ASSERT_EQ(rt->rc, 0);
}

/* Stop the reactor from this (foreign) thread and wait for it. */
static inline void rt_stop(struct rt *rt) {
  ame_reactor_stop(rt->r);
  rt_wait(rt, 20000);
}

/* Print every open descriptor and what it is (to explain a leak). */
static inline void fd_dump(void) {
  DIR *d = opendir("/proc/self/fd");
  ASSERT_NOT_NULL(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], target[300];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, target, sizeof target - 1);
    target[n > 0 ? n : 0] = '\0';
    fprintf(stderr, "#   fd %s -> %s\n", e->d_name, target);
  }
  closedir(d);
}

/* The end of a test: free the reactor, check the descriptors, hand the
** STM's deferred frees back so that LeakSanitizer judges the rest. */
static inline void rt_finish(ame_reactor_t *r, int fds_before) {
  ame_reactor_free(r);
  if (fd_count() != fds_before)
    fd_dump();
  ASSERT_EQ(fd_count(), fds_before);
  ame_stm_shutdown();
}

/* ------------------------------------------------------------------------
** Transactional helpers for callbacks.
*/

static inline uintptr_t tx_inc(ame_tx_t *tx, uintptr_t *addr) {
  uintptr_t v = ame_load_word_tx(tx, addr) + 1;
  ame_store_word_tx(tx, addr, v);
  return v;
}

/* Read a word the callbacks wrote transactionally, from a thread that is
** not a worker, in a transaction of its own. */
static inline uintptr_t tx_peek(const uintptr_t *addr) {
  ame_tx_t *tx = ame_thread_enter();
  ASSERT_NOT_NULL(tx);
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) { v = ame_load_word_tx(tx, addr); }
  ame_thread_exit();
  return v;
}

/* ------------------------------------------------------------------------
** Blocking client sockets with time limits.
*/

static inline void sock_timeouts(int fd, unsigned ms) {
  ms *= slow_factor();
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
}

/* Fill *sa with host:port (numeric); return its length. */
static inline socklen_t sock_addr(struct sockaddr_storage *sa,
                                  const char *host, int port) {
  memset(sa, 0, sizeof *sa);
  struct sockaddr_in *a4 = (struct sockaddr_in *)sa;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)sa;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return sizeof *a4;
  }
  ASSERT_EQ(inet_pton(AF_INET6, host, &a6->sin6_addr), 1);
  a6->sin6_family = AF_INET6;
  a6->sin6_port = htons((uint16_t)port);
  return sizeof *a6;
}

/* Connect to host:port; rcvbuf > 0 sets SO_RCVBUF first (a small one makes
** a slow reader).  Return the socket, or -errno if the connect failed. */
static inline int tcp_client_rcvbuf(const char *host, int port, int rcvbuf) {
  struct sockaddr_storage sa;
  socklen_t len = sock_addr(&sa, host, port);
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  if (rcvbuf > 0)
    ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf),
              0);
  sock_timeouts(fd, RT_IO_TIMEOUT_MS);
  if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  return fd;
}

static inline int tcp_client(const char *host, int port) {
  int fd = tcp_client_rcvbuf(host, port, 0);
  ASSERT_GE(fd, 0);
  return fd;
}

static inline int unix_client(const char *path) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  ASSERT_LT(strlen(path), sizeof sun.sun_path);
  strcpy(sun.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sock_timeouts(fd, RT_IO_TIMEOUT_MS);
  ASSERT_EQ(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
  return fd;
}

/* Send all n bytes (assert). */
static inline void send_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      AME_TEST_FAIL_("send: %s", k < 0 ? strerror(errno) : "0 bytes");
    p += k;
    n -= (size_t)k;
  }
}

/* Receive exactly n bytes (assert: no EOF, error or time-out first). */
static inline void recv_exact(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      AME_TEST_FAIL_("recv: %s (%zu bytes still expected)",
                     k < 0 ? strerror(errno) : "end of stream", n);
    p += k;
    n -= (size_t)k;
  }
}

/* Receive until the peer's EOF into buf (at most cap bytes; more is a
** failure); return the number of bytes.  An error (a reset) is returned as
** -errno if accept_error, else it fails the test. */
static inline ssize_t recv_to_eof(int fd, char *buf, size_t cap,
                                  int accept_error) {
  size_t got = 0;
  for (;;) {
    char scratch[1];
    char *p = got < cap ? buf + got : scratch;
    size_t room = got < cap ? cap - got : sizeof scratch;
    ssize_t k = recv(fd, p, room, 0);
    if (k < 0 && errno == EINTR)
      continue;
    if (k == 0)
      return (ssize_t)got;
    if (k < 0) {
      if (accept_error && errno != EAGAIN)
        return -errno;
      AME_TEST_FAIL_("recv: %s after %zu bytes", strerror(errno), got);
    }
    if (got >= cap)
      AME_TEST_FAIL_("more than %zu bytes before the end of stream", cap);
    got += (size_t)k;
  }
}

/* Close with SO_LINGER 0: the peer gets a reset. */
static inline void close_reset(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  close(fd);
}

/* A TCP port on host that nobody listens on, held for the caller: a
** socket bound to it with SO_REUSEADDR and not listening, whose
** descriptor is returned (close it when done) and the port put in *port.
** Held, the port is neither handed out by another bind to port 0 nor
** taken as a connection's local port by tests running beside this one; a
** connection to it is refused; and a listener with SO_REUSEADDR (the
** reactor's) can still bind it and listen. */
static inline int reserved_port(const char *host, int *port) {
  struct sockaddr_storage sa;
  socklen_t len = sock_addr(&sa, host, 0);
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  int one = 1;
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, len), 0);
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  *port = ntohs(sa.ss_family == AF_INET
                    ? ((struct sockaddr_in *)&sa)->sin_port
                    : ((struct sockaddr_in6 *)&sa)->sin6_port);
  return fd;
}

/* Is IPv6 loopback usable here? */
static inline int have_ipv6_loopback(void) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

/* Read a whole (small) file, such as the reactor's log, into a fresh
** NUL-terminated string. */
static inline char *slurp(FILE *f) {
  fflush(f);
  long n = ftell(f);
  ASSERT_GE(n, 0);
  char *s = malloc((size_t)n + 1);
  ASSERT_NOT_NULL(s);
  rewind(f);
  size_t got = fread(s, 1, (size_t)n, f);
  s[got] = '\0';
  return s;
}

/* The byte at offset i of the test pattern streams are checked against. */
static inline unsigned char pattern_byte(uint64_t i) {
  return (unsigned char)((i * 2654435761u) >> 13);
}

static inline void pattern_fill(char *buf, size_t n, uint64_t off) {
  for (size_t i = 0; i < n; i++)
    buf[i] = (char)pattern_byte(off + i);
}

/* Return the first offset at which buf differs from the pattern, or n. */
static inline size_t pattern_check(const char *buf, size_t n, uint64_t off) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)buf[i] != pattern_byte(off + i))
      return i;
  return n;
}

/* ------------------------------------------------------------------------
** Counting at commit, and an echo server that counts its callbacks.
*/

static inline void commit_inc_cb_(void *arg) {
  atomic_fetch_add((atomic_int *)arg, 1);
}

/* Add one to *c when the current transaction commits (so a re-run counts
** once). */
static inline void commit_inc(ame_tx_t *tx, atomic_int *c) {
  ASSERT_EQ(ame_tx_on_commit(tx, commit_inc_cb_, c), 0);
}

static struct {
  atomic_int opens, closes, datas, eofs;
  atomic_int close_errors;  /* on_close with a status other than 0 */
  atomic_int last_status;
} g_echo;

__attribute__((unused)) static int echo_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_echo.opens);
  return 0;
}

__attribute__((unused)) static int echo_data(ame_tx_t *tx, ame_stream_t *s,
                                             const char *data, size_t len) {
  commit_inc(tx, &g_echo.datas);
  return ame_stream_write(s, data, len);
}

__attribute__((unused)) static void echo_close(ame_tx_t *tx, ame_stream_t *s,
                                               int status) {
  (void)tx;
  (void)s;
  /* on_close's transaction commits: count now (it has no re-run here
  ** that matters, but keep to the rule). */
  atomic_store(&g_echo.last_status, status);
  if (status != 0)
    commit_inc(tx, &g_echo.close_errors);
  commit_inc(tx, &g_echo.closes);
}

__attribute__((unused)) static const ame_stream_cbs_t echo_cbs = {
    .on_open = echo_open, .on_data = echo_data, .on_close = echo_close};

/* Send msg on fd and check that it comes back. */
__attribute__((unused)) static void echo_check(int fd, const char *msg) {
  size_t n = strlen(msg);
  char buf[256];
  ASSERT_LT(n, sizeof buf);
  send_all(fd, msg, n);
  recv_exact(fd, buf, n);
  ASSERT(memcmp(buf, msg, n) == 0);
}

#endif /* AME_TESTS_REACTOR_TEST_H */
