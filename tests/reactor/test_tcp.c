/*
** tests/reactor/test_tcp.c — streams and listeners: TCP over IPv4 and IPv6,
** SO_REUSEPORT groups, Unix sockets, adopted sockets; listen and connect
** errors; flow control (pause/resume, watermarks and on_drain), half-close,
** very large writes, and the ways a stream can end (each calls on_close
** once and frees the stream once).
*/
#include "reactor-test.h"
#include "sockio.h"    /* reactor/src: internal */
#include "streambuf.h" /* reactor/src: internal */

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>

static ame_reactor_t *g_r;

/* Callbacks that must never run. */
static atomic_int g_never;
static int never_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx, (void)s;
  atomic_fetch_add(&g_never, 1);
  return 0;
}
static int never_data(ame_tx_t *tx, ame_stream_t *s, const char *d,
                      size_t n) {
  (void)tx, (void)s, (void)d, (void)n;
  atomic_fetch_add(&g_never, 1);
  return 0;
}
static void never_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)tx, (void)s, (void)status;
  atomic_fetch_add(&g_never, 1);
}
static const ame_stream_cbs_t never_cbs = {
    .on_open = never_open, .on_data = never_data, .on_close = never_close};

static int stop_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_reactor_stop(arg);
  return 0;
}

static int close_listener_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_listener_close(arg);
  return 0;
}

/* ------------------------------------------------------------------------
** A reactor-side client: on_open sends its message, on_data checks that
** the echo matches, and closes once all of it came back.
*/

struct cli {
  const char *msg;     /* what to send */
  uintptr_t got;       /* bytes of echo checked (transactional) */
  atomic_int opened, closed, status;
};

static int cli_open(ame_tx_t *tx, ame_stream_t *s) {
  struct cli *c = ame_handle_data(s);
  commit_inc(tx, &c->opened);
  return ame_stream_write(s, c->msg, strlen(c->msg));
}

static int cli_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  struct cli *c = ame_handle_data(s);
  uintptr_t got = ame_load_word_tx(tx, &c->got);
  ASSERT_LE(got + n, strlen(c->msg));
  ASSERT(memcmp(c->msg + got, d, n) == 0);
  ame_store_word_tx(tx, &c->got, got + n);
  if (got + n == strlen(c->msg))
    ame_stream_close(s);
  return 0;
}

static void cli_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  struct cli *c = ame_handle_data(s);
  atomic_store(&c->status, status);
  commit_inc(tx, &c->closed);
}

static const ame_stream_cbs_t cli_cbs = {
    .on_open = cli_open, .on_data = cli_data, .on_close = cli_close};

/* ------------------------------------------------------------------------
** Listen errors: an address in use, bad addresses, bad arguments.  A
** failed call never calls back and leaves no descriptor open.
*/

TEST_IMPL(tcp_listen_errors) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_listener_t *l, *l2 = NULL;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l),
            0);
  int port = ame_listener_port(l);
  ASSERT_GT(port, 0);
  struct sockaddr_storage sa;
  ASSERT_EQ(ame_listener_sockname(l, &sa), 0);
  ASSERT_EQ(sa.ss_family, AF_INET);
  ASSERT_EQ(ntohs(((struct sockaddr_in *)&sa)->sin_port), port);
  int before = fd_count();
  /* In use: by our own listener, with and without REUSEPORT. */
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", port, 0, 0, &never_cbs, NULL,
                           &l2),
            -EADDRINUSE);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", port, AME_TCP_REUSEPORT, 0,
                           &never_cbs, NULL, &l2),
            -EADDRINUSE);
  /* In use by a socket that is not the reactor's. */
  int other = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len = sock_addr(&sa, "127.0.0.1", 0);
  ASSERT_EQ(bind(other, (struct sockaddr *)&sa, len), 0);
  ASSERT_EQ(listen(other, 1), 0);
  ASSERT_EQ(getsockname(other, (struct sockaddr *)&sa, &len), 0);
  int oport = ntohs(((struct sockaddr_in *)&sa)->sin_port);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", oport, 0, 0, &never_cbs, NULL,
                           &l2),
            -EADDRINUSE);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", oport, AME_TCP_REUSEPORT, 0,
                           &never_cbs, NULL, &l2),
            -EADDRINUSE);
  ASSERT_EQ(fd_count(), before + 1);
  close(other);
  /* Bad addresses and arguments. */
  const char *bad[] = {"", "localhost", "1.2.3", "256.0.0.1", "1.2.3.4.5",
                       "::g", "127.0.0.1 ", "[::1]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ASSERT_EQ(ame_tcp_listen(g_r, bad[i], 0, 0, 0, &never_cbs, NULL, &l2),
              -EINVAL);
    ame_stream_t *s;
    ASSERT_EQ(ame_tcp_connect(g_r, bad[i], 80, &never_cbs, NULL, &s),
              -EINVAL);
  }
  ASSERT_EQ(ame_tcp_listen(g_r, NULL, 0, 0, 0, &never_cbs, NULL, &l2),
            -EINVAL);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", -1, 0, 0, &never_cbs, NULL, &l2),
            -EINVAL);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 65536, 0, 0, &never_cbs, NULL,
                           &l2),
            -EINVAL);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, NULL, NULL, &l2),
            -EINVAL);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &never_cbs, NULL, NULL),
            -EINVAL);
  ame_stream_t *s;
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", 70000, &never_cbs, NULL, &s),
            -EINVAL);
  ASSERT_EQ(ame_tcp_connect(g_r, NULL, 80, &never_cbs, NULL, &s), -EINVAL);
  char longpath[200];
  memset(longpath, 'x', sizeof longpath - 1);
  longpath[0] = '/';
  longpath[sizeof longpath - 1] = '\0';
  ASSERT_EQ(ame_unix_listen(g_r, longpath, 0, &never_cbs, NULL, &l2),
            -ENAMETOOLONG);
  ASSERT_EQ(ame_unix_connect(g_r, longpath, &never_cbs, NULL, &s),
            -ENAMETOOLONG);
  ASSERT_EQ(ame_unix_listen(g_r, "/nonexistent-dir/sock", 0, &never_cbs, NULL,
                            &l2),
            -ENOENT);
  ASSERT_EQ(ame_listen_fd(g_r, -1, &never_cbs, NULL, &l2), -EINVAL);
  ASSERT_EQ(fd_count(), before);
  /* The listener that worked works; the failed ones never call back. */
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client("127.0.0.1", port);
  echo_check(fd, "still serving");
  close(fd);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1, 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_never), 0);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A connect that is refused: on_close(-ECONNREFUSED) once, no on_open.
*/

static struct {
  atomic_int opens, closes, refused;
  int port4, port6;
  int v6;
} g_cr;

static int cr_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_cr.opens);
  return 0;
}

static void cr_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  if (status == -ECONNREFUSED)
    commit_inc(tx, &g_cr.refused);
  else
    printf("# on_close status %d\n", status);
  commit_inc(tx, &g_cr.closes);
}

static const ame_stream_cbs_t cr_cbs = {.on_open = cr_open,
                                        .on_close = cr_close};

static int cr_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ame_stream_t *s;
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", g_cr.port4, &cr_cbs, NULL, &s),
            0);
  /* Writes to a stream whose connect fails go nowhere. */
  ASSERT_EQ(ame_stream_write(s, "x", 1), 0);
  if (g_cr.v6)
    ASSERT_EQ(ame_tcp_connect(g_r, "::1", g_cr.port6, &cr_cbs, NULL, &s), 0);
  return 0;
}

TEST_IMPL(tcp_connect_refused) {
  int fds = fd_baseline();
  memset(&g_cr, 0, sizeof g_cr);
  g_cr.v6 = have_ipv6_loopback();
  int held4 = reserved_port("127.0.0.1", &g_cr.port4), held6 = -1;
  if (g_cr.v6)
    held6 = reserved_port("::1", &g_cr.port6);
  else
    printf("# no IPv6 loopback: IPv4 only\n");
  g_r = rt_new(2, NULL);
  /* Outside a transaction (before the reactor runs) and inside one. */
  ame_stream_t *s;
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", g_cr.port4, &cr_cbs, NULL, &s),
            0);
  ASSERT_EQ(ame_reactor_call(g_r, cr_call, NULL), 0);
  int want = g_cr.v6 ? 3 : 2;
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_cr.closes) == want, 10000);
  sleep_ms(20); /* time for a wrong second on_close */
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_cr.opens), 0);
  ASSERT_EQ(atomic_load(&g_cr.closes), want);
  ASSERT_EQ(atomic_load(&g_cr.refused), want);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  ASSERT_EQ(st.streams_open, 0);
  close(held4);
  if (held6 >= 0) close(held6);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** IPv4 and IPv6: listen on both loopbacks, connect from the reactor and
** from outside; AME_TCP_IPV6ONLY.
*/

static struct cli g_c4 = {.msg = "hello over IPv4"};
static struct cli g_c6 = {.msg = "hello over IPv6"};

TEST_IMPL(tcp_ipv4_ipv6) {
  int fds = fd_baseline();
  int v6 = have_ipv6_loopback();
  g_r = rt_new(2, NULL);
  ame_listener_t *l4, *l6 = NULL, *lany = NULL, *lonly = NULL;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l4),
            0);
  ame_stream_t *s;
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", ame_listener_port(l4), &cli_cbs,
                            &g_c4, &s),
            0);
  ASSERT_PTR_EQ(ame_handle_data(s), &g_c4);
  if (v6) {
    ASSERT_EQ(ame_tcp_listen(g_r, "::1", 0, 0, 0, &echo_cbs, NULL, &l6), 0);
    struct sockaddr_storage sa;
    ASSERT_EQ(ame_listener_sockname(l6, &sa), 0);
    ASSERT_EQ(sa.ss_family, AF_INET6);
    ASSERT_EQ(ame_tcp_connect(g_r, "::1", ame_listener_port(l6), &cli_cbs,
                              &g_c6, &s),
              0);
    /* "::" takes IPv4 too, unless AME_TCP_IPV6ONLY. */
    ASSERT_EQ(ame_tcp_listen(g_r, "::", 0, 0, 0, &echo_cbs, NULL, &lany), 0);
    ASSERT_EQ(ame_tcp_listen(g_r, "::", 0, AME_TCP_IPV6ONLY, 0, &echo_cbs,
                             NULL, &lonly),
              0);
  } else {
    printf("# no IPv6 loopback: IPv4 only\n");
  }
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client("127.0.0.1", ame_listener_port(l4));
  echo_check(fd, "v4 client");
  close(fd);
  if (v6) {
    fd = tcp_client("::1", ame_listener_port(l6));
    echo_check(fd, "v6 client");
    close(fd);
    fd = tcp_client("127.0.0.1", ame_listener_port(lany));
    echo_check(fd, "v4 client of ::");
    close(fd);
    fd = tcp_client("::1", ame_listener_port(lonly));
    echo_check(fd, "v6 client of :: v6only");
    close(fd);
    ASSERT_EQ(tcp_client_rcvbuf("127.0.0.1", ame_listener_port(lonly), 0),
              -ECONNREFUSED);
    ASSERT_WAIT(atomic_load(&g_c6.closed) == 1, 10000);
    ASSERT_EQ(atomic_load(&g_c6.opened), 1);
    ASSERT_EQ(atomic_load(&g_c6.status), 0);
  }
  ASSERT_WAIT(atomic_load(&g_c4.closed) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_c4.opened), 1);
  ASSERT_EQ(atomic_load(&g_c4.status), 0);
  /* The servers' ends: the outside clients' and the reactor clients'. */
  ASSERT_WAIT(atomic_load(&g_echo.closes) == (v6 ? 6 : 2), 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_echo.opens), v6 ? 6 : 2);
  ASSERT_EQ(atomic_load(&g_echo.closes), v6 ? 6 : 2);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** AME_TCP_REUSEPORT: one socket per worker on one port; closing the
** listener closes them all, and open connections keep working.
*/

static atomic_int g_rp_worker[8];

static int rp_open(ame_tx_t *tx, ame_stream_t *s) {
  unsigned w = ame_stream_worker(s);
  ASSERT_LT(w, 4);
  ASSERT_EQ(ame_reactor_current_worker(g_r), (int)w);
  atomic_fetch_add(&g_rp_worker[w], 1);
  return echo_open(tx, s);
}

static const ame_stream_cbs_t rp_cbs = {
    .on_open = rp_open, .on_data = echo_data, .on_close = echo_close};

/* Connects made by the reactor itself, to see whether a port still
** listens.  (The test's thread makes no descriptors while workers close
** theirs: libuv closes descriptors with a raw system call that
** ThreadSanitizer does not see, so a number reused by another thread
** would look like a race.)  Each probe closes as soon as it opens. */
static struct {
  atomic_int opened, closed, refused;
} g_pb;

static int pb_open(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_pb.opened);
  ame_stream_close(s);
  return 0;
}

static void pb_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  if (status == -ECONNREFUSED)
    commit_inc(tx, &g_pb.refused);
  commit_inc(tx, &g_pb.closed);
}

static const ame_stream_cbs_t pb_cbs = {.on_open = pb_open,
                                        .on_close = pb_close};

static int probe_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_stream_t *s;
  return ame_tcp_connect(g_r, "127.0.0.1", (int)(intptr_t)arg, &pb_cbs, NULL,
                         &s);
}

/* Probe port until a connect is refused; fail if none is within 10 s. */
static void probe_until_refused(int port) {
  uint64_t deadline = now_ms() + 10000u * slow_factor();
  for (;;) {
    int closed = atomic_load(&g_pb.closed);
    int refused = atomic_load(&g_pb.refused);
    ASSERT_EQ(ame_reactor_task(g_r, probe_call, (void *)(intptr_t)port), 0);
    ASSERT_WAIT(atomic_load(&g_pb.closed) == closed + 1, 10000);
    if (atomic_load(&g_pb.refused) > refused)
      return;
    ASSERT_LT(now_ms(), deadline);
    sleep_ms(5);
  }
}

TEST_IMPL(tcp_reuseport) {
  int fds = fd_baseline();
  g_r = rt_new(4, NULL);
  int before = fd_count();
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, AME_TCP_REUSEPORT, 0, &rp_cbs,
                           NULL, &l),
            0);
  ASSERT_EQ(fd_count(), before + 4); /* one socket per worker */
  int port = ame_listener_port(l);
  ASSERT_GT(port, 0);
  struct rt rt;
  rt_start(&rt, g_r);
  enum { N = 40 };
  int fd[N];
  for (int i = 0; i < N; i++) {
    fd[i] = tcp_client("127.0.0.1", port);
    echo_check(fd[i], "reuseport");
  }
  printf("# connections per worker:");
  for (int i = 0; i < 4; i++)
    printf(" %d", atomic_load(&g_rp_worker[i]));
  printf("\n");
  ASSERT_EQ(ame_reactor_call(g_r, close_listener_call, l), 0);
  /* Every socket of the group closes: new connections are refused. */
  probe_until_refused(port);
  for (int i = 0; i < N; i++) {
    echo_check(fd[i], "after close");
    close(fd[i]);
  }
  /* (Probes that the group accepted before it closed count too.) */
  ASSERT_WAIT(atomic_load(&g_echo.closes) == atomic_load(&g_echo.opens),
              10000);
  rt_stop(&rt);
  ASSERT_GE(atomic_load(&g_echo.opens), N);
  ASSERT_LE(atomic_load(&g_echo.opens), N + atomic_load(&g_pb.opened));
  ASSERT_EQ(atomic_load(&g_echo.opens), atomic_load(&g_echo.closes));
  ASSERT_EQ(atomic_load(&g_echo.close_errors), 0);
  rt_finish(g_r, fds);
}

/* REUSEPORT listeners closed while connections pour in (the reactor's own
** connects, on every worker), and the reactor stopped with a group open:
** every member closes once (ASan checks the frees), every stream gets one
** on_close, whatever the order the workers get to it. */
TEST_IMPL(tcp_reuseport_close) {
  int fds = fd_baseline();
  memset(&g_pb, 0, sizeof g_pb);
  g_r = rt_new(4, NULL);
  ame_listener_t *l[4];
  for (int i = 0; i < 4; i++)
    ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, AME_TCP_REUSEPORT, 0,
                             &echo_cbs, NULL, &l[i]),
              0);
  enum { PROBES = 300 };
  for (int i = 0; i < PROBES / 2; i++)
    ASSERT_EQ(ame_reactor_task(g_r, probe_call,
                               (void *)(intptr_t)ame_listener_port(l[i % 3])),
              0);
  struct rt rt;
  rt_start(&rt, g_r);
  for (int i = PROBES / 2; i < PROBES; i++) {
    ASSERT_EQ(ame_reactor_task(g_r, probe_call,
                               (void *)(intptr_t)ame_listener_port(l[i % 3])),
              0);
    if (i == PROBES / 2 + 20)
      for (int k = 0; k < 3; k++)
        ASSERT_EQ(ame_reactor_call(g_r, close_listener_call, l[k]), 0);
  }
  ASSERT_WAIT(atomic_load(&g_pb.closed) == PROBES, 20000);
  /* l[3] is still open when the reactor stops. */
  ASSERT_EQ(ame_reactor_call(g_r, stop_call, g_r), 0);
  rt_wait(&rt, 20000);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  printf("# %d connects: %d opened, %d refused; %" PRIu64 " accepted\n",
         PROBES, atomic_load(&g_pb.opened), atomic_load(&g_pb.refused),
         st.accepted);
  ASSERT_EQ(atomic_load(&g_pb.closed), PROBES);
  ASSERT_EQ(atomic_load(&g_echo.opens), atomic_load(&g_echo.closes));
  ASSERT_EQ(st.streams_open, 0);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Unix stream sockets.
*/

static struct cli g_cu = {.msg = "hello over a Unix socket"};
static struct {
  atomic_int opens, closes, status;
} g_un;

static int un_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_un.opens);
  return 0;
}

static void un_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  atomic_store(&g_un.status, status);
  commit_inc(tx, &g_un.closes);
}

static const ame_stream_cbs_t un_cbs = {.on_open = un_open,
                                        .on_close = un_close};

TEST_IMPL(unix_stream) {
  int fds = fd_baseline();
  char dir[] = "/tmp/ame-test-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(dir));
  char path[64], missing[64];
  snprintf(path, sizeof path, "%s/sock", dir);
  snprintf(missing, sizeof missing, "%s/missing", dir);
  g_r = rt_new(2, NULL);
  ame_listener_t *l, *l2;
  ASSERT_EQ(ame_unix_listen(g_r, path, 0, &echo_cbs, NULL, &l), 0);
  ASSERT_EQ(ame_listener_port(l), 0);
  struct sockaddr_storage sa;
  ASSERT_EQ(ame_listener_sockname(l, &sa), 0);
  ASSERT_EQ(sa.ss_family, AF_UNIX);
  ASSERT_STR_EQ(((struct sockaddr_un *)&sa)->sun_path, path);
  /* The socket file exists now: a second listen fails, and leaves it. */
  ASSERT_EQ(ame_unix_listen(g_r, path, 0, &never_cbs, NULL, &l2),
            -EADDRINUSE);
  struct stat st;
  ASSERT_EQ(stat(path, &st), 0);
  ame_stream_t *s;
  ASSERT_EQ(ame_unix_connect(g_r, path, &cli_cbs, &g_cu, &s), 0);
  ASSERT_EQ(ame_unix_connect(g_r, missing, &un_cbs, NULL, &s), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = unix_client(path);
  echo_check(fd, "outside client");
  close(fd);
  ASSERT_WAIT(atomic_load(&g_cu.closed) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_cu.opened), 1);
  ASSERT_EQ(atomic_load(&g_cu.status), 0);
  ASSERT_WAIT(atomic_load(&g_un.closes) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_un.opens), 0);
  ASSERT_EQ(atomic_load(&g_un.status), -ENOENT);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 2, 10000);
  /* Closing the listener removes its socket file. */
  ASSERT_EQ(ame_reactor_call(g_r, close_listener_call, l), 0);
  ASSERT_WAIT(stat(path, &st) != 0 && errno == ENOENT, 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_echo.opens), 2);
  ASSERT_EQ(atomic_load(&g_never), 0);
  ASSERT_EQ(rmdir(dir), 0);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** ame_listen_fd and ame_stream_adopt: sockets made elsewhere.
*/

static struct {
  atomic_int opens, closes;
  uintptr_t got;
} g_ad;

static int ad_open(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_ad.opens);
  return ame_stream_write(s, "adopted\n", 8);
}

static int ad_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  uintptr_t got = ame_load_word_tx(tx, &g_ad.got) + n;
  ame_store_word_tx(tx, &g_ad.got, got);
  return ame_stream_write(s, d, n);
}

static void ad_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_ad.closes);
}

static const ame_stream_cbs_t ad_cbs = {
    .on_open = ad_open, .on_data = ad_data, .on_close = ad_close};

TEST_IMPL(listen_fd_adopt) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  /* A listening socket of ours; the reactor takes a duplicate. */
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_storage sa;
  socklen_t len = sock_addr(&sa, "127.0.0.1", 0);
  ASSERT_EQ(bind(lfd, (struct sockaddr *)&sa, len), 0);
  ame_listener_t *l;
  ASSERT_EQ(ame_listen_fd(g_r, lfd, &echo_cbs, NULL, &l), -EINVAL); /* not
                                                             listening */
  ASSERT_EQ(listen(lfd, 16), 0);
  ASSERT_EQ(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
  int port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
  ASSERT_EQ(ame_listen_fd(g_r, lfd, &echo_cbs, NULL, &l), 0);
  ASSERT_EQ(ame_listener_port(l), port);
  ASSERT_EQ(ame_listen_fd(g_r, 1000000, &echo_cbs, NULL, &l), -EBADF);
  /* Connected sockets: one end of a socket pair, and a TCP connection. */
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  sock_timeouts(sv[1], RT_IO_TIMEOUT_MS);
  ame_stream_t *s;
  ASSERT_EQ(ame_stream_adopt(g_r, sv[0], &ad_cbs, NULL, &s), 0);
  close(sv[0]); /* the reactor has its own duplicate */
  int tfd = tcp_client("127.0.0.1", port); /* accepted by lfd's listener */
  ASSERT_EQ(ame_stream_adopt(g_r, 1000000, &ad_cbs, NULL, &s), -EBADF);
  struct rt rt;
  rt_start(&rt, g_r);
  echo_check(tfd, "through the adopted listener");
  char buf[8];
  recv_exact(sv[1], buf, 8);
  ASSERT(memcmp(buf, "adopted\n", 8) == 0);
  echo_check(sv[1], "through the adopted socket pair");
  close(sv[1]);
  close(tfd);
  ASSERT_WAIT(atomic_load(&g_ad.closes) == 1, 10000);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1, 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_ad.opens), 1);
  ASSERT_EQ(g_ad.got, strlen("through the adopted socket pair"));
  /* Our own listening socket is still ours, and still open. */
  ASSERT_EQ(fcntl(lfd, F_GETFD), FD_CLOEXEC);
  close(lfd);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** ame_stream_pause / ame_stream_resume.
*/

static struct {
  _Atomic(ame_stream_t *) s;
  atomic_int bytes, opens;
} g_pr;

static int pr_open(ame_tx_t *tx, ame_stream_t *s) {
  ame_stream_pause(s);
  atomic_store(&g_pr.s, s);
  commit_inc(tx, &g_pr.opens);
  return 0;
}

static void pr_add(void *arg) {
  atomic_fetch_add(&g_pr.bytes, (int)(uintptr_t)arg);
}

static int pr_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)s;
  (void)d;
  ASSERT_EQ(ame_tx_on_commit(tx, pr_add, (void *)(uintptr_t)n), 0);
  return 0;
}

static int pr_pause(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_stream_pause(arg);
  /* From whichever worker runs this call: */
  ame_stream_set_watermarks(arg, 2 << 20, 512 << 10);
  ASSERT_GE(ame_stream_fd(arg), 0);
  ASSERT_EQ(ame_stream_write_queue(arg), 0);
  return ame_stream_write(arg, "M", 1);
}

static int pr_resume(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_stream_resume(arg);
  return 0;
}

static const ame_stream_cbs_t pr_cbs = {
    .on_open = pr_open, .on_data = pr_data, .on_close = echo_close};

TEST_IMPL(stream_pause_resume) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &pr_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client("127.0.0.1", ame_listener_port(l));
  ASSERT_WAIT(atomic_load(&g_pr.opens) == 1, 10000);
  ame_stream_t *s = atomic_load(&g_pr.s);
  char buf[1000];
  memset(buf, 'p', sizeof buf);
  send_all(fd, buf, sizeof buf);
  /* Paused in on_open: nothing is read. */
  sleep_ms(100);
  ASSERT_EQ(atomic_load(&g_pr.bytes), 0);
  ASSERT_EQ(ame_reactor_call(g_r, pr_resume, s), 0);
  ASSERT_WAIT(atomic_load(&g_pr.bytes) == 1000, 10000);
  /* Pause again (from another worker's transaction), then resume. */
  ASSERT_EQ(ame_reactor_call(g_r, pr_pause, s), 0);
  /* pr_pause ends with a write, an op queued behind the pause on the
  ** stream's worker: once it arrives, the pause has taken effect. */
  char m;
  recv_exact(fd, &m, 1);
  ASSERT_EQ(m, 'M');
  send_all(fd, buf, 500);
  sleep_ms(100);
  ASSERT_EQ(atomic_load(&g_pr.bytes), 1000);
  ASSERT_EQ(ame_reactor_call(g_r, pr_resume, s), 0);
  ASSERT_WAIT(atomic_load(&g_pr.bytes) == 1500, 10000);
  close(fd);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1, 10000);
  rt_stop(&rt);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** ame_stream_shutdown: a half-close.  The peer reads to EOF, and can still
** send to us.
*/

static struct {
  uintptr_t got;
  atomic_int eof, closes, status;
} g_sh;

static int sh_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  int rc = ame_stream_write(s, "hello", 5);
  ame_stream_shutdown(s);
  return rc;
}

static int sh_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)s;
  uintptr_t got = ame_load_word_tx(tx, &g_sh.got);
  ASSERT_LE(got + n, 5);
  ASSERT(memcmp("after" + got, d, n) == 0);
  ame_store_word_tx(tx, &g_sh.got, got + n);
  return 0;
}

static int sh_eof(ame_tx_t *tx, ame_stream_t *s) {
  ASSERT_EQ(ame_load_word_tx(tx, &g_sh.got), 5);
  commit_inc(tx, &g_sh.eof);
  ame_stream_close(s);
  return 0;
}

static void sh_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  atomic_store(&g_sh.status, status);
  commit_inc(tx, &g_sh.closes);
}

static const ame_stream_cbs_t sh_cbs = {.on_open = sh_open,
                                        .on_data = sh_data,
                                        .on_eof = sh_eof,
                                        .on_close = sh_close};

TEST_IMPL(stream_shutdown) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &sh_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client("127.0.0.1", ame_listener_port(l));
  char buf[16];
  ASSERT_EQ(recv_to_eof(fd, buf, sizeof buf, 0), 5);
  ASSERT(memcmp(buf, "hello", 5) == 0);
  /* We got EOF, but our side is open. */
  send_all(fd, "aft", 3);
  sleep_ms(10);
  send_all(fd, "er", 2);
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  ASSERT_WAIT(atomic_load(&g_sh.closes) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_sh.eof), 1);
  ASSERT_EQ(atomic_load(&g_sh.status), 0);
  ASSERT_EQ(recv(fd, buf, sizeof buf, 0), 0);
  close(fd);
  rt_stop(&rt);
  ASSERT_EQ(g_sh.got, 5);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Watermarks.  Each byte a client sends makes the server write AMP bytes;
** the client sends without reading.  Over the high watermark the server
** stops reading, so on_data never starts with more than `high` queued;
** once the client reads, the queue falls under `low`, on_drain runs and
** reading resumes; every byte arrives, in order.
*/

enum { WM_HIGH = 64 << 10, WM_LOW = 16 << 10, WM_AMP = 32 };

static struct {
  uintptr_t out_off;         /* bytes written so far (transactional) */
  uintptr_t in_bytes;        /* bytes read so far (transactional) */
  atomic_size_t max_at_data; /* most queued when on_data started */
  atomic_size_t max_at_drain;
  atomic_int drains, datas, closes;
} g_wm;

static int wm_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  /* Small kernel buffers, so that the queue is ours to see. */
  int fd = ame_stream_fd(s), sz = 16 << 10;
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
  return 0;
}

static void max_store(atomic_size_t *m, size_t v) {
  size_t cur = atomic_load(m);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

static int wm_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)d;
  max_store(&g_wm.max_at_data, ame_stream_write_queue(s));
  commit_inc(tx, &g_wm.datas);
  uintptr_t off = ame_load_word_tx(tx, &g_wm.out_off);
  size_t m = n * WM_AMP;
  char *out = ame_tx_malloc(tx, m); /* freed by an abort, or below */
  ASSERT_NOT_NULL(out);
  pattern_fill(out, m, off);
  ame_store_word_tx(tx, &g_wm.out_off, off + m);
  ame_store_word_tx(tx, &g_wm.in_bytes,
                    ame_load_word_tx(tx, &g_wm.in_bytes) + n);
  int rc = ame_stream_write(s, out, m); /* copies */
  ame_tx_free(tx, out, 0);
  return rc;
}

static int wm_drain(ame_tx_t *tx, ame_stream_t *s) {
  max_store(&g_wm.max_at_drain, ame_stream_write_queue(s));
  commit_inc(tx, &g_wm.drains);
  return 0;
}

static void wm_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_wm.closes);
}

static const ame_stream_cbs_t wm_cbs = {.on_open = wm_open,
                                        .on_data = wm_data,
                                        .on_drain = wm_drain,
                                        .on_close = wm_close};

TEST_IMPL(stream_watermarks) {
  int fds = fd_baseline();
  ame_reactor_config_t cfg = {
      .workers = 2, .high_watermark = WM_HIGH, .low_watermark = WM_LOW};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &wm_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client_rcvbuf("127.0.0.1", ame_listener_port(l), 8 << 10);
  int sz = 16 << 10;
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
  /* Send without reading until sending blocks (the server stopped
  ** reading), or 1 MiB at most. */
  char req[1024];
  memset(req, 'r', sizeof req);
  size_t sent = 0;
  while (sent < (1u << 20)) {
    ssize_t k = send(fd, req, sizeof req, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0) {
      sent += (size_t)k;
      continue;
    }
    ASSERT(k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, 200 * (int)slow_factor()) == 0)
      break; /* blocked for good: the server is not reading */
  }
  printf("# sent %zu bytes before the server stopped reading\n", sent);
  ASSERT_LT(sent, 1u << 20);
  size_t in_at_block = tx_peek(&g_wm.in_bytes);
  ASSERT_LT(in_at_block, sent); /* it really stopped reading */
  /* Now read everything, slowly at first. */
  size_t want = sent * WM_AMP, got = 0;
  char *buf = malloc(1 << 16);
  ASSERT_NOT_NULL(buf);
  while (got < want) {
    size_t n = want - got < (1 << 16) ? want - got : (1 << 16);
    ssize_t k = recv(fd, buf, n, 0);
    if (k <= 0)
      AME_TEST_FAIL_("recv: %s after %zu of %zu bytes",
                     k < 0 ? strerror(errno) : "EOF", got, want);
    ASSERT_EQ(pattern_check(buf, (size_t)k, got), (size_t)k);
    got += (size_t)k;
  }
  free(buf);
  close(fd);
  ASSERT_WAIT(atomic_load(&g_wm.closes) == 1, 10000);
  rt_stop(&rt);
  printf("# %d on_data, %d on_drain; most queued at on_data %zu, at "
         "on_drain %zu\n",
         atomic_load(&g_wm.datas), atomic_load(&g_wm.drains),
         atomic_load(&g_wm.max_at_data), atomic_load(&g_wm.max_at_drain));
  ASSERT_EQ(g_wm.in_bytes, sent);
  ASSERT_GE(atomic_load(&g_wm.drains), 1);
  ASSERT_LE(atomic_load(&g_wm.max_at_data), WM_HIGH);
  ASSERT_LE(atomic_load(&g_wm.max_at_drain), WM_LOW);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Watermarks set in a transaction take effect at commit, and not at all
** for an attempt that aborts.  Two streams over socket pairs each write
** WD_LEN bytes from on_open, far under the reactor's high watermark (1
** MiB) and far over WD_HIGH, to a peer that has not read yet.  Stream 0's
** first attempt sets WD_HIGH and WD_LOW and aborts: its queue never goes
** over its high watermark, so no on_drain.  Stream 1 sets them in the
** attempt that commits, before its write: over the high watermark, then
** on_drain once the peer has read.
*/

enum { WD_LEN = 256 << 10, WD_HIGH = 4096, WD_LOW = 1024 };

static struct {
  atomic_int opens, drains[2], closes[2];
} g_wd;

static char *g_wd_buf;

static int wd_open(ame_tx_t *tx, ame_stream_t *s) {
  uintptr_t k = (uintptr_t)ame_handle_data(s);
  if (k == 0 && ame_tx_attempt(tx) == 0) {
    ame_stream_set_watermarks(s, WD_HIGH, WD_LOW);
    ame_tx_abort(tx);
  }
  if (k == 1) ame_stream_set_watermarks(s, WD_HIGH, WD_LOW);
  commit_inc(tx, &g_wd.opens);
  return ame_stream_write(s, g_wd_buf, WD_LEN);
}

static int wd_drain(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_wd.drains[(uintptr_t)ame_handle_data(s)]);
  return 0;
}

static void wd_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)status;
  commit_inc(tx, &g_wd.closes[(uintptr_t)ame_handle_data(s)]);
}

static const ame_stream_cbs_t wd_cbs = {
    .on_open = wd_open, .on_drain = wd_drain, .on_close = wd_close};

TEST_IMPL(stream_watermarks_deferred) {
  int fds = fd_baseline();
  g_wd_buf = calloc(1, WD_LEN);
  ASSERT_NOT_NULL(g_wd_buf);
  g_r = rt_new(1, NULL);
  int sv[2][2];
  for (uintptr_t k = 0; k < 2; k++) {
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[k]), 0);
    int sz = 4096; /* small: the queue is ours to see */
    ASSERT_EQ(setsockopt(sv[k][0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz),
              0);
    sock_timeouts(sv[k][1], RT_IO_TIMEOUT_MS);
    ame_stream_t *s;
    ASSERT_EQ(ame_stream_adopt(g_r, sv[k][0], &wd_cbs, (void *)k, &s), 0);
    close(sv[k][0]);
  }
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_wd.opens) == 2, 10000);
  char *buf = malloc(WD_LEN);
  ASSERT_NOT_NULL(buf);
  for (int k = 0; k < 2; k++) {
    recv_exact(sv[k][1], buf, WD_LEN);
    close(sv[k][1]); /* EOF: the stream closes */
    ASSERT_WAIT(atomic_load(&g_wd.closes[k]) == 1, 10000);
  }
  free(buf);
  rt_stop(&rt);
  printf("# on_drain: %d after the aborted attempt's watermarks, %d after "
         "the committed ones\n",
         atomic_load(&g_wd.drains[0]), atomic_load(&g_wd.drains[1]));
  ASSERT_EQ(atomic_load(&g_wd.drains[0]), 0);
  ASSERT_EQ(atomic_load(&g_wd.drains[1]), 1);
  free(g_wd_buf);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A very large write (64 MiB in one ame_stream_write) arrives intact, and
** so does a very large upload.
*/

static char *g_big;
static size_t g_big_len;
static struct {
  uintptr_t in_off;
  atomic_int closes;
} g_lw;

static int lw_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  int rc = ame_stream_write(s, g_big, g_big_len);
  if (rc == 0)
    ame_stream_shutdown(s);
  return rc;
}

static int lw_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)s;
  uintptr_t off = ame_load_word_tx(tx, &g_lw.in_off);
  ASSERT_EQ(pattern_check(d, n, off), n);
  ame_store_word_tx(tx, &g_lw.in_off, off + n);
  return 0;
}

static int lw_eof(ame_tx_t *tx, ame_stream_t *s) {
  uint64_t n = ame_load_word_tx(tx, &g_lw.in_off);
  (void)n;
  ame_stream_close(s);
  return 0;
}

static void lw_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_lw.closes);
}

static const ame_stream_cbs_t lw_cbs = {.on_open = lw_open,
                                        .on_data = lw_data,
                                        .on_eof = lw_eof,
                                        .on_close = lw_close};

static void *lw_upload(void *arg) {
  int fd = *(int *)arg;
  send_all(fd, g_big, g_big_len);
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  return NULL;
}

TEST_IMPL(stream_large_write) {
  int fds = fd_baseline();
  g_big_len = (size_t)64 << 20;
  g_big = malloc(g_big_len);
  char *in = malloc(g_big_len + 1);
  ASSERT_NOT_NULL(g_big);
  ASSERT_NOT_NULL(in);
  pattern_fill(g_big, g_big_len, 0);
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &lw_cbs, NULL, &l), 0);
  ame_stream_t *s;
  ASSERT_EQ(ame_stream_write(NULL, "x", 1), -EINVAL);
  (void)s;
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client("127.0.0.1", ame_listener_port(l));
  pthread_t up;
  thread_start(&up, lw_upload, &fd);
  ssize_t n = recv_to_eof(fd, in, g_big_len + 1, 0);
  ASSERT_EQ(n, (ssize_t)g_big_len);
  ASSERT(memcmp(in, g_big, g_big_len) == 0);
  thread_join(up);
  ASSERT_WAIT(atomic_load(&g_lw.closes) == 1, 20000);
  close(fd);
  rt_stop(&rt);
  ASSERT_EQ(g_lw.in_off, g_big_len);
  free(in);
  free(g_big);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Every way a stream ends calls on_close once, and frees the stream once:
** the server closes (after flushing) or aborts, the client closes or
** resets; the stream accessors work while it is open, and in on_close
** (its descriptor closed, its number perhaps another socket's already)
** answer for none.
*/

enum { CF_N = 24 };
static struct {
  int lport;
  atomic_int opens, closes, bad_status;
  atomic_int status_of[4][8]; /* [kind][status class] */
} g_cf;

static int cf_open(ame_tx_t *tx, ame_stream_t *s) {
  ASSERT_GE(ame_stream_fd(s), 0);
  struct sockaddr_storage sa;
  ASSERT_EQ(ame_stream_sockname(s, &sa), 0);
  ASSERT_EQ(ntohs(((struct sockaddr_in *)&sa)->sin_port), g_cf.lport);
  ASSERT_EQ(ame_stream_peername(s, &sa), 0);
  ASSERT_EQ(sa.ss_family, AF_INET);
  ASSERT_LT(ame_stream_worker(s), 2);
  ASSERT_EQ(ame_stream_nodelay(s, 1), 0);
  ame_handle_set_name(s, "cf-stream");
  ASSERT_EQ(ame_stream_write_queue(s), 0);
  commit_inc(tx, &g_cf.opens);
  return 0;
}

static int cf_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)tx;
  ASSERT_GE(n, 1);
  int rc = ame_stream_write(s, d, n);
  if (d[0] == 'c') {
    ame_stream_close(s);
    ame_stream_close(s); /* twice is once */
  } else if (d[0] == 'a') {
    ame_stream_abort(s);
  }
  return rc;
}

static void cf_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  struct sockaddr_storage sa;
  ASSERT_EQ(ame_stream_fd(s), -1);
  ASSERT_EQ(ame_stream_peername(s, &sa), -EBADF);
  ASSERT_EQ(ame_stream_sockname(s, &sa), -EBADF);
  if (status != 0 && status != -ECONNRESET)
    commit_inc(tx, &g_cf.bad_status);
  commit_inc(tx, &g_cf.closes);
}

static const ame_stream_cbs_t cf_cbs = {
    .on_open = cf_open, .on_data = cf_data, .on_close = cf_close};

TEST_IMPL(stream_close_kinds) {
  int fds = fd_baseline();
  memset(&g_cf, 0, sizeof g_cf);
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &cf_cbs, NULL, &l), 0);
  g_cf.lport = ame_listener_port(l);
  struct rt rt;
  rt_start(&rt, g_r);
  for (int i = 0; i < CF_N; i++) {
    int fd = tcp_client("127.0.0.1", g_cf.lport);
    char buf[16];
    switch (i % 4) {
    case 0: /* the server closes after writing */
      echo_check(fd, "close");
      ASSERT_EQ(recv_to_eof(fd, buf, sizeof buf, 0), 0);
      close(fd);
      break;
    case 1: { /* the server aborts: a reset, or EOF */
      send_all(fd, "abort", 5);
      ssize_t n = recv_to_eof(fd, buf, sizeof buf, 1);
      ASSERT(n == -ECONNRESET || n == 0 || n == 5);
      close(fd);
      break;
    }
    case 2: /* the client closes */
      echo_check(fd, "x");
      close(fd);
      break;
    case 3: /* the client resets */
      echo_check(fd, "x");
      close_reset(fd);
      break;
    }
  }
  ASSERT_WAIT(atomic_load(&g_cf.closes) == CF_N, 10000);
  sleep_ms(20);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_cf.opens), CF_N);
  ASSERT_EQ(atomic_load(&g_cf.closes), CF_N);
  ASSERT_EQ(atomic_load(&g_cf.bad_status), 0);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  ASSERT_EQ(st.streams_open, 0);
  ASSERT_EQ(st.accepted, CF_N);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A close (ame_stream_close, or a graceful stop) with input the program
** has not read loses nothing it wrote: the peer gets every byte, then an
** EOF, not a reset, even though it sent more after the close was asked
** for, and on_close reports 0.  (Closing the socket with unread input
** makes the kernel send a reset, which discards what the peer had not
** read yet.)
*/

enum { LG_ANSWER = 2 << 20 };
static struct {
  char *answer;
  atomic_int closes, bad_status;
} g_lg;

/* The first request is answered: with a close ("c"), or by pausing (and
** the reactor's stop closes). */
static int lg_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)tx;
  (void)n;
  int rc = ame_stream_write(s, g_lg.answer, LG_ANSWER);
  if (d[0] == 'c')
    ame_stream_close(s);
  else
    ame_stream_pause(s);
  return rc;
}

static void lg_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  if (status != 0)
    commit_inc(tx, &g_lg.bad_status);
  commit_inc(tx, &g_lg.closes);
}

static const ame_stream_cbs_t lg_cbs = {.on_data = lg_data,
                                        .on_close = lg_close};

/* Send req, wait for the answer's first byte (the server has asked for
** its close or paused by then: the same commit), send 8 more bytes that
** the server will not read, and, if r, stop r.  Then the whole answer and
** an EOF must come. */
static void lg_client(int port, const char *req, ame_reactor_t *r) {
  int fd = tcp_client_rcvbuf("127.0.0.1", port, 65536);
  send_all(fd, req, 1);
  char *in = malloc(LG_ANSWER + 1);
  ASSERT_NOT_NULL(in);
  recv_exact(fd, in, 1);
  send_all(fd, "GET /b\r\n", 8);
  if (r)
    ame_reactor_stop(r);
  ssize_t n = recv_to_eof(fd, in + 1, LG_ANSWER, 1);
  ASSERT_EQ(n, (ssize_t)LG_ANSWER - 1);
  ASSERT(memcmp(in, g_lg.answer, LG_ANSWER) == 0);
  close(fd);
  free(in);
}

TEST_IMPL(stream_close_linger) {
  int fds = fd_baseline();
  memset(&g_lg, 0, sizeof g_lg);
  g_lg.answer = malloc(LG_ANSWER);
  ASSERT_NOT_NULL(g_lg.answer);
  pattern_fill(g_lg.answer, LG_ANSWER, 0);
  g_r = rt_new(1, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &lg_cbs, NULL, &l), 0);
  int port = ame_listener_port(l);
  struct rt rt;
  rt_start(&rt, g_r);
  lg_client(port, "c", NULL);
  ASSERT_WAIT(atomic_load(&g_lg.closes) == 1, 10000);
  lg_client(port, "p", g_r);
  rt_wait(&rt, 20000);
  ASSERT_EQ(atomic_load(&g_lg.closes), 2);
  ASSERT_EQ(atomic_load(&g_lg.bad_status), 0);
  free(g_lg.answer);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A stream that got EOF and then has its reading resumed (by the
** watermarks, when a large answer written in on_eof drains, or by
** ame_stream_resume) does not report the EOF again.
*/

static struct {
  atomic_int eofs, drains, closes;
} g_eo;

static int eo_eof(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_eo.eofs);
  ame_stream_resume(s); /* reading is stopped: this must not restart it */
  return ame_stream_write(s, g_big, g_big_len);
}

static int eo_drain(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_eo.drains);
  return 0;
}

static void eo_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  (void)status;
  commit_inc(tx, &g_eo.closes);
}

static int eo_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  /* A small kernel buffer: the answer has to wait in the write queue. */
  int sz = 16 << 10;
  ASSERT_EQ(setsockopt(ame_stream_fd(s), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz),
            0);
  return 0;
}

static const ame_stream_cbs_t eo_cbs = {.on_open = eo_open,
                                        .on_eof = eo_eof,
                                        .on_drain = eo_drain,
                                        .on_close = eo_close};

TEST_IMPL(stream_eof_once) {
  int fds = fd_baseline();
  g_big_len = (size_t)4 << 20; /* over the high watermark (1 MiB) */
  g_big = malloc(g_big_len);
  ASSERT_NOT_NULL(g_big);
  pattern_fill(g_big, g_big_len, 0);
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &eo_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client_rcvbuf("127.0.0.1", ame_listener_port(l), 16 << 10);
  send_all(fd, "request", 7);
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  char *buf = malloc(g_big_len);
  ASSERT_NOT_NULL(buf);
  recv_exact(fd, buf, g_big_len);
  ASSERT_EQ(pattern_check(buf, g_big_len, 0), g_big_len);
  ASSERT_WAIT(atomic_load(&g_eo.drains) >= 1, 10000);
  /* Nothing more comes: the EOF was not seen twice. */
  sleep_ms(100);
  char c;
  ASSERT_EQ(recv(fd, &c, 1, MSG_DONTWAIT), -1);
  ASSERT_EQ(errno, EAGAIN);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_eo.eofs), 1);
  ASSERT_EQ(atomic_load(&g_eo.closes), 1);
  close(fd);
  free(buf);
  free(g_big);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Shutdown and close asked for in the transaction that connects (before
** the connection exists) happen once it is connected.
*/

static struct {
  uintptr_t got;       /* transactional */
  atomic_int eofs, closes, cli_opens, cli_closes;
} g_sc;

static int sc_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)s;
  uintptr_t got = ame_load_word_tx(tx, &g_sc.got);
  ASSERT_LE(got + n, 5);
  ASSERT(memcmp("hello" + got, d, n) == 0);
  ame_store_word_tx(tx, &g_sc.got, got + n);
  return 0;
}

static int sc_eof(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_sc.eofs);
  ame_stream_close(s);
  return 0;
}

static void sc_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_sc.closes);
}

static const ame_stream_cbs_t sc_server = {
    .on_data = sc_data, .on_eof = sc_eof, .on_close = sc_close};

static int sc_cli_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_sc.cli_opens);
  return 0;
}

static void sc_cli_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_sc.cli_closes);
}

static const ame_stream_cbs_t sc_client = {.on_open = sc_cli_open,
                                           .on_close = sc_cli_close};

static int sc_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  int port = (int)(intptr_t)arg;
  ame_stream_t *s;
  /* 1: shut down at once; 2: write, then shut down. */
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", port, &sc_client, NULL, &s), 0);
  ame_stream_shutdown(s);
  ASSERT_EQ(ame_tcp_connect(g_r, "127.0.0.1", port, &sc_client, NULL, &s), 0);
  ASSERT_EQ(ame_stream_write(s, "hel", 3), 0);
  ASSERT_EQ(ame_stream_write(s, "lo", 2), 0);
  ame_stream_shutdown(s);
  return 0;
}

TEST_IMPL(connect_then_shutdown) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &sc_server, NULL, &l),
            0);
  ASSERT_EQ(ame_reactor_call(g_r, sc_call,
                             (void *)(intptr_t)ame_listener_port(l)),
            0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_sc.closes) == 2, 10000);
  ASSERT_EQ(atomic_load(&g_sc.eofs), 2);
  ASSERT_EQ(tx_peek(&g_sc.got), 5);
  /* The server closed; the clients see EOF and, without on_eof, close. */
  ASSERT_WAIT(atomic_load(&g_sc.cli_closes) == 2, 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_sc.cli_opens), 2);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** sockio.h: the socket calls the reactor's listeners and the Python
** binding's streams share, and their error convention.
*/

static void wait_readable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
}

TEST_IMPL(sockio) {
  int fds = fd_baseline();
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_storage sa;
  socklen_t len = sock_addr(&sa, "127.0.0.1", 0);
  ASSERT_EQ(bind(lfd, (struct sockaddr *)&sa, len), 0);
  /* Not listening: an error of the listener, not "none left". */
  ASSERT_EQ(ame__sock_accept(lfd, NULL, NULL), -EINVAL);
  ASSERT_EQ(listen(lfd, 16), 0);
  ASSERT_EQ(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
  int port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
  ASSERT_EQ(ame__sock_accept(lfd, NULL, NULL), -EAGAIN);
  int c = tcp_client("127.0.0.1", port);
  wait_readable(lfd);
  struct sockaddr_storage peer;
  socklen_t plen = sizeof peer;
  int s = ame__sock_accept(lfd, &peer, &plen);
  ASSERT(s >= 0);
  ASSERT_EQ(peer.ss_family, AF_INET);
  ASSERT(fcntl(s, F_GETFL) & O_NONBLOCK);
  ASSERT_EQ(fcntl(s, F_GETFD), FD_CLOEXEC);
  ASSERT_EQ(ame__sock_accept(lfd, NULL, NULL), -EAGAIN);
  /* recv: nothing yet, data, then the peer's EOF. */
  char b[16];
  ASSERT_EQ(ame__sock_recv(s, 0, b, sizeof b), -EAGAIN);
  ASSERT_EQ(ame__sock_send(s, "hello", 5), 5);
  recv_exact(c, b, 5);
  ASSERT(memcmp(b, "hello", 5) == 0);
  ASSERT_EQ(send(c, "ping", 4, 0), 4);
  wait_readable(s);
  ASSERT_EQ(ame__sock_recv(s, 0, b, sizeof b), 4);
  close(c);
  wait_readable(s);
  ASSERT_EQ(ame__sock_recv(s, 0, b, sizeof b), 0);
  /* send to a closed peer: an error (no SIGPIPE), not "would block". */
  ssize_t n = 1;
  for (int i = 0; i < 1000 && n > 0; i++) {
    n = ame__sock_send(s, "x", 1);
    if (n > 0) usleep(1000);
  }
  ASSERT(n == -EPIPE || n == -ECONNRESET);
  close(s);
  /* A full send buffer is "would block". */
  c = tcp_client_rcvbuf("127.0.0.1", port, 4096);
  wait_readable(lfd);
  s = ame__sock_accept(lfd, NULL, NULL);
  ASSERT(s >= 0);
  static char big[65536];
  for (int i = 0; i < 10000 && (n = ame__sock_send(s, big, sizeof big)) > 0;
       i++) {
  }
  ASSERT_EQ(n, -EAGAIN);
  close(s);
  close(c);
  /* A pipe: read(), same convention. */
  int p[2];
  ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  ASSERT_EQ(ame__sock_recv(p[0], 1, b, sizeof b), -EAGAIN);
  ASSERT_EQ(write(p[1], "pipe", 4), 4);
  ASSERT_EQ(ame__sock_recv(p[0], 1, b, sizeof b), 4);
  close(p[1]);
  ASSERT_EQ(ame__sock_recv(p[0], 1, b, sizeof b), 0);
  close(p[0]);
  close(lfd);
  ASSERT_EQ(fd_count(), fds);
}

/* ------------------------------------------------------------------------
** streambuf.h: the input buffer and output queue both kinds of stream
** buffer with.
*/

TEST_IMPL(streambuf) {
  int fds = fd_baseline();
  /* Input buffer: append, consume from the front, take, put back. */
  ame__ibuf_t in = {0};
  ASSERT_EQ(ame__ibuf_append(&in, "hello ", 6), 0);
  ASSERT_EQ(ame__ibuf_append(&in, "world", 5), 0);
  ASSERT_EQ(in.len, 11);
  ame__ibuf_consume(&in, 6);
  ASSERT_EQ(in.len, 5);
  ASSERT(memcmp(ame__ibuf_data(&in), "world", 5) == 0);
  /* Appends after a consume keep the order (sliding, or growing). */
  static char big[10000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
  ASSERT_EQ(ame__ibuf_append(&in, big, sizeof big), 0);
  ASSERT_EQ(in.len, 5 + sizeof big);
  ASSERT(memcmp(ame__ibuf_data(&in), "world", 5) == 0);
  ASSERT(memcmp(ame__ibuf_data(&in) + 5, big, sizeof big) == 0);
  ame__ibuf_t taken = {0};
  ame__ibuf_take(&in, &taken);
  ASSERT_EQ(in.len, 0);
  ASSERT_NULL(in.p);
  ASSERT_EQ(taken.len, 5 + sizeof big);
  ASSERT_EQ(ame__ibuf_append(&in, "!", 1), 0); /* came in meanwhile */
  ASSERT_EQ(ame__ibuf_putback(&in, &taken), 0);
  ASSERT_NULL(taken.p);
  ASSERT_EQ(in.len, 6 + sizeof big);
  ASSERT(memcmp(ame__ibuf_data(&in), "world", 5) == 0);
  ASSERT_EQ(ame__ibuf_data(&in)[5 + sizeof big], '!');
  ame__ibuf_consume(&in, in.len);
  ASSERT_EQ(in.len, 0);
  ame__ibuf_free(&in);

  /* Output queue: small writes share a chunk, a big one gets its own;
  ** splice moves them whole; flush sends in order until the kernel is
  ** full, then the rest once there is room. */
  ame__oqueue_t a = {0}, b = {0};
  ASSERT_EQ(ame__oq_append(&a, "ab", 2), 0);
  ASSERT_EQ(ame__oq_append(&a, "cd", 2), 0);
  ASSERT_PTR_EQ(a.head, a.tail);
  ASSERT_EQ(a.bytes, 4);
  static char huge[1 << 20];
  for (size_t i = 0; i < sizeof huge; i++) huge[i] = (char)(i * 7);
  ASSERT_EQ(ame__oq_append(&b, huge, sizeof huge), 0);
  ame__oq_splice(&a, &b);
  ASSERT_NULL(b.head);
  ASSERT_EQ(b.bytes, 0);
  ASSERT_EQ(a.bytes, 4 + sizeof huge);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int sz = 4096;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  size_t sent = 0, got = 0;
  int rc = ame__oq_flush(&a, sv[0], &sent);
  ASSERT_EQ(rc, -EAGAIN);
  ASSERT(sent > 0 && sent < 4 + sizeof huge);
  ASSERT_EQ(a.bytes, 4 + sizeof huge - sent);
  static char rbuf[(1 << 20) + 4];
  for (int i = 0; i < 100000 && got < sizeof rbuf; i++) {
    ssize_t n = ame__sock_recv(sv[1], 0, rbuf + got, sizeof rbuf - got);
    if (n > 0) got += (size_t)n;
    if (a.head) {
      rc = ame__oq_flush(&a, sv[0], &sent);
      ASSERT(rc == 0 || rc == -EAGAIN);
    }
    if (n == -EAGAIN) wait_readable(sv[1]);
  }
  ASSERT_EQ(rc, 0);
  ASSERT_NULL(a.head);
  ASSERT_NULL(a.tail);
  ASSERT_EQ(a.bytes, 0);
  ASSERT_EQ(got, sizeof rbuf);
  ASSERT(memcmp(rbuf, "abcd", 4) == 0);
  ASSERT(memcmp(rbuf + 4, huge, sizeof huge) == 0);
  /* The peer gone: an error, not "would block"; clear drops the rest. */
  ASSERT_EQ(ame__oq_append(&a, "x", 1), 0);
  close(sv[1]);
  rc = ame__oq_flush(&a, sv[0], &sent);
  ASSERT(rc == -EPIPE || rc == -ECONNRESET);
  ASSERT_EQ(sent, 0);
  ASSERT_EQ(a.bytes, 1);
  ame__oq_clear(&a);
  ASSERT_NULL(a.head);
  ASSERT_EQ(a.bytes, 0);
  close(sv[0]);
  ASSERT_EQ(fd_count(), fds);
}
