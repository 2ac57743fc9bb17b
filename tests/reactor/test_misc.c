/*
** tests/reactor/test_misc.c — the handles and entries that are not
** streams: UDP (send, receive, multicast membership), signals, name
** resolution, watching descriptors, calls posted from foreign threads,
** tasks, and the reactor's counters and report.
*/
#include "reactor-test.h"

#include <netdb.h>

static ame_reactor_t *g_r;

static int stop_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  ame_reactor_stop(arg);
  return 0;
}

/* ------------------------------------------------------------------------
** UDP: two reactor sockets play ping-pong; an outside socket is answered;
** IPv6; errors.
*/

enum { UDP_N = 100 };
static struct {
  ame_udp_t *a, *b, *c;
  atomic_int pongs, pings, ext;
  uintptr_t seen[UDP_N]; /* transactional: each pong once */
} g_udp;

static int udp_b_recv(ame_tx_t *tx, ame_udp_t *u, const char *data,
                      size_t len, const struct sockaddr *from) {
  (void)tx;
  ASSERT_PTR_EQ(u, g_udp.b);
  ASSERT_PTR_EQ(ame_handle_data(u), &g_udp);
  ASSERT_GE(len, 4);
  ASSERT(memcmp(data, "ping", 4) == 0 || memcmp(data, "ext!", 4) == 0);
  char reply[64];
  ASSERT_LT(len, sizeof reply);
  memcpy(reply, data, len);
  memcpy(reply, "pong", 4);
  if (memcmp(data, "ping", 4) == 0) {
    ASSERT_EQ(from->sa_family, AF_INET);
    ASSERT_EQ(ntohs(((const struct sockaddr_in *)from)->sin_port),
              ame_udp_port(g_udp.a));
    commit_inc(tx, &g_udp.pings);
  }
  return ame_udp_send(u, from, reply, len);
}

static int udp_a_recv(ame_tx_t *tx, ame_udp_t *u, const char *data,
                      size_t len, const struct sockaddr *from) {
  (void)u;
  (void)from;
  ASSERT_EQ(len, 8);
  ASSERT(memcmp(data, "pong", 4) == 0);
  uint32_t k;
  memcpy(&k, data + 4, 4);
  ASSERT_LT(k, UDP_N);
  ASSERT_EQ(ame_load_word_tx(tx, &g_udp.seen[k]), 0);
  ame_store_word_tx(tx, &g_udp.seen[k], 1);
  commit_inc(tx, &g_udp.pongs);
  return 0;
}

static int udp_c_recv(ame_tx_t *tx, ame_udp_t *u, const char *data,
                      size_t len, const struct sockaddr *from) {
  ASSERT_EQ(from->sa_family, AF_INET6);
  commit_inc(tx, &g_udp.ext);
  return ame_udp_send(u, from, data, len);
}

static int udp_ping_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  struct sockaddr_storage to;
  sock_addr(&to, "127.0.0.1", ame_udp_port(g_udp.b));
  for (uint32_t k = 0; k < UDP_N; k++) {
    char msg[8];
    memcpy(msg, "ping", 4);
    memcpy(msg + 4, &k, 4);
    ASSERT_EQ(ame_udp_send(g_udp.a, (struct sockaddr *)&to, msg, 8), 0);
  }
  static char huge[65508];
  ASSERT_EQ(ame_udp_send(g_udp.a, (struct sockaddr *)&to, huge, sizeof huge),
            -EMSGSIZE);
  ASSERT_EQ(ame_udp_send(g_udp.a, NULL, "x", 1), -EINVAL);
  return 0;
}

static int udp_close_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ame_udp_close(g_udp.a);
  ame_udp_close(g_udp.b);
  if (g_udp.c)
    ame_udp_close(g_udp.c);
  return 0;
}

/* An outside socket sends msg to port (host) and returns the answer. */
static void udp_ask(const char *host, int port, const char *msg,
                    const char *want) {
  struct sockaddr_storage to;
  socklen_t len = sock_addr(&to, host, port);
  int fd = socket(to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sock_timeouts(fd, 200);
  char buf[64];
  /* Datagrams may be lost: ask again until answered. */
  for (int tries = 0;; tries++) {
    ASSERT_LT(tries, 50);
    ASSERT_EQ(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&to, len),
              (ssize_t)strlen(msg));
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      continue;
    ASSERT_EQ(n, (ssize_t)strlen(want));
    ASSERT(memcmp(buf, want, (size_t)n) == 0);
    break;
  }
  close(fd);
}

TEST_IMPL(udp_send_recv) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ASSERT_EQ(ame_udp_bind(g_r, "127.0.0.1", 0, 0, udp_a_recv, NULL, &g_udp.a),
            0);
  ASSERT_EQ(
      ame_udp_bind(g_r, "127.0.0.1", 0, 0, udp_b_recv, &g_udp, &g_udp.b), 0);
  ASSERT_GT(ame_udp_port(g_udp.a), 0);
  ASSERT_GE(ame_udp_fd(g_udp.a), 0);
  ASSERT_NE(ame_udp_port(g_udp.a), ame_udp_port(g_udp.b));
  int before = fd_count();
  ame_udp_t *u;
  ASSERT_EQ(ame_udp_bind(g_r, "127.0.0.1", ame_udp_port(g_udp.b), 0,
                         udp_a_recv, NULL, &u),
            -EADDRINUSE);
  ASSERT_EQ(ame_udp_bind(g_r, "nowhere", 0, 0, udp_a_recv, NULL, &u),
            -EINVAL);
  ASSERT_EQ(ame_udp_bind(g_r, "127.0.0.1", 0, 0, NULL, NULL, &u), -EINVAL);
  ASSERT_EQ(fd_count(), before);
  if (have_ipv6_loopback())
    ASSERT_EQ(ame_udp_bind(g_r, "::1", 0, 0, udp_c_recv, NULL, &g_udp.c), 0);
  else
    printf("# no IPv6 loopback: IPv4 only\n");
  ASSERT_EQ(ame_reactor_call(g_r, udp_ping_call, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_udp.pongs) == UDP_N, 10000);
  udp_ask("127.0.0.1", ame_udp_port(g_udp.b), "ext!12", "pong12");
  if (g_udp.c)
    udp_ask("::1", ame_udp_port(g_udp.c), "over v6", "over v6");
  /* Once b is closed, a datagram to its port is refused.  (The probe is
  ** made before the close: the test's thread makes no descriptor while
  ** workers close theirs, which ThreadSanitizer would take for a race,
  ** as libuv closes them with a raw system call.) */
  struct sockaddr_storage to;
  socklen_t tolen = sock_addr(&to, "127.0.0.1", ame_udp_port(g_udp.b));
  int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(probe, 0);
  ASSERT_EQ(connect(probe, (struct sockaddr *)&to, tolen), 0);
  sock_timeouts(probe, 100);
  ASSERT_EQ(ame_reactor_call(g_r, udp_close_call, NULL), 0);
  for (int tries = 0;; tries++) {
    ASSERT_LT(tries, 200 * (int)slow_factor());
    char buf[16];
    if (send(probe, "ext!", 4, 0) < 0 && errno == ECONNREFUSED)
      break;
    ssize_t n = recv(probe, buf, sizeof buf, 0);
    if (n < 0 && errno == ECONNREFUSED)
      break;
  }
  rt_stop(&rt);
  close(probe);
  ASSERT_EQ(atomic_load(&g_udp.pings), UDP_N);
  ASSERT_EQ(atomic_load(&g_udp.pongs), UDP_N);
  rt_finish(g_r, fds);
}

/* Multicast: join a group on the loopback interface, receive a datagram
** sent to it, leave.  Skipped where the sandbox has no multicast. */
static atomic_int g_mc_got;

static int mc_recv(ame_tx_t *tx, ame_udp_t *u, const char *data, size_t len,
                   const struct sockaddr *from) {
  (void)u;
  (void)from;
  ASSERT_EQ(len, 5);
  ASSERT(memcmp(data, "group", 5) == 0);
  commit_inc(tx, &g_mc_got);
  return 0;
}

TEST_IMPL(udp_multicast) {
  int fds = fd_baseline();
  const char *group = "239.255.77.1";
  g_r = rt_new(2, NULL);
  ame_udp_t *u;
  ASSERT_EQ(ame_udp_bind(g_r, "0.0.0.0", 0, AME_TCP_REUSEPORT, mc_recv, NULL,
                         &u),
            0);
  ASSERT_EQ(ame_udp_membership(u, "not-a-group", NULL, 1), -EINVAL);
  ASSERT_EQ(ame_udp_membership(u, group, "not-an-address", 1), -EINVAL);
  ASSERT_EQ(ame_udp_membership(NULL, group, NULL, 1), -EINVAL);
  int rc = ame_udp_membership(u, group, "127.0.0.1", 1);
  if (rc != 0) {
    printf("# cannot join %s on 127.0.0.1 here (%s): multicast part "
           "skipped\n",
           group, strerror(-rc));
    ame_reactor_free(g_r);
    TEST_SKIP("no multicast on the loopback interface");
  }
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct in_addr lo = {htonl(INADDR_LOOPBACK)};
  unsigned char loop = 1;
  ASSERT_EQ(setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo), 0);
  ASSERT_EQ(setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop),
            0);
  struct sockaddr_storage to;
  socklen_t len = sock_addr(&to, group, ame_udp_port(u));
  for (int i = 0; i < 100 && atomic_load(&g_mc_got) == 0; i++) {
    if (sendto(fd, "group", 5, 0, (struct sockaddr *)&to, len) != 5) {
      int e = errno;
      close(fd);
      rt_stop(&rt);
      ame_reactor_free(g_r);
      TEST_SKIP("cannot send to %s here: %s", group, strerror(e));
    }
    WAIT_UNTIL(atomic_load(&g_mc_got) > 0, 50);
  }
  close(fd);
  ASSERT_GE(atomic_load(&g_mc_got), 1);
  ASSERT_EQ(ame_udp_membership(u, group, "127.0.0.1", 0), 0);
  ASSERT_EQ(ame_udp_membership(u, group, "127.0.0.1", 0), -EADDRNOTAVAIL);
  rt_stop(&rt);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A membership change asked for in a transaction is made at commit, and
** not at all by an attempt that aborts.  One worker: the change (an op on
** the socket's owner) is made before the next commit handler runs, so
** the test thread sees it once the call has committed.  It probes from
** outside: joining a group the socket is in fails with -EADDRINUSE,
** leaving one it is not in with -EADDRNOTAVAIL.
*/

static const char *const g_md_group = "239.255.77.2";
static ame_udp_t *g_md_u;
static atomic_int g_md_done;

/* arg: 1 join, 0 leave; +2: the first attempt aborts. */
static int md_call(ame_tx_t *tx, void *arg) {
  uintptr_t what = (uintptr_t)arg;
  ASSERT_EQ(ame_udp_membership(g_md_u, "not-a-group", NULL, 1), -EINVAL);
  if ((what & 2) == 0 || ame_tx_attempt(tx) == 0)
    ASSERT_EQ(ame_udp_membership(g_md_u, g_md_group, "127.0.0.1",
                                 (int)(what & 1)),
              0);
  if (what & 2 && ame_tx_attempt(tx) == 0)
    ame_tx_abort(tx);
  commit_inc(tx, &g_md_done);
  return 0;
}

static void md_post(uintptr_t what) {
  int n = atomic_load(&g_md_done);
  ASSERT_EQ(ame_reactor_call(g_r, md_call, (void *)what), 0);
  ASSERT_WAIT(atomic_load(&g_md_done) == n + 1, 10000);
}

static int md_recv(ame_tx_t *tx, ame_udp_t *u, const char *data, size_t len,
                   const struct sockaddr *from) {
  (void)tx, (void)u, (void)data, (void)len, (void)from;
  return 0;
}

TEST_IMPL(udp_membership_deferred) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  ASSERT_EQ(ame_udp_bind(g_r, "0.0.0.0", 0, 0, md_recv, NULL, &g_md_u), 0);
  int rc = ame_udp_membership(g_md_u, g_md_group, "127.0.0.1", 1);
  if (rc != 0) {
    ame_reactor_free(g_r);
    TEST_SKIP("cannot join %s on 127.0.0.1 here (%s)", g_md_group,
              strerror(-rc));
  }
  ASSERT_EQ(ame_udp_membership(g_md_u, g_md_group, "127.0.0.1", 0), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  /* A join by an attempt that aborts: not a member. */
  md_post(2 | 1);
  int join_after_aborted = ame_udp_membership(g_md_u, g_md_group,
                                              "127.0.0.1", 1);
  /* Now a member: a leave by an attempt that aborts leaves it one. */
  if (join_after_aborted != 0)
    ASSERT_EQ(join_after_aborted, -EADDRINUSE);
  md_post(2 | 0);
  int leave_after_aborted = ame_udp_membership(g_md_u, g_md_group,
                                               "127.0.0.1", 0);
  printf("# after an aborted join, a join gives %d; after an aborted "
         "leave, a leave gives %d\n",
         join_after_aborted, leave_after_aborted);
  ASSERT_EQ(join_after_aborted, 0);
  ASSERT_EQ(leave_after_aborted, 0);
  /* A join that commits is made; so is a leave. */
  md_post(1);
  ASSERT_EQ(ame_udp_membership(g_md_u, g_md_group, "127.0.0.1", 1),
            -EADDRINUSE);
  md_post(0);
  ASSERT_EQ(ame_udp_membership(g_md_u, g_md_group, "127.0.0.1", 0),
            -EADDRNOTAVAIL);
  rt_stop(&rt);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Signals.
*/

static struct {
  atomic_int calls, signum;
  void *data;
} g_sig;

static int sig_cb(ame_tx_t *tx, ame_signal_t *s, int signum) {
  atomic_store(&g_sig.signum, signum);
  g_sig.data = ame_handle_data(s);
  commit_inc(tx, &g_sig.calls);
  ame_signal_stop(s);
  ame_reactor_stop(g_r);
  return 0;
}

static void raise_usr1(void *arg) {
  (void)arg;
  ASSERT_EQ(kill(getpid(), SIGUSR1), 0);
}

/* Runs after the signal watcher has started (both were asked for before
** the reactor ran, in this order, on worker 0). */
static int sig_timer(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  ASSERT_EQ(ame_tx_on_commit(tx, raise_usr1, NULL), 0);
  return 0;
}

TEST_IMPL(signal_usr1) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_signal_t *s;
  ASSERT_EQ(ame_signal_start(g_r, 0, sig_cb, NULL, &s), -EINVAL);
  ASSERT_EQ(ame_signal_start(g_r, 65, sig_cb, NULL, &s), -EINVAL);
  ASSERT_EQ(ame_signal_start(g_r, SIGUSR1, NULL, NULL, &s), -EINVAL);
  ASSERT_EQ(ame_signal_start(g_r, SIGUSR1, sig_cb, &g_sig, &s), 0);
  ASSERT_EQ(ame_timer_start(g_r, 0, 0, sig_timer, NULL, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_sig.calls), 1);
  ASSERT_EQ(atomic_load(&g_sig.signum), SIGUSR1);
  ASSERT_PTR_EQ(g_sig.data, &g_sig);
  rt_finish(g_r, fds);
}

/* A watcher started before the reactor runs catches the signal when
** ame_signal_start returns: a SIGUSR1 sent at once (a supervisor that
** stops a server as soon as it says it listens) does not kill the
** process, and the callback gets it once the loops run. */
TEST_IMPL(signal_before_run) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_signal_t *s;
  ASSERT_EQ(ame_signal_start(g_r, SIGUSR1, sig_cb, &g_sig, &s), 0);
  /* A signal libuv cannot catch fails here, not later in the log. */
  ame_signal_t *k = NULL;
  ASSERT_EQ(ame_signal_start(g_r, SIGKILL, sig_cb, NULL, &k), -EINVAL);
  ASSERT_NULL(k);
  ASSERT_EQ(kill(getpid(), SIGUSR1), 0);
  ASSERT_EQ(atomic_load(&g_sig.calls), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_sig.calls), 1);
  ASSERT_EQ(atomic_load(&g_sig.signum), SIGUSR1);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Name resolution.
*/

static struct {
  atomic_int ok, failed, calls;
} g_res;

static int res_cb(ame_tx_t *tx, int status, const struct addrinfo *res,
                  void *data) {
  commit_inc(tx, &g_res.calls);
  if ((uintptr_t)data == 1) {
    /* localhost */
    ASSERT_EQ(status, 0);
    ASSERT_NOT_NULL(res);
    int found = 0;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
      if (a->ai_family == AF_INET &&
          ((struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr ==
              htonl(INADDR_LOOPBACK))
        found = 1;
    ASSERT(found);
    commit_inc(tx, &g_res.ok);
  } else {
    /* a name that cannot be resolved */
    ASSERT_LT(status, 0);
    ASSERT_NULL(res);
    commit_inc(tx, &g_res.failed);
  }
  return 0;
}

static int res_call(ame_tx_t *tx, void *arg) {
  (void)arg;
  struct addrinfo hints = {.ai_family = AF_INET,
                           .ai_socktype = SOCK_STREAM};
  /* An attempt that aborts resolves nothing. */
  ASSERT_EQ(ame_resolve(g_r, "localhost", "80", &hints, res_cb, (void *)1),
            0);
  if (ame_tx_attempt(tx) == 0)
    ame_tx_abort(tx);
  struct addrinfo numeric = {.ai_flags = AI_NUMERICHOST};
  ASSERT_EQ(ame_resolve(g_r, "1.2.3.4.5", NULL, &numeric, res_cb, (void *)2),
            0);
  return 0;
}

TEST_IMPL(resolve) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ASSERT_EQ(ame_resolve(g_r, NULL, NULL, NULL, res_cb, NULL), -EINVAL);
  ASSERT_EQ(ame_resolve(g_r, "localhost", NULL, NULL, NULL, NULL), -EINVAL);
  /* Outside a transaction (before the run), and inside one. */
  struct addrinfo hints = {.ai_family = AF_INET};
  ASSERT_EQ(ame_resolve(g_r, "localhost", NULL, &hints, res_cb, (void *)1),
            0);
  ASSERT_EQ(ame_reactor_call(g_r, res_call, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_res.calls) == 3, 20000);
  sleep_ms(20);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_res.ok), 2);
  ASSERT_EQ(atomic_load(&g_res.failed), 1);
  ASSERT_EQ(atomic_load(&g_res.calls), 3);
  rt_finish(g_r, fds);
}

/* A failed resolution is reported with a negative errno value, as every
** error of the reactor (not libuv's UV_EAI_* numbers, which no errno
** value equals): -ENOENT for a name or service that does not exist, so
** that "not found" stays told apart from the other failures, each
** getaddrinfo error mapped to the errno value that says the same.  The
** queries are numeric or malformed: none goes to a name server. */
enum { RE_N = 5 };
static struct {
  atomic_int status[RE_N];
  atomic_int calls;
} g_re;

static int re_cb(ame_tx_t *tx, int status, const struct addrinfo *res,
                 void *data) {
  ASSERT_NULL(res);
  atomic_store(&g_re.status[(uintptr_t)data], status);
  commit_inc(tx, &g_re.calls);
  return 0;
}

TEST_IMPL(resolve_errors) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  static const struct {
    const char *host, *service;
    int family, socktype, flags;
    int want;
  } cases[RE_N] = {
      /* not an address, and no name may be looked up: EAI_NONAME */
      {"1.2.3.4.5", NULL, AF_UNSPEC, 0, AI_NUMERICHOST, -ENOENT},
      /* no such service: EAI_SERVICE */
      {"127.0.0.1", "no-such-service-ame", AF_INET, SOCK_STREAM, 0,
       -ENOENT},
      /* EAI_FAMILY */
      {"127.0.0.1", NULL, 12345, 0, 0, -EAFNOSUPPORT},
      /* EAI_SOCKTYPE */
      {"127.0.0.1", "80", AF_UNSPEC, 12345, 0, -ESOCKTNOSUPPORT},
      /* EAI_BADFLAGS */
      {"127.0.0.1", NULL, AF_UNSPEC, 0, 0x7fff0000, -EINVAL},
  };
  for (uintptr_t i = 0; i < RE_N; i++) {
    struct addrinfo hints = {.ai_family = cases[i].family,
                             .ai_socktype = cases[i].socktype,
                             .ai_flags = cases[i].flags};
    ASSERT_EQ(ame_resolve(g_r, cases[i].host, cases[i].service, &hints,
                          re_cb, (void *)i),
              0);
  }
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_re.calls) == RE_N, 20000);
  rt_stop(&rt);
  for (int i = 0; i < RE_N; i++)
    printf("# case %d: %d (%s)\n", i, atomic_load(&g_re.status[i]),
           strerror(-atomic_load(&g_re.status[i])));
  for (int i = 0; i < RE_N; i++)
    ASSERT_EQ(atomic_load(&g_re.status[i]), cases[i].want);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Watching descriptors: a pipe's ends.  The write end is first watched for
** nothing useful, changed to writable, writes a byte and stops; the read
** end sees it, reads it and stops; bytes written afterwards call nobody.
*/

static struct {
  int p[2];
  ame_poll_t *rd, *wr;
  atomic_int rd_calls, wr_calls, bytes;
} g_pl;

static void pl_write_byte(void *arg) {
  (void)arg;
  ASSERT_EQ(write(g_pl.p[1], "x", 1), 1);
}

/* Read the pipe until it is empty (read fails with EAGAIN), then add what
** was read to g_pl.bytes in one step.  The test thread writes more bytes
** as soon as it sees the count, so the count must not show before this
** loop is done: a count per byte let it see 1 while the loop could still
** read, and the loop then read those bytes too.  Bytes written after the
** count can only be read by a second read callback, which the test says
** never comes. */
static void pl_read_byte(void *arg) {
  (void)arg;
  char c;
  int n = 0;
  ssize_t got;
  while ((got = read(g_pl.p[0], &c, 1)) == 1)
    n++;
  ASSERT_EQ(got, -1);
  ASSERT_EQ(errno, EAGAIN);
  atomic_fetch_add(&g_pl.bytes, n);
}

static int pl_wr_cb(ame_tx_t *tx, ame_poll_t *p, int status, int events) {
  ASSERT_PTR_EQ(p, g_pl.wr);
  ASSERT_EQ(status, 0);
  ASSERT(events & AME_WRITABLE);
  commit_inc(tx, &g_pl.wr_calls);
  ASSERT_EQ(ame_tx_on_commit(tx, pl_write_byte, NULL), 0);
  ame_poll_stop(p);
  return 0;
}

static int pl_rd_cb(ame_tx_t *tx, ame_poll_t *p, int status, int events) {
  ASSERT_PTR_EQ(p, g_pl.rd);
  ASSERT_EQ(status, 0);
  ASSERT(events & AME_READABLE);
  commit_inc(tx, &g_pl.rd_calls);
  ASSERT_EQ(ame_tx_on_commit(tx, pl_read_byte, NULL), 0);
  ame_poll_stop(p);
  return 0;
}

static int pl_change_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ASSERT_EQ(ame_poll_change(g_pl.wr, AME_WRITABLE), 0);
  return 0;
}

TEST_IMPL(poll_pipe) {
  int fds = fd_baseline();
  ASSERT_EQ(pipe2(g_pl.p, O_NONBLOCK | O_CLOEXEC), 0);
  g_r = rt_new(2, NULL);
  ame_poll_t *p;
  ASSERT_EQ(ame_poll_start(g_r, -1, AME_READABLE, pl_rd_cb, NULL, &p),
            -EINVAL);
  ASSERT_EQ(ame_poll_start(g_r, g_pl.p[0], AME_READABLE, NULL, NULL, &p),
            -EINVAL);
  ASSERT_EQ(ame_poll_change(NULL, 0), -EINVAL);
  ASSERT_EQ(ame_poll_start(g_r, g_pl.p[0], AME_READABLE, pl_rd_cb, NULL,
                           &g_pl.rd),
            0);
  /* The write end, readable: never. */
  ASSERT_EQ(ame_poll_start(g_r, g_pl.p[1], AME_READABLE, pl_wr_cb, NULL,
                           &g_pl.wr),
            0);
  ASSERT_PTR_EQ(ame_handle_data(g_pl.wr), NULL);
  struct rt rt;
  rt_start(&rt, g_r);
  sleep_ms(30);
  ASSERT_EQ(atomic_load(&g_pl.wr_calls), 0);
  ASSERT_EQ(atomic_load(&g_pl.rd_calls), 0);
  ASSERT_EQ(ame_reactor_call(g_r, pl_change_call, NULL), 0);
  ASSERT_WAIT(atomic_load(&g_pl.bytes) == 1, 10000);
  /* Both watches stopped: more bytes call nobody. */
  ASSERT_EQ(write(g_pl.p[1], "yz", 2), 2);
  sleep_ms(50);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_pl.wr_calls), 1);
  ASSERT_EQ(atomic_load(&g_pl.rd_calls), 1);
  ASSERT_EQ(atomic_load(&g_pl.bytes), 1);
  /* The descriptors are still ours. */
  char buf[4];
  ASSERT_EQ(read(g_pl.p[0], buf, sizeof buf), 2);
  close(g_pl.p[0]);
  close(g_pl.p[1]);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Calls posted from foreign threads run in the order each thread posted
** them; a call posted in a transaction that aborts is not posted.
*/

enum { CALL_THREADS = 3, CALL_N = 3000 };
static uintptr_t g_call_next[CALL_THREADS]; /* transactional */
static uintptr_t g_call_total;
static atomic_int g_call_worker_seen[8];
static atomic_int g_call_ghost;

static int ordered_call(ame_tx_t *tx, void *arg) {
  uintptr_t v = (uintptr_t)arg;
  uintptr_t th = v >> 32, seq = v & 0xffffffffu;
  ASSERT_LT(th, CALL_THREADS);
  ASSERT_EQ(ame_load_word_tx(tx, &g_call_next[th]), seq);
  ame_store_word_tx(tx, &g_call_next[th], seq + 1);
  int w = ame_reactor_current_worker(g_r);
  ASSERT(w >= 0 && w < 2);
  atomic_fetch_add(&g_call_worker_seen[w], 1);
  if (tx_inc(tx, &g_call_total) == CALL_THREADS * CALL_N + 1)
    ame_reactor_stop(g_r);
  return 0;
}

static int ghost_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  atomic_fetch_add(&g_call_ghost, 1);
  return 0;
}

static void *call_poster(void *arg) {
  uintptr_t th = (uintptr_t)arg;
  for (uintptr_t i = 0; i < CALL_N; i++) {
    ASSERT_EQ(ame_reactor_call(g_r, ordered_call, (void *)(th << 32 | i)),
              0);
    if (i % 512 == 0)
      sched_yield();
  }
  if (th == 0) {
    /* A foreign thread's own transaction: posts at commit only. */
    ame_tx_t *tx = ame_thread_enter();
    ASSERT_NOT_NULL(tx);
    AME_ATOMIC(tx) {
      if (ame_tx_attempt(tx) == 0) {
        ASSERT_EQ(ame_reactor_call(g_r, ghost_call, NULL), 0);
        ame_tx_abort(tx);
      }
      ASSERT_EQ(ame_reactor_call(g_r, ordered_call,
                                 (void *)(th << 32 | CALL_N)),
                0);
    }
    ame_thread_exit();
  }
  return NULL;
}

TEST_IMPL(call_foreign_threads) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ASSERT_EQ(ame_reactor_call(NULL, ordered_call, NULL), -EINVAL);
  ASSERT_EQ(ame_reactor_call(g_r, NULL, NULL), -EINVAL);
  struct rt rt;
  rt_start(&rt, g_r);
  pthread_t th[CALL_THREADS];
  for (uintptr_t i = 0; i < CALL_THREADS; i++)
    thread_start(&th[i], call_poster, (void *)i);
  for (int i = 0; i < CALL_THREADS; i++)
    thread_join(th[i]);
  rt_wait(&rt, 30000);
  ASSERT_EQ(g_call_total, CALL_THREADS * CALL_N + 1);
  ASSERT_EQ(g_call_next[0], CALL_N + 1);
  for (int i = 1; i < CALL_THREADS; i++)
    ASSERT_EQ(g_call_next[i], CALL_N);
  ASSERT_EQ(atomic_load(&g_call_ghost), 0);
  printf("# calls run by worker 0: %d, worker 1: %d\n",
         atomic_load(&g_call_worker_seen[0]),
         atomic_load(&g_call_worker_seen[1]));
  /* Stopped: nothing more is taken. */
  ASSERT_EQ(ame_reactor_call(g_r, ordered_call, NULL), -ESHUTDOWN);
  ASSERT_EQ(ame_reactor_task(g_r, ordered_call, NULL), -ESHUTDOWN);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** The before_poll hook: called by each worker on its own thread, after
** what was ready ran (a posted call's commit is visible to it) and before
** the worker polls again.  Worker 1 runs on a thread the reactor started,
** named ame-worker (worker 0 on ame_reactor_run's caller, whose name
** stays its own).
*/

static atomic_int g_hook_calls[2];
static atomic_int g_hook_named; /* worker 1's thread is named ame-worker */
static atomic_int g_hook_bad_thread;
static atomic_int g_hook_posted;   /* set by a posted call, at commit */
static atomic_int g_hook_saw_post; /* the hook saw it */

static int hook(void *arg) {
  ASSERT_EQ(arg, (void *)&g_hook_calls);
  int w = ame_reactor_current_worker(g_r);
  if (w < 0 || w >= 2) {
    atomic_fetch_add(&g_hook_bad_thread, 1);
    return 0;
  }
  atomic_fetch_add(&g_hook_calls[w], 1);
  if (w == 1) {
    char name[16] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    atomic_store(&g_hook_named, strcmp(name, "ame-worker") == 0 ? 1 : -1);
  }
  if (atomic_load(&g_hook_posted)) atomic_store(&g_hook_saw_post, 1);
  return 0;
}

static void set_posted(void *arg) {
  (void)arg;
  atomic_store(&g_hook_posted, 1);
}

static int post_flag(ame_tx_t *tx, void *arg) {
  (void)arg;
  return ame_tx_on_commit(tx, set_posted, NULL);
}

TEST_IMPL(before_poll_hook) {
  int fds = fd_baseline();
  ame_reactor_config_t cfg = {.workers = 2, .before_poll = hook,
                              .before_poll_arg = &g_hook_calls};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_EQ(ame_reactor_call(g_r, post_flag, NULL), 0);
  /* The worker that ran the call polls again afterwards: the hook sees
  ** its commit. */
  ASSERT_WAIT(atomic_load(&g_hook_saw_post) == 1, 10000);
  ASSERT_EQ(ame_reactor_call(g_r, stop_call, g_r), 0);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_hook_bad_thread), 0);
  ASSERT_GE(atomic_load(&g_hook_calls[0]) + atomic_load(&g_hook_calls[1]), 2);
  /* Every worker calls the hook before its first poll. */
  ASSERT_GE(atomic_load(&g_hook_calls[1]), 1);
  ASSERT_EQ(atomic_load(&g_hook_named), 1);
  printf("# before_poll calls: worker 0 %d, worker 1 %d\n",
         atomic_load(&g_hook_calls[0]), atomic_load(&g_hook_calls[1]));
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Embedding: a thread attaches to a one-worker reactor and steps its loop
** from a loop of its own (poll on ame_reactor_fd), as the Python binding
** does in processes that should have one thread.  Ops it asks for between
** steps run at once; callbacks, timers and the hook run inside steps, on
** that thread; another thread may talk to the server and stop it.
*/

static atomic_int g_att_hook;       /* before_poll calls on the thread */
static atomic_int g_att_hook_bad;   /* ... elsewhere */
static atomic_int g_att_timer;      /* the timer ran, on the thread */
static pthread_t g_att_thread;

static int att_hook(void *arg) {
  (void)arg;
  if (pthread_equal(pthread_self(), g_att_thread) &&
      ame_reactor_current_worker(g_r) == 0)
    atomic_fetch_add(&g_att_hook, 1);
  else
    atomic_fetch_add(&g_att_hook_bad, 1);
  return 0;
}

static int att_timer_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  if (pthread_equal(pthread_self(), g_att_thread)) commit_inc(tx, &g_att_timer);
  return 0;
}

struct att_client {
  int port;
  atomic_int step_rc; /* ame_reactor_step off the attached thread */
  atomic_int done;
};

static void *att_client_main(void *arg) {
  struct att_client *c = arg;
  int t;
  atomic_store(&c->step_rc, ame_reactor_step(g_r, &t));
  for (int i = 0; i < 3; i++) {
    int fd = tcp_client("127.0.0.1", c->port);
    echo_check(fd, "stepped");
    close(fd);
  }
  ASSERT_WAIT(atomic_load(&g_att_timer) == 1, 10000);
  ASSERT_EQ(ame_reactor_call(g_r, stop_call, g_r), 0);
  atomic_store(&c->done, 1);
  return NULL;
}

TEST_IMPL(attach_step) {
  int fds = fd_baseline();
  g_att_thread = pthread_self();
  ame_reactor_config_t cfg = {.workers = 1, .before_poll = att_hook};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  ASSERT_EQ(ame_reactor_current_worker(g_r), -1);
  int t = 123;
  ASSERT_EQ(ame_reactor_step(g_r, &t), -EINVAL); /* not attached */
  ASSERT_EQ(ame_reactor_attach(g_r), 0);
  ASSERT_EQ(ame_reactor_attach(g_r), -EALREADY);
  ASSERT_EQ(ame_reactor_run(g_r), -EALREADY);
  ASSERT(ame_reactor_fd(g_r) >= 0);
  /* An op asked for by the attached thread runs at once: the listener is
  ** bound when ame_tcp_listen returns, before any step. */
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l),
            0);
  struct att_client c = {.port = ame_listener_port(l)};
  ASSERT(c.port > 0);
  ame_timer_t *tm;
  ASSERT_EQ(ame_timer_start(g_r, 30, 0, att_timer_cb, NULL, &tm), 0);
  /* Nothing ready yet: the step says how long the caller may sleep, no
  ** longer than the timer. */
  ASSERT_EQ(ame_reactor_step(g_r, &t), 1);
  ASSERT(t >= 0 && t <= 30);
  pthread_t th;
  thread_start(&th, att_client_main, &c);
  int rc, steps = 0;
  while ((rc = ame_reactor_step(g_r, &t)) > 0) {
    steps++;
    ASSERT(t >= -1);
    if (t == 0) continue;
    struct pollfd p = {.fd = ame_reactor_fd(g_r), .events = POLLIN};
    ASSERT(poll(&p, 1, t < 0 || t > 10000 ? 10000 : t) >= 0);
  }
  ASSERT_EQ(rc, 0);
  thread_join(th);
  ASSERT_EQ(atomic_load(&c.done), 1);
  ASSERT_EQ(atomic_load(&c.step_rc), -EINVAL);
  ASSERT_EQ(atomic_load(&g_echo.closes), 3);
  ASSERT_EQ(atomic_load(&g_att_timer), 1);
  ASSERT_GE(atomic_load(&g_att_hook), 2);
  ASSERT_EQ(atomic_load(&g_att_hook_bad), 0);
  /* Stopped: detached, and it can be neither stepped nor run again. */
  ASSERT_EQ(ame_reactor_current_worker(g_r), -1);
  ASSERT_EQ(ame_reactor_step(g_r, &t), -EINVAL);
  printf("# attached: %d steps\n", steps);
  rt_finish(g_r, fds);
}

/* Freeing an attached reactor that still runs stops it first: its open
** listener is closed and nothing leaks. */
TEST_IMPL(attach_free) {
  int fds = fd_baseline();
  ASSERT_EQ(ame_reactor_new(&g_r, &(ame_reactor_config_t){.workers = 2}), 0);
  ASSERT_EQ(ame_reactor_attach(g_r), -EINVAL); /* two workers */
  ame_reactor_free(g_r);
  ASSERT_EQ(ame_reactor_new(&g_r, &(ame_reactor_config_t){.workers = 1}), 0);
  ASSERT_EQ(ame_reactor_attach(g_r), 0);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l),
            0);
  int t;
  ASSERT_EQ(ame_reactor_step(g_r, &t), 1);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Tasks, counters and the report: every committed callback is counted
** once, failures are counted and logged, and the report says so.
*/

static atomic_int g_task_runs;

static int count_task(ame_tx_t *tx, void *arg) {
  (void)arg;
  int w = ame_reactor_current_worker(g_r);
  ASSERT(w >= 0 && w < 2);
  commit_inc(tx, &g_task_runs);
  return 0;
}

static int failing_task(ame_tx_t *tx, void *arg) {
  (void)arg;
  commit_inc(tx, &g_task_runs);
  return -EPROTO;
}

static void *task_poster(void *arg) {
  (void)arg;
  for (int i = 0; i < 20; i++)
    ASSERT_EQ(ame_reactor_task(g_r, count_task, NULL), 0);
  return NULL;
}

TEST_IMPL(stats_report) {
  int fds = fd_baseline();
  FILE *log = tmpfile();
  ASSERT_NOT_NULL(log);
  ame_reactor_config_t cfg = {.workers = 2, .log = log, .report_on_stop = 1};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  ASSERT_EQ(ame_reactor_workers(g_r), 2);
  ASSERT_EQ(ame_reactor_current_worker(g_r), -1);
  uint64_t t0 = ame_reactor_now(g_r);
  for (int i = 0; i < 10; i++)
    ASSERT_EQ(ame_reactor_task(g_r, count_task, NULL), 0);
  ASSERT_EQ(ame_reactor_task(g_r, failing_task, NULL), 0);
  ASSERT_EQ(ame_reactor_task(NULL, count_task, NULL), -EINVAL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l),
            0);
  struct rt rt;
  rt_start(&rt, g_r);
  pthread_t th;
  thread_start(&th, task_poster, NULL);
  thread_join(th);
  for (int i = 0; i < 3; i++) {
    int fd = tcp_client("127.0.0.1", ame_listener_port(l));
    echo_check(fd, "counted");
    close(fd);
  }
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 3, 10000);
  ASSERT_WAIT(atomic_load(&g_task_runs) == 31, 10000);
  ASSERT_EQ(ame_reactor_call(g_r, stop_call, g_r), 0);
  rt_wait(&rt, 10000);
  ASSERT_GE(ame_reactor_now(g_r), t0);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  uint64_t expect = 31 + 1 /* stop_call */ + 3 * 2 /* open, close */ +
                    (uint64_t)atomic_load(&g_echo.datas);
  ASSERT_EQ(st.callbacks, expect);
  ASSERT_EQ(st.failures, 1);
  ASSERT_EQ(st.accepted, 3);
  ASSERT_EQ(st.accept_errors, 0);
  ASSERT_EQ(st.streams_open, 0);
  ASSERT_EQ(st.per_worker_callbacks[0] + st.per_worker_callbacks[1],
            st.callbacks);
  char *text = slurp(log);
  ASSERT_STR_CONTAINS(text, "task failed: protocol error");
  ASSERT_STR_CONTAINS(text, "ame reactor: 2 workers"); /* report_on_stop */
  ASSERT_STR_CONTAINS(text, "callbacks per worker:");
  free(text);
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  ASSERT_NOT_NULL(mem);
  ame_reactor_report(g_r, mem);
  fclose(mem);
  char want[128];
  snprintf(want, sizeof want, "%" PRIu64 " callbacks (1 failed", expect);
  ASSERT_STR_CONTAINS(buf, want);
  ASSERT_STR_CONTAINS(buf, "3 accepted (0 accept errors)");
  free(buf);
  fclose(log);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Creating, running and freeing: arguments, defaults, a second run.
*/

static atomic_int g_lc_calls;

static int lc_call(ame_tx_t *tx, void *arg) {
  (void)arg;
  commit_inc(tx, &g_lc_calls);
  return 0;
}

TEST_IMPL(reactor_lifecycle) {
  int fds = fd_baseline();
  ame_reactor_t *r = NULL;
  ASSERT_EQ(ame_reactor_new(NULL, NULL), -EINVAL);
  ame_reactor_config_t big = {.workers = 100000};
  ASSERT_EQ(ame_reactor_new(&r, &big), -EINVAL);
  ASSERT_NULL(r);
  ASSERT_EQ(ame_reactor_run(NULL), -EINVAL);
  ame_reactor_free(NULL);
  /* Defaults: one worker per online CPU. */
  ASSERT_EQ(ame_reactor_new(&r, NULL), 0);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  ASSERT_EQ(ame_reactor_workers(r), (unsigned)(cpus > 0 ? cpus : 1));
  ame_reactor_free(r);
  ASSERT_EQ(fd_count(), fds);
  /* Run on one thread; a second run meanwhile is refused. */
  g_r = rt_new(3, NULL);
  ASSERT_EQ(ame_reactor_call(g_r, lc_call, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_lc_calls) == 1, 10000); /* it runs */
  ASSERT_EQ(ame_reactor_run(g_r), -EALREADY);
  ASSERT_EQ(ame_reactor_current_worker(g_r), -1);
  rt_stop(&rt);
  ame_reactor_stop(g_r); /* again: nothing */
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  ASSERT_EQ(st.callbacks, 1);
  rt_finish(g_r, fds);
}
