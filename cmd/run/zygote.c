/*
** cmd/run/zygote.c — a reload's candidate and zygote (reload.h).
**
** The candidate is a child of the template that runs the program afresh.
** At reactor.run() it becomes the zygote: it keeps the program's state as
** the setup left it and forks a worker from it for each FORK request.  A
** worker is forked twice (zygote -> intermediate -> worker) and the
** intermediate exits at once, so the worker's parent becomes the
** supervisor (a child subreaper, the nearest ancestor left): it reaps the
** worker, and the worker's orphan deadline (page.h) follows the
** supervisor's life, as for the supervisor's own forks.
*/
#include "listeners.h"
#include "page.h"
#include "reload.h"
#include "reload_msg.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct {
  int ctl;                      /* -1: this process is no candidate */
  int root;                     /* the supervisor's pid */
  int fds[AME_LST_MAX];         /* the primaries received */
  uint32_t idx[AME_LST_MAX];    /* ... their listener indexes */
  unsigned n;
  unsigned workers;             /* in a worker: the configured workers */
} Z = {.ctl = -1};

void ame_reload_set_candidate(int ctl, int root, const int *fds,
                              const uint32_t *idx, unsigned n) {
  Z.ctl = ctl;
  Z.root = root;
  Z.n = n < AME_LST_MAX ? n : AME_LST_MAX;
  memcpy(Z.fds, fds, Z.n * sizeof *fds);
  memcpy(Z.idx, idx, Z.n * sizeof *idx);
}

unsigned ame_reload_workers(void) { return Z.workers; }

const int *ame_reload_inherited(unsigned *n) {
  if (Z.ctl < 0) return NULL;
  *n = Z.n;
  return Z.fds;
}

/* In the worker (grandchild): wait until the supervisor is its parent.
** Return 0, or -1 if that does not happen (the supervisor is gone). */
static int wait_reparent(void) {
  for (int ms = 0; ms < REPARENT_WAIT_MS; ms++) {
    if (getppid() == Z.root) return 0;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return -1;
}

int ame_reload_zygote(const int *pyfds, unsigned npy, double deadline_s,
                      void (*before_fork)(void *), void (*after_parent)(void *),
                      void (*after_child)(void *), void *data) {
  if (Z.ctl < 0) return -EINVAL;
  /* A test's hook: answer each fork request this late (the supervisor's
  ** handling of a worker whose start it gave up on: tests/cmd). */
  const char *delay = getenv("AME_TEST_ZYGOTE_REPLY_MS");
  long reply_delay_ms = delay ? strtol(delay, NULL, 10) : 0;
  /* targets[p]: the fd of the Port that adopted listener p, or -1. */
  int targets[AME_LST_MAX];
  for (unsigned p = 0; p < AME_LST_MAX; p++) targets[p] = -1;
  struct msg m = {.magic = MAGIC_READY, .pid = (int32_t)getpid()};
  for (unsigned k = 0; k < Z.n; k++) {
    int adopted = 0;
    for (unsigned j = 0; j < npy; j++) adopted |= pyfds[j] == Z.fds[k];
    if (adopted && Z.idx[k] < AME_LST_MAX) {
      targets[Z.idx[k]] = Z.fds[k];
      m.adopted |= (uint64_t)1 << Z.idx[k];
    } else {
      close(Z.fds[k]); /* the supervisor closes its own copy later */
    }
  }
  int rc = ame_reload__send(Z.ctl, &m, NULL, 0);
  if (rc < 0) return rc;
  prctl(PR_SET_NAME, "ame-zygote");
  /* The template's death no longer ends the zygote: its generation's
  ** workers still need it for their restarts, and it ends with its
  ** control socket (the supervisor's), below. */
  prctl(PR_SET_PDEATHSIG, 0);
  /* From here on the zygote only forks: stop signals and SIGHUP are left
  ** pending (a pending signal is not inherited), and it ends when the
  ** supervisor closes the control socket. */
  sigset_t block, mask;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGHUP);
  sigprocmask(SIG_BLOCK, &block, &mask);
  /* A worker gets the program's mask back, with the stop signals blocked
  ** until it can handle them (as the supervisor's own forks: supervise.h). */
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  for (;;) {
    int fds[MAX_FDS];
    int n = ame_reload__recv(Z.ctl, &m, fds);
    if (n < 0 && n == -EPROTO) continue;
    if (n <= 0 && m.magic == 0) _exit(0); /* closed: this generation ended */
    if (m.magic != MAGIC_FORK || (unsigned)n != m.n + 2) {
      while (n > 0) close(fds[--n]);
      continue;
    }
    int pp[2];
    struct msg reply = {.magic = MAGIC_FORK, .seq = m.seq, .pid = -EAGAIN};
    if (pipe2(pp, O_CLOEXEC) < 0) {
      reply.pid = -errno;
      goto answer;
    }
    if (before_fork) before_fork(data);
    pid_t mid = fork();
    if (mid == 0) {
      pid_t w = fork();
      if (w != 0) {
        int32_t v = w > 0 ? (int32_t)w : -errno;
        ssize_t r = write(pp[1], &v, sizeof v);
        (void)r;
        _exit(0);
      }
      /* The worker. */
      close(pp[0]);
      close(pp[1]);
      if (wait_reparent() < 0) _exit(1);
      prctl(PR_SET_NAME, "ame");
      if (after_child) after_child(data);
      close(Z.ctl);
      Z.ctl = -1;
      Z.workers = m.workers;
      sigprocmask(SIG_SETMASK, &mask, NULL);
      dup2(fds[0], 1);
      dup2(fds[1], 2);
      for (unsigned k = 0; k < m.n; k++)
        if (m.idx[k] < AME_LST_MAX && targets[m.idx[k]] >= 0)
          dup2(fds[2 + k], targets[m.idx[k]]);
      for (int k = 0; k < n; k++) close(fds[k]);
      if (ame_page_worker_setup(m.entry, Z.root, deadline_s) < 0)
        kill(getpid(), SIGTERM);
      return (int)m.slot;
    }
    int e = errno;
    if (after_parent) after_parent(data);
    close(pp[1]);
    if (mid < 0) {
      reply.pid = -e;
    } else {
      int32_t v = -EAGAIN;
      ssize_t r;
      do r = read(pp[0], &v, sizeof v);
      while (r < 0 && errno == EINTR);
      reply.pid = r == sizeof v ? v : -EAGAIN;
      while (waitpid(mid, NULL, 0) < 0 && errno == EINTR) {
      }
    }
    close(pp[0]);
  answer:
    for (int k = 0; k < n; k++) close(fds[k]);
    if (reply_delay_ms > 0) { /* tests: a zygote that answers late */
      struct timespec ts = {reply_delay_ms / 1000,
                            (reply_delay_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
    if (ame_reload__send(Z.ctl, &reply, NULL, 0) < 0) _exit(0);
  }
}
