/*
** tests/reactor/test_faults.c — the reactor when things go wrong: no
** descriptors left for accept(), peers that reset or vanish while we
** write, slow readers, callbacks that fail, and stopping (gracefully with
** writes in flight, after the drain time-out, before running, twice) or
** freeing a reactor that never ran; what is asked for once it stopped.
*/
#include "reactor-test.h"

#include <sys/resource.h>
#include <sys/wait.h>

static ame_reactor_t *g_r;

/* ------------------------------------------------------------------------
** accept() under descriptor exhaustion.  The clients live in a child
** process (with descriptors to spare); the reactor's process may open only
** a few more.  Once accept() fails with EMFILE the reactor keeps serving
** the connections it has, and accepts again once some have closed.
*/

enum { EM_N = 12, EM_ROOM = 4 };

/* The child: connect every client (the backlog takes them), send a ping
** on each, and serve as the server answers. */
static int emfile_child(int port, int to_parent, int from_parent) {
  char c;
  if (read(from_parent, &c, 1) != 1)
    return 10;
  int fd[EM_N], answered[EM_N] = {0};
  for (int i = 0; i < EM_N; i++) {
    fd[i] = tcp_client_rcvbuf("127.0.0.1", port, 0);
    if (fd[i] < 0)
      return 11;
    if (send(fd[i], "ping", 4, MSG_NOSIGNAL) != 4)
      return 12;
  }
  uint64_t deadline = now_ms() + 30000u * slow_factor();
  int done = 0, phase = 0;
  while (done < EM_N) {
    if (now_ms() > deadline)
      return 13;
    struct pollfd p[EM_N];
    for (int i = 0; i < EM_N; i++)
      p[i] = (struct pollfd){.fd = answered[i] ? -1 : fd[i],
                             .events = POLLIN};
    int n = poll(p, EM_N, 50);
    for (int i = 0; n > 0 && i < EM_N; i++) {
      if (!(p[i].revents & POLLIN))
        continue;
      char buf[4];
      if (recv(fd[i], buf, 4, MSG_WAITALL) != 4 || memcmp(buf, "ping", 4))
        return 14;
      answered[i] = 1;
      done++;
    }
    if (phase == 0 && done >= EM_ROOM - 1) {
      /* Served as many as the server could take: tell the parent, which
      ** checks that accept() failed, then check that the served ones are
      ** still served, and close them to make room. */
      phase = 1;
      if (write(to_parent, "1", 1) != 1 || read(from_parent, &c, 1) != 1)
        return 15;
      for (int i = 0; i < EM_N; i++) {
        if (!answered[i] || fd[i] < 0)
          continue;
        char buf[5];
        if (send(fd[i], "again", 5, MSG_NOSIGNAL) != 5 ||
            recv(fd[i], buf, 5, MSG_WAITALL) != 5 || memcmp(buf, "again", 5))
          return 16;
      }
    }
    if (phase == 1)
      for (int i = 0; i < EM_N; i++)
        if (answered[i] && fd[i] >= 0) {
          close(fd[i]);
          fd[i] = -1;
        }
  }
  return 0;
}

TEST_IMPL(accept_emfile) {
  int fds = fd_baseline();
  FILE *log = tmpfile();
  ASSERT_NOT_NULL(log);
  g_r = rt_new(1, log);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &l),
            0);
  int port = ame_listener_port(l);
  int down[2], up[2];
  ASSERT_EQ(pipe2(down, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(up, O_CLOEXEC), 0);
  pid_t pid = fork(); /* before any thread is started */
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(down[1]);
    close(up[0]);
    _exit(emfile_child(port, up[1], down[0]));
  }
  close(down[0]);
  close(up[1]);
  struct rt rt;
  rt_start(&rt, g_r);
  /* One connection first, so that libuv has made what it makes once per
  ** loop for streams. */
  int fd = tcp_client("127.0.0.1", port);
  echo_check(fd, "warm-up");
  close(fd);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1, 10000);
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  struct rlimit low = old;
  low.rlim_cur = limit_for_room(EM_ROOM);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  printf("# descriptor limit %lu: room for %d connections, %d clients\n",
         (unsigned long)low.rlim_cur, EM_ROOM, EM_N);
  char c = 'g';
  ASSERT_EQ(write(down[1], &c, 1), 1);
  /* The child has been served as far as we had room... */
  ASSERT_EQ(read(up[0], &c, 1), 1);
  /* ...and accept() has failed. */
  ame_reactor_stats_t st;
  ASSERT_WAIT((ame_reactor_stats(g_r, &st), st.accept_errors >= 1), 10000);
  ASSERT_EQ(write(down[1], &c, 1), 1);
  int status;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1 + EM_N, 10000);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  rt_stop(&rt);
  ame_reactor_stats(g_r, &st);
  printf("# %" PRIu64 " accept errors\n", st.accept_errors);
  ASSERT_EQ(st.accepted, 1 + EM_N);
  ASSERT_GE(st.accept_errors, 1);
  ASSERT_EQ(atomic_load(&g_echo.opens), 1 + EM_N);
  char *text = slurp(log);
  ASSERT_STR_CONTAINS(text, "accept: Too many open files; pausing accepts");
  free(text);
  fclose(log);
  close(down[1]);
  close(up[0]);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Peers that go away while we write: one resets its connection, one
** closes before we answer.  Each stream gets one on_close; the reactor
** keeps serving.
*/

static struct {
  atomic_int closes, opens;
  atomic_int status[8];
  atomic_int nstatus;
} g_pw;

static char *g_blob;
enum { BLOB = 4 << 20 };

static int pw_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)s;
  commit_inc(tx, &g_pw.opens);
  return 0;
}

/* Any request gets a large answer. */
static int pw_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)tx;
  (void)d;
  (void)n;
  return ame_stream_write(s, g_blob, BLOB);
}

static void pw_status(void *arg) {
  int i = atomic_fetch_add(&g_pw.nstatus, 1);
  if (i < 8)
    atomic_store(&g_pw.status[i], (int)(intptr_t)arg);
  atomic_fetch_add(&g_pw.closes, 1);
}

static void pw_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(ame_tx_on_commit(tx, pw_status, (void *)(intptr_t)status), 0);
}

static const ame_stream_cbs_t pw_cbs = {
    .on_open = pw_open, .on_data = pw_data, .on_close = pw_close};

TEST_IMPL(peer_gone) {
  int fds = fd_baseline();
  g_blob = malloc(BLOB);
  ASSERT_NOT_NULL(g_blob);
  pattern_fill(g_blob, BLOB, 0);
  g_r = rt_new(2, NULL);
  ame_listener_t *l, *le;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &pw_cbs, NULL, &l), 0);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &echo_cbs, NULL, &le),
            0);
  int port = ame_listener_port(l);
  struct rt rt;
  rt_start(&rt, g_r);
  /* 1: reads part of the answer, then resets. */
  int fd = tcp_client_rcvbuf("127.0.0.1", port, 16 << 10);
  send_all(fd, "get", 3);
  char buf[4096];
  recv_exact(fd, buf, sizeof buf);
  ASSERT_EQ(pattern_check(buf, sizeof buf, 0), sizeof buf);
  close_reset(fd);
  ASSERT_WAIT(atomic_load(&g_pw.closes) == 1, 10000);
  /* 2: asks, and closes before reading anything. */
  fd = tcp_client_rcvbuf("127.0.0.1", port, 16 << 10);
  send_all(fd, "get", 3);
  close(fd);
  ASSERT_WAIT(atomic_load(&g_pw.closes) == 2, 10000);
  /* 3: asks twice, reads a little, closes normally. */
  fd = tcp_client_rcvbuf("127.0.0.1", port, 16 << 10);
  send_all(fd, "get", 3);
  send_all(fd, "get", 3);
  recv_exact(fd, buf, 100);
  close(fd);
  ASSERT_WAIT(atomic_load(&g_pw.closes) == 3, 10000);
  /* Still serving. */
  fd = tcp_client("127.0.0.1", ame_listener_port(le));
  echo_check(fd, "still here");
  close(fd);
  ASSERT_WAIT(atomic_load(&g_echo.closes) == 1, 10000);
  sleep_ms(20);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_pw.opens), 3);
  ASSERT_EQ(atomic_load(&g_pw.closes), 3);
  for (int i = 0; i < 3; i++) {
    int st = atomic_load(&g_pw.status[i]);
    printf("# peer %d: on_close status %d (%s)\n", i + 1, st,
           st ? strerror(-st) : "ok");
    ASSERT(st == 0 || st == -ECONNRESET || st == -EPIPE);
  }
  free(g_blob);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A slow reader: 16 MiB written at once to a client that reads in small
** bites with pauses; everything arrives, and on_drain fires.
*/

static struct {
  atomic_int drains, closes;
} g_sr;

static int sr_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  int rc = ame_stream_write(s, g_blob, (size_t)16 << 20);
  ame_stream_close(s);
  return rc;
}

static int sr_drain(ame_tx_t *tx, ame_stream_t *s) {
  ASSERT_LE(ame_stream_write_queue(s), 256u << 10); /* the low watermark */
  commit_inc(tx, &g_sr.drains);
  return 0;
}

static void sr_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_sr.closes);
}

static const ame_stream_cbs_t sr_cbs = {
    .on_open = sr_open, .on_drain = sr_drain, .on_close = sr_close};

TEST_IMPL(slow_reader) {
  int fds = fd_baseline();
  size_t total = (size_t)16 << 20;
  g_blob = malloc(total);
  ASSERT_NOT_NULL(g_blob);
  pattern_fill(g_blob, total, 0);
  g_r = rt_new(2, NULL);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &sr_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client_rcvbuf("127.0.0.1", ame_listener_port(l), 16 << 10);
  char *buf = malloc(1 << 16);
  ASSERT_NOT_NULL(buf);
  size_t got = 0;
  unsigned naps = 0;
  for (;;) {
    ssize_t k = recv(fd, buf, 1 << 16, 0);
    if (k == 0)
      break;
    if (k < 0)
      AME_TEST_FAIL_("recv: %s after %zu bytes", strerror(errno), got);
    ASSERT_EQ(pattern_check(buf, (size_t)k, got), (size_t)k);
    got += (size_t)k;
    if (got < (4u << 20) && naps++ % 8 == 0)
      sleep_ms(1);
  }
  ASSERT_EQ(got, total);
  close(fd);
  ASSERT_WAIT(atomic_load(&g_sr.closes) == 1, 10000);
  rt_stop(&rt);
  ASSERT_GE(atomic_load(&g_sr.drains), 1);
  free(buf);
  free(g_blob);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A callback that returns an error: logged with the handle's name and the
** cause, its stream closed, and the other connections keep working.
*/

static struct {
  atomic_int closes, bad_status;
} g_ce;

static int ce_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  ame_handle_set_name(s, "picky-conn");
  return 0;
}

static int ce_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)tx;
  if (n >= 3 && memcmp(d, "bad", 3) == 0) {
    ame_stream_write(s, "never sent", 10); /* committed, but the stream is
                                              closed at once */
    return -EPROTO;
  }
  return ame_stream_write(s, d, n);
}

static void ce_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  if (status == -EPROTO)
    commit_inc(tx, &g_ce.bad_status);
  commit_inc(tx, &g_ce.closes);
}

static const ame_stream_cbs_t ce_cbs = {
    .on_open = ce_open, .on_data = ce_data, .on_close = ce_close};

TEST_IMPL(callback_error) {
  int fds = fd_baseline();
  FILE *log = tmpfile();
  ASSERT_NOT_NULL(log);
  g_r = rt_new(2, log);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &ce_cbs, NULL, &l), 0);
  int port = ame_listener_port(l);
  struct rt rt;
  rt_start(&rt, g_r);
  int good = tcp_client("127.0.0.1", port);
  echo_check(good, "fine");
  int bad = tcp_client("127.0.0.1", port);
  echo_check(bad, "fine too");
  send_all(bad, "bad request", 11);
  char buf[64];
  ssize_t n = recv_to_eof(bad, buf, sizeof buf, 1);
  ASSERT(n == 0 || n == -ECONNRESET); /* closed, nothing more sent */
  close(bad);
  ASSERT_WAIT(atomic_load(&g_ce.closes) == 1, 10000);
  echo_check(good, "the other connection keeps working");
  close(good);
  ASSERT_WAIT(atomic_load(&g_ce.closes) == 2, 10000);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_ce.bad_status), 1);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  ASSERT_EQ(st.failures, 1);
  char *text = slurp(log);
  ASSERT_STR_CONTAINS(text, "picky-conn on_data failed: protocol error");
  free(text);
  fclose(log);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Graceful stop with writes in flight: a callback writes 8 MiB and stops
** the reactor; the client still receives every byte, then EOF; an idle
** connection is closed; ame_reactor_run returns.
*/

static struct {
  atomic_int opens, closes, bad;
} g_gs;

static int gs_open(ame_tx_t *tx, ame_stream_t *s) {
  commit_inc(tx, &g_gs.opens);
  if (ame_handle_data(s) == NULL)
    return 0; /* the idle one */
  int rc = ame_stream_write(s, g_blob, (size_t)8 << 20);
  ame_reactor_stop(g_r);
  ame_reactor_stop(g_r); /* idempotent */
  return rc;
}

static void gs_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  if (status != 0)
    commit_inc(tx, &g_gs.bad);
  commit_inc(tx, &g_gs.closes);
}

static const ame_stream_cbs_t gs_cbs = {.on_open = gs_open,
                                        .on_close = gs_close};

TEST_IMPL(stop_flushes_writes) {
  int fds = fd_baseline();
  size_t total = (size_t)8 << 20;
  g_blob = malloc(total);
  ASSERT_NOT_NULL(g_blob);
  pattern_fill(g_blob, total, 0);
  g_r = rt_new(2, NULL);
  ame_listener_t *idle, *big;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &gs_cbs, NULL, &idle),
            0);
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &gs_cbs, g_blob, &big),
            0);
  int port = ame_listener_port(big);
  struct rt rt;
  rt_start(&rt, g_r);
  int ifd = tcp_client("127.0.0.1", ame_listener_port(idle));
  ASSERT_WAIT(atomic_load(&g_gs.opens) == 1, 10000);
  int fd = tcp_client_rcvbuf("127.0.0.1", port, 32 << 10);
  char *buf = malloc(total + 1);
  ASSERT_NOT_NULL(buf);
  sleep_ms(50); /* the stop has begun while most is still queued */
  ssize_t n = recv_to_eof(fd, buf, total + 1, 0);
  ASSERT_EQ(n, (ssize_t)total);
  ASSERT_EQ(pattern_check(buf, total, 0), total);
  char c;
  ASSERT_EQ(recv(ifd, &c, 1, 0), 0); /* the idle one: EOF */
  rt_wait(&rt, 20000);
  ASSERT_EQ(atomic_load(&g_gs.closes), 2);
  ASSERT_EQ(atomic_load(&g_gs.bad), 0);
  /* Nothing listens any more. */
  ASSERT_EQ(tcp_client_rcvbuf("127.0.0.1", port, 0), -ECONNREFUSED);
  close(fd);
  close(ifd);
  free(buf);
  free(g_blob);
  rt_finish(g_r, fds);
}

/* The drain time-out: a client that never reads does not hold up the stop
** for longer than drain_timeout_ms; its stream closes with -ETIMEDOUT. */
static atomic_int g_dt_status = 1, g_dt_closes;

static int dt_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx;
  int rc = ame_stream_write(s, g_blob, (size_t)8 << 20);
  ame_reactor_stop(g_r);
  return rc;
}

static void dt_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  (void)tx;
  atomic_store(&g_dt_status, status);
  commit_inc(tx, &g_dt_closes);
}

static const ame_stream_cbs_t dt_cbs = {.on_open = dt_open,
                                        .on_close = dt_close};

TEST_IMPL(stop_drain_timeout) {
  int fds = fd_baseline();
  g_blob = malloc((size_t)8 << 20);
  ASSERT_NOT_NULL(g_blob);
  ame_reactor_config_t cfg = {.workers = 2, .drain_timeout_ms = 100};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(g_r, "127.0.0.1", 0, 0, 0, &dt_cbs, NULL, &l), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  int fd = tcp_client_rcvbuf("127.0.0.1", ame_listener_port(l), 16 << 10);
  rt_wait(&rt, 20000); /* without our reading */
  ASSERT_EQ(atomic_load(&g_dt_closes), 1);
  ASSERT_EQ(atomic_load(&g_dt_status), -ETIMEDOUT);
  close(fd);
  free(g_blob);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** Stopping before running, and freeing a reactor that never ran: every
** handle asked for is closed and freed, no callback runs, no descriptor
** stays open.
*/

enum { NB_OPEN, NB_CLOSE, NB_TIMER, NB_UDP, NB_SIGNAL, NB_POLL, NB_RESOLVE,
       NB_CALL, NB_EXIT, NB__N };
static atomic_int g_nb[NB__N];

static int nb_total(void) {
  int n = 0;
  for (int i = 0; i < NB__N; i++)
    n += atomic_load(&g_nb[i]);
  return n;
}

static int nb_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx, (void)s;
  atomic_fetch_add(&g_nb[NB_OPEN], 1);
  return 0;
}
static void nb_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)tx, (void)s, (void)status;
  atomic_fetch_add(&g_nb[NB_CLOSE], 1);
}
static int nb_timer(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx, (void)t;
  atomic_fetch_add(&g_nb[NB_TIMER], 1);
  return 0;
}
static int nb_udp(ame_tx_t *tx, ame_udp_t *u, const char *d, size_t n,
                  const struct sockaddr *from) {
  (void)tx, (void)u, (void)d, (void)n, (void)from;
  atomic_fetch_add(&g_nb[NB_UDP], 1);
  return 0;
}
static int nb_signal(ame_tx_t *tx, ame_signal_t *s, int signum) {
  (void)tx, (void)s, (void)signum;
  atomic_fetch_add(&g_nb[NB_SIGNAL], 1);
  return 0;
}
static int nb_poll(ame_tx_t *tx, ame_poll_t *p, int status, int events) {
  (void)tx, (void)p, (void)status, (void)events;
  atomic_fetch_add(&g_nb[NB_POLL], 1);
  return 0;
}
static int nb_resolve(ame_tx_t *tx, int status, const struct addrinfo *res,
                      void *data) {
  (void)tx, (void)status, (void)res, (void)data;
  atomic_fetch_add(&g_nb[NB_RESOLVE], 1);
  return 0;
}
static int nb_call(ame_tx_t *tx, void *arg) {
  (void)tx, (void)arg;
  atomic_fetch_add(&g_nb[NB_CALL], 1);
  return 0;
}
static int nb_exit(ame_tx_t *tx, ame_process_t *p, int64_t st, int sig) {
  (void)tx, (void)p, (void)st, (void)sig;
  atomic_fetch_add(&g_nb[NB_EXIT], 1);
  return 0;
}

static const ame_stream_cbs_t nb_cbs = {.on_open = nb_open,
                                        .on_close = nb_close};

/* Ask for one of everything. */
static void ask_everything(ame_reactor_t *r, const char *dir, int pfd,
                           int sfd) {
  ame_listener_t *l;
  ASSERT_EQ(ame_tcp_listen(r, "127.0.0.1", 0, 0, 0, &nb_cbs, NULL, &l), 0);
  ame_listener_t *lr;
  ASSERT_EQ(ame_tcp_listen(r, "127.0.0.1", 0, AME_TCP_REUSEPORT, 0, &nb_cbs,
                           NULL, &lr),
            0);
  char path[128];
  snprintf(path, sizeof path, "%s/sock", dir);
  ASSERT_EQ(ame_unix_listen(r, path, 0, &nb_cbs, NULL, &l), 0);
  ame_stream_t *s;
  ASSERT_EQ(ame_tcp_connect(r, "127.0.0.1", ame_listener_port(lr), &nb_cbs,
                            NULL, &s),
            0);
  ASSERT_EQ(ame_stream_write(s, "x", 1), 0);
  ASSERT_EQ(ame_unix_connect(r, path, &nb_cbs, NULL, &s), 0);
  ASSERT_EQ(ame_stream_adopt(r, sfd, &nb_cbs, NULL, &s), 0);
  ame_timer_t *t;
  ASSERT_EQ(ame_timer_start(r, 0, 0, nb_timer, NULL, &t), 0);
  ASSERT_EQ(ame_timer_start(r, 1, 1, nb_timer, NULL, &t), 0);
  ame_udp_t *u;
  ASSERT_EQ(ame_udp_bind(r, "127.0.0.1", 0, 0, nb_udp, NULL, &u), 0);
  ame_signal_t *sg;
  ASSERT_EQ(ame_signal_start(r, SIGUSR2, nb_signal, NULL, &sg), 0);
  ame_poll_t *p;
  ASSERT_EQ(ame_poll_start(r, pfd, AME_WRITABLE, nb_poll, NULL, &p), 0);
  ASSERT_EQ(ame_resolve(r, "localhost", NULL, NULL, nb_resolve, NULL), 0);
  ASSERT_EQ(ame_reactor_call(r, nb_call, NULL), 0);
  ASSERT_EQ(ame_reactor_task(r, nb_call, NULL), 0);
  static const ame_stream_cbs_t out = {.on_open = nb_open};
  ame_process_options_t po = {.file = "/bin/true",
                              .args = (char *[]){"true", NULL},
                              .pipe_stdin = 1,
                              .stdout_cbs = &out,
                              .on_exit = nb_exit};
  ame_process_t *pr;
  ASSERT_EQ(ame_spawn(r, &po, &pr), 0);
}

TEST_IMPL(free_without_run) {
  int fds = fd_baseline();
  char dir[] = "/tmp/ame-test-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(dir));
  int p[2], sv[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int mine = fd_count();
  g_r = rt_new(4, NULL);
  ask_everything(g_r, dir, p[1], sv[0]);
  ame_reactor_free(g_r);
  ASSERT_EQ(fd_count(), mine);
  ASSERT_EQ(nb_total(), 0);
  char path[128];
  snprintf(path, sizeof path, "%s/sock", dir);
  struct stat st;
  ASSERT_NE(stat(path, &st), 0); /* the socket file is gone */
  ASSERT_EQ(rmdir(dir), 0);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
  waitpid(-1, NULL, 0); /* /bin/true */
  ASSERT_EQ(fd_count(), fds);
  ame_stm_shutdown();
}

/* Stopped before it runs: ame_reactor_run closes everything and returns.
** What was asked for before the stop happens and is undone (the adopted
** stream opens and closes, the connects are closed before they connect,
** the name is resolved); no posted call, task, timer, datagram, signal or
** watch runs; every stream handed to the program gets one on_close. */
TEST_IMPL(stop_before_run) {
  int fds = fd_baseline();
  char dir[] = "/tmp/ame-test-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(dir));
  int p[2], sv[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int mine = fd_count();
  g_r = rt_new(4, NULL);
  ask_everything(g_r, dir, p[1], sv[0]);
  ame_reactor_stop(g_r);
  ame_reactor_stop(g_r);
  ASSERT_EQ(ame_reactor_call(g_r, nb_call, NULL), -ESHUTDOWN);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 20000);
  ASSERT_LE(atomic_load(&g_nb[NB_OPEN]), 3);
  ASSERT_EQ(atomic_load(&g_nb[NB_CLOSE]), 3); /* 2 connects, 1 adopted */
  ASSERT_EQ(atomic_load(&g_nb[NB_TIMER]), 0);
  ASSERT_EQ(atomic_load(&g_nb[NB_UDP]), 0);
  ASSERT_EQ(atomic_load(&g_nb[NB_SIGNAL]), 0);
  ASSERT_EQ(atomic_load(&g_nb[NB_POLL]), 0);
  ASSERT_LE(atomic_load(&g_nb[NB_RESOLVE]), 1);
  ASSERT_EQ(atomic_load(&g_nb[NB_CALL]), 0);
  ASSERT_EQ(ame_reactor_run(g_r), 0); /* stopped: returns at once */
  ame_reactor_free(g_r);
  ASSERT_EQ(fd_count(), mine);
  ASSERT_EQ(rmdir(dir), 0);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
  waitpid(-1, NULL, 0);
  ASSERT_EQ(fd_count(), fds);
  ame_stm_shutdown();
}

/* ------------------------------------------------------------------------
** Once the stop has taken effect, every call that makes a handle or a
** request refuses with -ESHUTDOWN and makes nothing, as ame_reactor_call
** does: from a callback that runs during the stop (a stream's on_close),
** after ame_reactor_run has returned, and before a reactor stopped
** before running runs.  No descriptor is left open, no socket file made,
** no child started, nothing calls back.
*/

enum { RF_N = 12 };
static const char *const g_rf_what[RF_N] = {
    "ame_tcp_listen",  "ame_unix_listen", "ame_listen_fd",
    "ame_tcp_connect", "ame_unix_connect", "ame_stream_adopt",
    "ame_timer_start", "ame_udp_bind",    "ame_signal_start",
    "ame_poll_start",  "ame_resolve",     "ame_spawn"};

/* Ask for one handle or request of each kind; rc[i] gets what each
** call returned. */
static void ask_each(ame_reactor_t *r, const char *dir, int lfd, int pfd,
                     int sfd, int rc[RF_N]) {
  ame_listener_t *l;
  ame_stream_t *s;
  char path[128];
  snprintf(path, sizeof path, "%s/sock", dir);
  rc[0] = ame_tcp_listen(r, "127.0.0.1", 0, 0, 0, &nb_cbs, NULL, &l);
  rc[1] = ame_unix_listen(r, path, 0, &nb_cbs, NULL, &l);
  rc[2] = ame_listen_fd(r, lfd, &nb_cbs, NULL, &l);
  rc[3] = ame_tcp_connect(r, "127.0.0.1", 9, &nb_cbs, NULL, &s);
  rc[4] = ame_unix_connect(r, path, &nb_cbs, NULL, &s);
  rc[5] = ame_stream_adopt(r, sfd, &nb_cbs, NULL, &s);
  ame_timer_t *t;
  rc[6] = ame_timer_start(r, 0, 0, nb_timer, NULL, &t);
  ame_udp_t *u;
  rc[7] = ame_udp_bind(r, "127.0.0.1", 0, 0, nb_udp, NULL, &u);
  ame_signal_t *sg;
  rc[8] = ame_signal_start(r, SIGUSR2, nb_signal, NULL, &sg);
  ame_poll_t *p;
  rc[9] = ame_poll_start(r, pfd, AME_WRITABLE, nb_poll, NULL, &p);
  rc[10] = ame_resolve(r, "localhost", NULL, NULL, nb_resolve, NULL);
  ame_process_options_t po = {.file = "/bin/true",
                              .args = (char *[]){"true", NULL},
                              .on_exit = nb_exit};
  ame_process_t *pr;
  rc[11] = ame_spawn(r, &po, &pr);
}

/* Print what each call returned, then check that each refused. */
static void check_refused(const char *when, const int rc[RF_N]) {
  for (int i = 0; i < RF_N; i++)
    printf("# %s: %s: %d (%s)\n", when, g_rf_what[i], rc[i],
           rc[i] ? strerror(-rc[i]) : "made");
  for (int i = 0; i < RF_N; i++)
    ASSERT_EQ(rc[i], -ESHUTDOWN);
}

static struct {
  const char *dir;
  int lfd, pfd, sfd;
  int rc[RF_N];
  atomic_int closes;
} g_rf;

static int rf_open(ame_tx_t *tx, ame_stream_t *s) {
  (void)tx, (void)s;
  atomic_fetch_add(&g_nb[NB_OPEN], 1);
  return 0;
}

/* During the stop: whatever it asks for is refused. */
static void rf_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s, (void)status;
  ask_each(g_r, g_rf.dir, g_rf.lfd, g_rf.pfd, g_rf.sfd, g_rf.rc);
  commit_inc(tx, &g_rf.closes);
}

static const ame_stream_cbs_t rf_cbs = {.on_open = rf_open,
                                        .on_close = rf_close};

TEST_IMPL(stopped_refuses) {
  int fds = fd_baseline();
  char dir[] = "/tmp/ame-test-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(dir));
  int p[2], sv[2], one[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, one), 0);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  struct sockaddr_storage sa;
  socklen_t len = sock_addr(&sa, "127.0.0.1", 0);
  ASSERT_EQ(bind(lfd, (struct sockaddr *)&sa, len), 0);
  ASSERT_EQ(listen(lfd, 8), 0);
  g_rf.dir = dir;
  g_rf.lfd = lfd;
  g_rf.pfd = p[1];
  g_rf.sfd = sv[0];
  int mine = fd_count();
  /* A stream whose on_close runs during the stop. */
  g_r = rt_new(2, NULL);
  ame_stream_t *s;
  ASSERT_EQ(ame_stream_adopt(g_r, one[0], &rf_cbs, NULL, &s), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_nb[NB_OPEN]) == 1, 10000);
  rt_stop(&rt); /* (the peer open: the stream closes only for the stop) */
  ASSERT_EQ(atomic_load(&g_rf.closes), 1);
  check_refused("during the stop", g_rf.rc);
  /* After ame_reactor_run returned. */
  int rc[RF_N];
  ask_each(g_r, dir, lfd, p[1], sv[0], rc);
  check_refused("after the run", rc);
  ame_reactor_free(g_r);
  /* Stopped before it runs. */
  g_r = rt_new(2, NULL);
  ame_reactor_stop(g_r);
  ask_each(g_r, dir, lfd, p[1], sv[0], rc);
  check_refused("stopped, before the run", rc);
  ASSERT_EQ(ame_reactor_run(g_r), 0);
  ame_reactor_free(g_r);
  close(one[0]);
  close(one[1]);
  ASSERT_EQ(fd_count(), mine - 2);
  ASSERT_EQ(atomic_load(&g_nb[NB_OPEN]), 1); /* the stream's own */
  ASSERT_EQ(nb_total(), 1);
  char path[128];
  snprintf(path, sizeof path, "%s/sock", dir);
  struct stat st;
  ASSERT_NE(stat(path, &st), 0); /* no socket file made */
  ASSERT_EQ(rmdir(dir), 0);
  ASSERT_EQ(waitpid(-1, NULL, WNOHANG), -1); /* no child started */
  ASSERT_EQ(errno, ECHILD);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
  close(lfd);
  ASSERT_EQ(fd_count(), fds);
  ame_stm_shutdown();
}
