/*
** tests/reactor/test_process.c — child processes: stdout and stderr
** captured through pipe streams, a stdin pipe, exit statuses and signals,
** environment and working directory, a program that does not exist, a
** spawn asked for in a transaction, a kill asked for in one, a process
** whose stdio streams outlive its exit, and a spawn that finds the
** descriptor table full.
*/
#include "reactor-test.h"

#include <sys/wait.h>

static ame_reactor_t *g_r;

/* One child's record: what it wrote, how it ended. */
struct child {
  char out[256];
  uintptr_t out_len;       /* transactional */
  char err[256];
  uintptr_t err_len;       /* transactional */
  atomic_int exits, out_closes, err_closes;
  atomic_long status;
  atomic_int term_signal;
  atomic_int kill_after_exit;
};

/* Append to a child's buffer: the bytes land at commit (a re-run would
** otherwise append twice), the length is transactional. */
struct append {
  char *dst;
  char data[256];
  size_t len;
};

static void append_commit(void *arg) {
  struct append *a = arg;
  memcpy(a->dst, a->data, a->len);
  free(a);
}

static void append_abort(void *arg) { free(arg); }

static int capture(ame_tx_t *tx, char *buf, uintptr_t *len, const char *d,
                   size_t n) {
  uintptr_t at = ame_load_word_tx(tx, len);
  ASSERT_LE(at + n, 255);
  struct append *a = malloc(sizeof *a);
  ASSERT_NOT_NULL(a);
  a->dst = buf + at;
  memcpy(a->data, d, n);
  a->len = n;
  ASSERT_EQ(ame_tx_on_abort(tx, append_abort, a), 0);
  ASSERT_EQ(ame_tx_on_commit(tx, append_commit, a), 0);
  ame_store_word_tx(tx, len, at + n);
  return 0;
}

static int out_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  struct child *c = ame_handle_data(s);
  return capture(tx, c->out, &c->out_len, d, n);
}

static int err_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  struct child *c = ame_handle_data(s);
  return capture(tx, c->err, &c->err_len, d, n);
}

static void out_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  struct child *c = ame_handle_data(s);
  ASSERT_EQ(status, 0);
  commit_inc(tx, &c->out_closes);
}

static void err_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  struct child *c = ame_handle_data(s);
  ASSERT_EQ(status, 0);
  commit_inc(tx, &c->err_closes);
}

static const ame_stream_cbs_t out_cbs = {.on_data = out_data,
                                         .on_close = out_close};
static const ame_stream_cbs_t err_cbs = {.on_data = err_data,
                                         .on_close = err_close};

static int on_exit_cb(ame_tx_t *tx, ame_process_t *p, int64_t status,
                      int term_signal) {
  struct child *c = ame_handle_data(p);
  ASSERT_NOT_NULL(c);
  atomic_store(&c->status, (long)status);
  atomic_store(&c->term_signal, term_signal);
  atomic_store(&c->kill_after_exit, ame_process_kill(p, SIGTERM));
  commit_inc(tx, &c->exits);
  return 0;
}

static ame_process_options_t opts(const char *file, char **args,
                                  struct child *c) {
  ame_process_options_t o = {.file = file,
                             .args = args,
                             .stdout_cbs = &out_cbs,
                             .stderr_cbs = &err_cbs,
                             .on_exit = on_exit_cb,
                             .data = c};
  return o;
}

/* Wait until the child has exited and both its pipes have closed. */
static void wait_child(struct child *c) {
  ASSERT_WAIT(atomic_load(&c->exits) == 1 &&
                  atomic_load(&c->out_closes) == 1 &&
                  atomic_load(&c->err_closes) == 1,
              10000);
  c->out[tx_peek(&c->out_len)] = '\0';
  c->err[tx_peek(&c->err_len)] = '\0';
}

/* ------------------------------------------------------------------------
*/

static struct child g_echo_c, g_cat_c, g_sh_c, g_env_c;

TEST_IMPL(spawn_echo_cat) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  /* /bin/echo: stdout captured, exit status 0. */
  ame_process_t *p;
  ame_process_options_t o =
      opts("/bin/echo", (char *[]){"echo", "hello", "world", NULL}, &g_echo_c);
  ASSERT_EQ(ame_spawn(g_r, &o, &p), 0);
  ASSERT_GT(ame_process_pid(p), 0);
  ASSERT_NULL(ame_process_stdio(p, 0)); /* no stdin pipe asked for */
  ASSERT_NOT_NULL(ame_process_stdio(p, 1));
  ASSERT_NULL(ame_process_stdio(p, 3));
  /* /bin/cat: what we write to its stdin comes back on its stdout. */
  ame_process_options_t oc =
      opts("cat", (char *[]){"cat", NULL}, &g_cat_c); /* PATH is searched */
  oc.pipe_stdin = 1;
  ame_process_t *cat;
  ASSERT_EQ(ame_spawn(g_r, &oc, &cat), 0);
  ame_stream_t *in = ame_process_stdio(cat, 0);
  ASSERT_NOT_NULL(in);
  ASSERT_EQ(ame_stream_write(in, "abc", 3), 0);
  ASSERT_EQ(ame_stream_write(in, "def\n", 4), 0);
  ame_stream_close(in);
  /* sh: an exit status, and stderr. */
  ame_process_options_t os = opts(
      "/bin/sh", (char *[]){"sh", "-c", "echo oops >&2; exit 3", NULL},
      &g_sh_c);
  ASSERT_EQ(ame_spawn(g_r, &os, &p), 0);
  /* Environment and working directory. */
  ame_process_options_t oe =
      opts("/bin/sh", (char *[]){"sh", "-c", "echo $AME_X; pwd", NULL},
           &g_env_c);
  oe.env = (char *[]){"AME_X=from-env", "PATH=/usr/bin:/bin", NULL};
  oe.cwd = "/";
  ASSERT_EQ(ame_spawn(g_r, &oe, &p), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  wait_child(&g_echo_c);
  wait_child(&g_cat_c);
  wait_child(&g_sh_c);
  wait_child(&g_env_c);
  rt_stop(&rt);
  ASSERT_STR_EQ(g_echo_c.out, "hello world\n");
  ASSERT_EQ(atomic_load(&g_echo_c.status), 0);
  ASSERT_EQ(atomic_load(&g_echo_c.term_signal), 0);
  ASSERT_EQ(atomic_load(&g_echo_c.kill_after_exit), -ESRCH);
  ASSERT_STR_EQ(g_cat_c.out, "abcdef\n");
  ASSERT_EQ(atomic_load(&g_cat_c.status), 0);
  ASSERT_STR_EQ(g_sh_c.out, "");
  ASSERT_STR_EQ(g_sh_c.err, "oops\n");
  ASSERT_EQ(atomic_load(&g_sh_c.status), 3);
  ASSERT_STR_EQ(g_env_c.out, "from-env\n/\n");
  ASSERT_EQ(atomic_load(&g_env_c.status), 0);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A program that does not exist: -ENOENT and no callback outside a
** transaction; inside one the spawn happens at commit and the failure is
** an on_exit with -ENOENT.  ame_process_kill reports the signal.
*/

static struct child g_missing_c, g_sleep_c, g_tx_c;
static _Atomic(ame_process_t *) g_sleeper;

static int spawn_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ame_process_t *p;
  ame_process_options_t o = opts("/nonexistent/ame-program",
                                 (char *[]){"x", NULL}, &g_missing_c);
  o.stdout_cbs = o.stderr_cbs = NULL;
  ASSERT_EQ(ame_spawn(g_r, &o, &p), 0);
  /* A spawn in an attempt that aborts never happens. */
  ame_process_options_t t = opts("/bin/sh",
                                 (char *[]){"sh", "-c", "echo once", NULL},
                                 &g_tx_c);
  ASSERT_EQ(ame_spawn(g_r, &t, &p), 0);
  if (ame_tx_attempt(tx) == 0)
    ame_tx_abort(tx);
  return 0;
}

static int kill_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ASSERT_EQ(ame_process_kill(atomic_load(&g_sleeper), SIGTERM), 0);
  return 0;
}

TEST_IMPL(spawn_errors_kill) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  ame_process_t *p;
  ame_process_options_t o = opts("/nonexistent/ame-program",
                                 (char *[]){"x", NULL}, &g_missing_c);
  ASSERT_EQ(ame_spawn(g_r, &o, &p), -ENOENT);
  ASSERT_EQ(ame_spawn(g_r, NULL, &p), -EINVAL);
  o.args = NULL;
  ASSERT_EQ(ame_spawn(g_r, &o, &p), -EINVAL);
  ASSERT_EQ(ame_process_kill(NULL, SIGTERM), -EINVAL);
  ame_process_options_t os =
      opts("/bin/sleep", (char *[]){"sleep", "30", NULL}, &g_sleep_c);
  ame_process_t *sleeper;
  ASSERT_EQ(ame_spawn(g_r, &os, &sleeper), 0);
  atomic_store(&g_sleeper, sleeper);
  ASSERT_EQ(ame_reactor_call(g_r, spawn_call, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_missing_c.exits) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_missing_c.status), -ENOENT);
  wait_child(&g_tx_c);
  ASSERT_STR_EQ(g_tx_c.out, "once\n");
  ASSERT_EQ(ame_reactor_call(g_r, kill_call, NULL), 0);
  wait_child(&g_sleep_c);
  ASSERT_EQ(atomic_load(&g_sleep_c.term_signal), SIGTERM);
  sleep_ms(20);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_missing_c.exits), 1);
  ASSERT_EQ(atomic_load(&g_tx_c.exits), 1);
  ASSERT_EQ(atomic_load(&g_sleep_c.exits), 1);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A kill asked for in a transaction is sent at commit: an attempt that
** aborts sends nothing.  The first attempt asks for SIGTERM and aborts,
** the one that commits asks for nothing; a later callback sends SIGKILL,
** which must be the signal the child dies of.
*/

static struct child g_kd_c;
static _Atomic(ame_process_t *) g_kd_p;
static atomic_int g_kd_attempts;

static int kd_abort_call(ame_tx_t *tx, void *arg) {
  (void)arg;
  atomic_fetch_add(&g_kd_attempts, 1);
  if (ame_tx_attempt(tx) == 0) {
    ASSERT_EQ(ame_process_kill(atomic_load(&g_kd_p), SIGTERM), 0);
    ame_tx_abort(tx);
  }
  return 0;
}

static int kd_kill_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ASSERT_EQ(ame_process_kill(atomic_load(&g_kd_p), SIGKILL), 0);
  return 0;
}

TEST_IMPL(spawn_kill_deferred) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  ame_process_options_t o =
      opts("/bin/sleep", (char *[]){"sleep", "30", NULL}, &g_kd_c);
  ame_process_t *p;
  ASSERT_EQ(ame_spawn(g_r, &o, &p), 0);
  atomic_store(&g_kd_p, p);
  /* Posted calls run in order. */
  ASSERT_EQ(ame_reactor_call(g_r, kd_abort_call, NULL), 0);
  ASSERT_EQ(ame_reactor_call(g_r, kd_kill_call, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  wait_child(&g_kd_c);
  ASSERT_EQ(atomic_load(&g_kd_attempts), 2);
  ASSERT_EQ(atomic_load(&g_kd_c.term_signal), SIGKILL);
  rt_stop(&rt);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A process outlives its exit while one of its stdio streams is open: the
** stream's callbacks may use it.  The child exits at once, leaving a
** grandchild that writes to the inherited stdout later; the stdout
** callback, after on_exit, asks the process for its pid and streams.
** (Freed at its exit, the process was read after its free: AddressSanitizer
** reports it.)
*/

static _Atomic(ame_process_t *) g_po_p;
static atomic_int g_po_exits, g_po_late, g_po_closes;
static atomic_int g_po_pid_seen;

static int po_exit(ame_tx_t *tx, ame_process_t *p, int64_t status,
                   int term_signal) {
  (void)p;
  (void)term_signal;
  ASSERT_EQ(status, 3);
  commit_inc(tx, &g_po_exits);
  return 0;
}

static int po_data(ame_tx_t *tx, ame_stream_t *s, const char *d, size_t n) {
  (void)d;
  (void)n;
  ame_process_t *p = atomic_load(&g_po_p);
  if (atomic_load(&g_po_exits) == 0) return 0; /* before the exit */
  ASSERT_EQ(ame_process_stdio(p, 1), s);
  ASSERT(ame_process_stdio(p, 0) == NULL);
  atomic_store(&g_po_pid_seen, ame_process_pid(p));
  ASSERT_EQ(ame_process_kill(p, SIGTERM), -ESRCH);
  commit_inc(tx, &g_po_late);
  return 0;
}

static void po_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)s;
  ASSERT_EQ(status, 0);
  commit_inc(tx, &g_po_closes);
}

static const ame_stream_cbs_t po_cbs = {.on_data = po_data,
                                        .on_close = po_close};

TEST_IMPL(spawn_stdio_outlives_exit) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  ame_process_options_t o = {
      .file = "/bin/sh",
      .args = (char *[]){"sh", "-c", "(sleep 0.3; echo late) & exit 3",
                         NULL},
      .stdout_cbs = &po_cbs,
      .on_exit = po_exit};
  ame_process_t *p;
  ASSERT_EQ(ame_spawn(g_r, &o, &p), 0);
  atomic_store(&g_po_p, p);
  int pid = ame_process_pid(p);
  struct rt rt;
  rt_start(&rt, g_r);
  ASSERT_WAIT(atomic_load(&g_po_closes) == 1, 10000);
  ASSERT_EQ(atomic_load(&g_po_exits), 1);
  ASSERT_EQ(atomic_load(&g_po_late), 1);
  ASSERT_EQ(atomic_load(&g_po_pid_seen), pid);
  rt_stop(&rt);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A spawn that finds the descriptor table full says so: -EMFILE, what the
** socket pair for a stdio stream met, as the call's result outside a
** transaction and as on_exit's status inside one (not -ENOMEM: memory
** did not run out).  A pair made before the one that failed is given
** back.
*/

static struct child g_mf_c;

static int mf_call(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  ame_process_t *p;
  ame_process_options_t o =
      opts("/bin/true", (char *[]){"true", NULL}, &g_mf_c);
  ASSERT_EQ(ame_spawn(g_r, &o, &p), 0); /* at commit */
  return 0;
}

TEST_IMPL(spawn_emfile) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  struct rlimit old, low;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  int before = fd_count();
  ame_process_t *p;
  ame_process_options_t o =
      opts("/bin/true", (char *[]){"true", NULL}, &g_mf_c);
  /* No room at all: stdout's pair cannot be made. */
  low.rlim_cur = limit_for_room(0);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  int full = ame_spawn(g_r, &o, &p);
  /* Room for one pair: stdin's is made, stdout's is not. */
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  low.rlim_cur = limit_for_room(2);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  o.pipe_stdin = 1;
  int one_pair = ame_spawn(g_r, &o, &p);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  printf("# no room: %d (%s); room for one pair: %d (%s)\n", full,
         strerror(-full), one_pair, strerror(-one_pair));
  ASSERT_EQ(full, -EMFILE);
  ASSERT_EQ(one_pair, -EMFILE);
  ASSERT_EQ(fd_count(), before);
  /* Inside a transaction: on_exit gets it. */
  struct rt rt;
  rt_start(&rt, g_r);
  low.rlim_cur = limit_for_room(0);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  ASSERT_EQ(ame_reactor_call(g_r, mf_call, NULL), 0);
  int exited = WAIT_UNTIL(atomic_load(&g_mf_c.exits) == 1, 10000);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT(exited);
  long st = atomic_load(&g_mf_c.status);
  printf("# in a transaction: on_exit status %ld (%s)\n", st,
         strerror((int)-st));
  ASSERT_EQ(st, -EMFILE);
  ASSERT_EQ(atomic_load(&g_mf_c.term_signal), 0);
  rt_stop(&rt);
  ASSERT_EQ(atomic_load(&g_mf_c.exits), 1);
  ASSERT_EQ(atomic_load(&g_mf_c.out_closes), 0);
  rt_finish(g_r, fds);
}
