/*
** cmd/run/supervise.c — the supervisor of `ame run --workers N`
** (supervise.h, docs/multicore.md).
**
** Shape.  ame_supervise() forks the workers and then loops on poll() over
** a self-pipe (written by the handlers of SIGINT, SIGTERM and SIGCHLD) and
** the read ends of every worker's stdout and stderr pipes, until every
** worker has exited and none is due to be restarted.  It never runs
** anything of the caller's program; the listening sockets the caller made
** stay open here (a restarted worker is a fork of this process and needs
** them) but are never accepted on.
**
** Output.  Each worker incarnation gets a pipe for stdout and one for
** stderr; complete lines are copied to the supervisor's fd 1 or 2 with the
** prefix "[wN] ", one write() per batch of lines, so lines of different
** workers never interleave within a line.  A line longer than
** LINE_MAX_BYTES is cut; an unterminated last line is ended with "\n".
** All output here is write(2), never stdio: a stdio buffer would be copied
** into every worker forked after it.
**
** Signals passed on.  HUP, USR1 and USR2, when the program has a handler
** for them, are sent on to every worker (FWD_SIGNALS).
**
** Signals and fork.  INT, TERM and CHLD are blocked around fork(), and the
** child puts the caller's handlers and mask back (INT and TERM stay
** blocked: supervise.h) before anything can be delivered, so a signal that
** reaches a new worker early is the worker's (the handler also ignores a
** signal when getpid() is not the supervisor's).  SIGPIPE is ignored here so that a closed stdout costs
** only the copied lines.
*/
#include "supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536 /* a longer line is cut into pieces */
#define READ_CHUNK 65536     /* one read() of a worker's pipe */
#define DRAIN_S 1.0          /* output is read this long after the last
                                worker exited (its own children may still
                                hold the pipe) */

struct worker {
  pid_t pid;         /* the running process; 0 when none */
  double started;    /* when it was forked (monotonic seconds) */
  double restart_at; /* > 0: fork it again at this time */
  double backoff;    /* the wait before its last restart; 0: none yet */
};

struct stream {
  int fd;      /* read end of one incarnation's stdout or stderr pipe */
  int out;     /* where its lines go: 1 or 2 */
  unsigned id; /* the worker id, for the prefix */
  char *buf;   /* the unterminated line so far */
  size_t len, cap;
};

enum { RUNNING, STOPPING, FORCED };

/* One supervisor per process (supervise.h): its state is static so that
** the signal handler can reach the self-pipe. */
static struct {
  const ame_sup_config_t *cfg;
  pid_t self;               /* the supervisor's pid */
  struct worker *w;         /* cfg->workers slots; worker id = index + 1 */
  struct stream *s;         /* open pipes, any order */
  size_t ns, scap;
  char *obuf;               /* output assembled by pump() */
  size_t ocap;
  int sigpipe[2];           /* self-pipe: one byte per signal */
  int state;                /* RUNNING, STOPPING, FORCED */
  int stop_signo;           /* the signal forwarded to the workers */
  double kill_at;           /* STOPPING: SIGKILL whoever is left then */
  int failed;               /* the exit status will be 1 */
  sigset_t old_mask;        /* the caller's, for the children */
  struct sigaction old_int, old_term, old_chld, old_pipe;
  /* HUP, USR1, USR2: forwarded to the workers when the caller has a
  ** handler for them (FWD_SIGNALS). */
  struct sigaction old_fwd[3];
  int fwd[3];
} S;

/* Signals passed on to every worker, when the program (the caller) has a
** handler for them: twistd's SIGUSR1 log rotation, a program's own
** SIGHUP "reload"; without a handler they keep their default action (the
** supervisor ends, and its workers with it, as one process would). */
static const int FWD_SIGNALS[3] = {SIGHUP, SIGUSR1, SIGUSR2};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Write all of p to fd, waiting if fd is non-blocking and full.  Return
** -1 (and give up) on any other error. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        poll(&pfd, 1, 1000);
        continue;
      }
      return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* Log one line "<name>: <message>" on stderr. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[512];
  int n = snprintf(line, sizeof line, "%s: ", S.cfg->name);
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  write_all(2, line, (size_t)n);
}

static const char *signame(int signo) {
  switch (signo) {
  case SIGINT: return "SIGINT";
  case SIGTERM: return "SIGTERM";
  case SIGHUP: return "SIGHUP";
  case SIGUSR1: return "SIGUSR1";
  case SIGUSR2: return "SIGUSR2";
  default: return "signal";
  }
}

/* "exit status 3" or "signal 9", for wait status st. */
static void describe(int st, char *buf, size_t size) {
  if (WIFEXITED(st))
    snprintf(buf, size, "exit status %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    snprintf(buf, size, "signal %d%s", WTERMSIG(st),
             WCOREDUMP(st) ? ", core dumped" : "");
  else
    snprintf(buf, size, "wait status %#x", (unsigned)st);
}

static void on_signal(int signo) {
  int saved = errno;
  if (getpid() == S.self) {
    unsigned char b = (unsigned char)signo;
    ssize_t r = write(S.sigpipe[1], &b, 1); /* full: a byte is there */
    (void)r;
  }
  errno = saved;
}

static unsigned live_workers(void) {
  unsigned n = 0;
  for (unsigned i = 0; i < S.cfg->workers; i++) n += S.w[i].pid > 0;
  return n;
}

/* ---- output ---------------------------------------------------------- */

/* Make room for n more bytes at obuf + used.  Return -1 if malloc fails. */
static int obuf_reserve(size_t used, size_t n) {
  if (used + n <= S.ocap) return 0;
  size_t cap = S.ocap ? S.ocap : 4096;
  while (cap < used + n) cap *= 2;
  char *p = realloc(S.obuf, cap);
  if (p == NULL) return -1;
  S.obuf = p;
  S.ocap = cap;
  return 0;
}

/* Append "[wN] " + p[0..n) + "\n" to obuf at *used (the data carries its
** own "\n" unless add_nl). */
static void obuf_line(size_t *used, unsigned id, const char *p, size_t n,
                      int add_nl) {
  char prefix[24];
  int pn = snprintf(prefix, sizeof prefix, "[w%u] ", id);
  if (obuf_reserve(*used, (size_t)pn + n + 1) < 0) return; /* dropped */
  memcpy(S.obuf + *used, prefix, (size_t)pn);
  memcpy(S.obuf + *used + pn, p, n);
  *used += (size_t)pn + n;
  if (add_nl) S.obuf[(*used)++] = '\n';
}

/* Keep p[0..n) as (the start of) s's unterminated line; cut it into a line
** of its own once it reaches LINE_MAX_BYTES. */
static void stream_keep(struct stream *s, size_t *used, const char *p,
                        size_t n) {
  while (n > 0) {
    size_t room = LINE_MAX_BYTES - s->len;
    size_t take = n < room ? n : room;
    if (s->cap < s->len + take) {
      size_t cap = s->cap ? s->cap : 256;
      while (cap < s->len + take) cap *= 2;
      char *b = realloc(s->buf, cap);
      if (b == NULL) return; /* dropped */
      s->buf = b;
      s->cap = cap;
    }
    memcpy(s->buf + s->len, p, take);
    s->len += take;
    p += take;
    n -= take;
    if (s->len == LINE_MAX_BYTES) {
      obuf_line(used, s->id, s->buf, s->len, 1);
      s->len = 0;
    }
  }
}

/* Read what stream s has and copy its complete lines out.  Return 0 at
** end of file (the rest of the line is copied out too), 1 otherwise. */
static int pump(struct stream *s) {
  char chunk[READ_CHUNK];
  ssize_t n = read(s->fd, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
  size_t used = 0;
  if (n <= 0) { /* end of file, or an error: the same */
    if (s->len) obuf_line(&used, s->id, s->buf, s->len, 1);
    s->len = 0;
    write_all(s->out, S.obuf, used);
    return 0;
  }
  const char *p = chunk, *end = chunk + n;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) {
      stream_keep(s, &used, p, (size_t)(end - p));
      break;
    }
    if (s->len) { /* finish the line begun in an earlier read */
      stream_keep(s, &used, p, (size_t)(nl + 1 - p));
      if (s->len) obuf_line(&used, s->id, s->buf, s->len, 0);
      s->len = 0;
    } else {
      obuf_line(&used, s->id, p, (size_t)(nl + 1 - p), 0);
    }
    p = nl + 1;
  }
  if (used) write_all(s->out, S.obuf, used);
  return 1;
}

static void stream_close(size_t k) {
  close(S.s[k].fd);
  free(S.s[k].buf);
  S.s[k] = S.s[--S.ns];
}

/* ---- workers --------------------------------------------------------- */

/* In a new worker: put the caller's signal handlers back, close
** everything of the supervisor's, and move stdout and stderr onto the
** pipes.  (The caller's signal mask is restored after this.) */
static void child_setup(int out, int err) {
  sigaction(SIGINT, &S.old_int, NULL);
  sigaction(SIGTERM, &S.old_term, NULL);
  sigaction(SIGCHLD, &S.old_chld, NULL);
  sigaction(SIGPIPE, &S.old_pipe, NULL);
  for (int k = 0; k < 3; k++)
    if (S.fwd[k]) sigaction(FWD_SIGNALS[k], &S.old_fwd[k], NULL);
  close(S.sigpipe[0]);
  close(S.sigpipe[1]);
  for (size_t k = 0; k < S.ns; k++) {
    close(S.s[k].fd);
    free(S.s[k].buf);
  }
  free(S.s);
  free(S.obuf);
  free(S.w);
  /* fds 0-2 are open (ame_supervise), so out and err are above 2. */
  dup2(out, 1);
  dup2(err, 2);
  close(out);
  close(err);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  memset(&S, 0, sizeof S);
}

/* When worker slot i has died: how long to wait before its restart. */
static double next_backoff(struct worker *w, double now) {
  if (w->backoff == 0 || now - w->started >= AME_SUP_BACKOFF_RESET_S)
    w->backoff = AME_SUP_BACKOFF_MIN_S;
  else if ((w->backoff *= 2) > AME_SUP_BACKOFF_MAX_S)
    w->backoff = AME_SUP_BACKOFF_MAX_S;
  return w->backoff;
}

/* Fork worker slot i.  Return its id in the new worker, 0 in the
** supervisor (a fork that fails is logged and retried after a back-off). */
static unsigned start_worker(unsigned i, double now) {
  struct worker *w = &S.w[i];
  int out[2] = {-1, -1}, err[2] = {-1, -1}, e;
  if (S.ns + 2 > S.scap) {
    size_t cap = S.scap ? 2 * S.scap : 2 * (size_t)S.cfg->workers + 2;
    struct stream *s = realloc(S.s, cap * sizeof *s);
    if (s == NULL) {
      e = ENOMEM;
      goto fail;
    }
    S.s = s;
    S.scap = cap;
  }
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    e = errno;
    goto fail;
  }
  sigset_t block, prev;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGCHLD);
  for (int k = 0; k < 3; k++)
    if (S.fwd[k]) sigaddset(&block, FWD_SIGNALS[k]);
  sigprocmask(SIG_BLOCK, &block, &prev);
  if (S.cfg->before_fork) S.cfg->before_fork(S.cfg->data);
  pid_t pid = fork();
  if (pid == 0) {
    if (S.cfg->after_fork_child) S.cfg->after_fork_child(S.cfg->data);
    pid_t self = S.self;
    sigset_t mask = S.old_mask;
    child_setup(out[1], err[1]);
    /* Stop signals wait until the worker can handle them (supervise.h). */
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    if (getppid() != self) raise(SIGTERM); /* the supervisor is gone */
    return i + 1;
  }
  e = errno;
  if (S.cfg->after_fork_parent) S.cfg->after_fork_parent(S.cfg->data);
  sigprocmask(SIG_SETMASK, &prev, NULL);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    goto fail2;
  }
  w->pid = pid;
  w->started = now;
  w->restart_at = 0;
  S.s[S.ns++] = (struct stream){.fd = out[0], .out = 1, .id = i + 1};
  S.s[S.ns++] = (struct stream){.fd = err[0], .out = 2, .id = i + 1};
  say("worker %u started (pid %d)", i + 1, (int)pid);
  return 0;
fail:
  for (int k = 0; k < 2; k++) {
    if (out[k] >= 0) close(out[k]);
    if (err[k] >= 0) close(err[k]);
  }
fail2:;
  w->started = now;
  double d = next_backoff(w, now);
  w->restart_at = now + d;
  say("cannot start worker %u: %s; trying again in %g s", i + 1,
      strerror(e), d);
  return 0;
}

/* Collect every worker that has exited; schedule restarts. */
static void reap(double now) {
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) return;
    struct worker *w = NULL;
    unsigned i;
    for (i = 0; i < S.cfg->workers; i++)
      if (S.w[i].pid == pid) {
        w = &S.w[i];
        break;
      }
    if (w == NULL) continue; /* not a worker (cannot happen) */
    w->pid = 0;
    if (S.cfg->worker_exited) S.cfg->worker_exited(S.cfg->data, (int)pid);
    char how[64];
    describe(st, how, sizeof how);
    int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (S.state == RUNNING) {
      if (clean) {
        say("worker %u (pid %d) exited (%s); not restarted", i + 1,
            (int)pid, how);
      } else {
        double d = next_backoff(w, now);
        w->restart_at = now + d;
        say("worker %u (pid %d) died (%s); restarting in %g s", i + 1,
            (int)pid, how, d);
      }
    } else {
      int by_stop = WIFSIGNALED(st) && WTERMSIG(st) == S.stop_signo;
      if (!clean && !by_stop) {
        S.failed = 1;
        if (S.state != FORCED)
          say("worker %u (pid %d) ended with %s", i + 1, (int)pid, how);
      }
    }
  }
}

static void kill_all(int signo) {
  for (unsigned i = 0; i < S.cfg->workers; i++)
    if (S.w[i].pid > 0) kill(S.w[i].pid, signo);
}

static void force(const char *why) {
  S.state = FORCED;
  S.failed = 1;
  say("%s: killing %u worker(s)", why, live_workers());
  kill_all(SIGKILL);
}

static void on_stop_signal(int signo, double now) {
  if (S.state == RUNNING) {
    S.state = STOPPING;
    S.stop_signo = signo;
    S.kill_at = now + S.cfg->grace_s + AME_SUP_KILL_SLACK_S;
    for (unsigned i = 0; i < S.cfg->workers; i++) S.w[i].restart_at = 0;
    say("%s: stopping %u worker(s) gracefully (a second signal kills "
        "them)", signame(signo), live_workers());
    kill_all(signo);
  } else if (S.state == STOPPING) {
    force("second signal");
  }
}

/* A signal the program handles (FWD_SIGNALS): pass it on to every live
** worker. */
static void forward(int signo) {
  unsigned n = 0;
  for (unsigned i = 0; i < S.cfg->workers; i++)
    if (S.w[i].pid > 0 && kill(S.w[i].pid, signo) == 0) n++;
  say("%s: passed on to %u worker(s)", signame(signo), n);
}

/* ---- the loop -------------------------------------------------------- */

int ame_supervise(const ame_sup_config_t *cfg, int *status) {
  memset(&S, 0, sizeof S);
  S.cfg = cfg;
  S.self = getpid();
  S.sigpipe[0] = S.sigpipe[1] = -1;
  /* fds 0-2 must be open, so that no pipe lands on them. */
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
      return -EBADF;
  S.w = calloc(cfg->workers, sizeof *S.w);
  if (S.w == NULL) return -ENOMEM;
  if (pipe2(S.sigpipe, O_CLOEXEC | O_NONBLOCK) < 0) {
    int e = errno;
    free(S.w);
    return -e;
  }
  sigprocmask(SIG_SETMASK, NULL, &S.old_mask);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &S.old_int);
  sigaction(SIGTERM, &sa, &S.old_term);
  sigaction(SIGCHLD, &sa, &S.old_chld);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, &S.old_pipe);
  sa.sa_handler = on_signal;
  for (int k = 0; k < 3; k++) {
    struct sigaction cur;
    if (sigaction(FWD_SIGNALS[k], NULL, &cur) != 0) continue;
    int handled = (cur.sa_flags & SA_SIGINFO) ? cur.sa_sigaction != NULL
                  : cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
    if (handled && sigaction(FWD_SIGNALS[k], &sa, &S.old_fwd[k]) == 0)
      S.fwd[k] = 1;
  }

  for (unsigned i = 0; i < cfg->workers; i++) {
    unsigned id = start_worker(i, now_s());
    if (id) return (int)id;
  }

  struct pollfd *pfds = NULL;
  size_t npcap = 0;
  for (;;) {
    double now = now_s();
    reap(now);
    if (S.state == RUNNING)
      for (unsigned i = 0; i < cfg->workers; i++)
        if (S.w[i].pid == 0 && S.w[i].restart_at > 0 &&
            S.w[i].restart_at <= now) {
          unsigned id = start_worker(i, now);
          if (id) {
            free(pfds);
            return (int)id;
          }
        }
    if (S.state == STOPPING && now >= S.kill_at)
      force("workers still running after the grace period");
    /* Done when no worker runs and none is due to restart. */
    double next = -1;
    int busy = live_workers() > 0;
    if (S.state == RUNNING)
      for (unsigned i = 0; i < cfg->workers; i++)
        if (S.w[i].restart_at > 0) {
          busy = 1;
          if (next < 0 || S.w[i].restart_at < next) next = S.w[i].restart_at;
        }
    if (!busy) break;
    if (S.state == STOPPING && (next < 0 || S.kill_at < next))
      next = S.kill_at;
    int timeout = -1;
    if (next >= 0) timeout = next <= now ? 0 : (int)((next - now) * 1e3) + 1;

    if (npcap < S.ns + 1) {
      npcap = S.ns + 1 + cfg->workers * 2;
      struct pollfd *p = realloc(pfds, npcap * sizeof *p);
      if (p == NULL) { /* try again shortly */
        npcap = 0;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
        continue;
      }
      pfds = p;
    }
    pfds[0] = (struct pollfd){.fd = S.sigpipe[0], .events = POLLIN};
    for (size_t k = 0; k < S.ns; k++)
      pfds[k + 1] = (struct pollfd){.fd = S.s[k].fd, .events = POLLIN};
    size_t np = S.ns + 1;
    if (poll(pfds, np, timeout) < 0) continue; /* EINTR */
    now = now_s();
    if (pfds[0].revents) {
      unsigned char sig[64];
      ssize_t n;
      while ((n = read(S.sigpipe[0], sig, sizeof sig)) > 0)
        for (ssize_t k = 0; k < n; k++)
          if (sig[k] == SIGINT || sig[k] == SIGTERM)
            on_stop_signal(sig[k], now);
          else if (sig[k] != SIGCHLD)
            forward(sig[k]);
    }
    /* Streams: walk backwards, stream_close() moves the last into k. */
    for (size_t k = np - 1; k >= 1; k--)
      if (pfds[k].revents && !pump(&S.s[k - 1])) stream_close(k - 1);
  }

  /* Copy what is left in the pipes, for a little while. */
  double until = now_s() + DRAIN_S;
  while (S.ns > 0) {
    double left = until - now_s();
    if (left <= 0) break;
    if (npcap < S.ns) break; /* cannot happen: ns only shrinks here */
    for (size_t k = 0; k < S.ns; k++)
      pfds[k] = (struct pollfd){.fd = S.s[k].fd, .events = POLLIN};
    size_t np = S.ns;
    if (poll(pfds, np, (int)(left * 1000) + 1) <= 0) continue;
    for (size_t k = np; k-- > 0;)
      if (pfds[k].revents && !pump(&S.s[k])) stream_close(k);
  }
  while (S.ns > 0) {
    struct stream *s = &S.s[S.ns - 1];
    size_t used = 0;
    if (s->len) obuf_line(&used, s->id, s->buf, s->len, 1);
    write_all(s->out, S.obuf, used);
    stream_close(S.ns - 1);
  }
  free(pfds);
  free(S.s);
  free(S.obuf);
  free(S.w);
  close(S.sigpipe[0]);
  close(S.sigpipe[1]);
  sigaction(SIGINT, &S.old_int, NULL);
  sigaction(SIGTERM, &S.old_term, NULL);
  sigaction(SIGCHLD, &S.old_chld, NULL);
  sigaction(SIGPIPE, &S.old_pipe, NULL);
  for (int k = 0; k < 3; k++)
    if (S.fwd[k]) sigaction(FWD_SIGNALS[k], &S.old_fwd[k], NULL);
  *status = S.failed ? 1 : 0;
  return 0;
}
