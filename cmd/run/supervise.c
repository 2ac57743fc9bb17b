/*
** cmd/run/supervise.c — the supervisor of `ame run --workers N`
** (supervise.h, docs/multicore.md).
**
** Shape.  ame_supervise() forks the workers and then loops on poll() over
** a self-pipe (written by the signal handlers), the workers' output pipes
** (output.c), the metrics server's sockets (metrics.c) and a reload's
** control socket (reload.c), waking at least every AME_SUP_CHECK_S to read
** the workers' heartbeats and limits in the page (page.h), until every
** worker has exited and none is due to be restarted.  It never runs
** anything of the caller's program; the listening sockets stay open here
** (a restarted worker needs them: listeners.h) but are never accepted on.
**
** Slots and processes.  A slot is a worker id (1..N, AME_WORKER); the
** process serving it changes: a restart after a crash, a replacement
** (recycling, reload) that starts beside the old one and takes over once
** its reactor runs (its first heartbeat), after which the old one stops
** gracefully.  Each process has a record here and the page entry of the
** same index, which only it writes.
**
** Start.  Until every worker of the first start has sent a heartbeat, a
** worker that ends is a failed start: the others are stopped and the
** supervisor exits 1 (no half-started service).
**
** Signals.  INT and TERM stop the workers; HUP reloads (reload.c); TTIN
** and TTOU add or remove the highest worker (never below one); USR1 and
** USR2, when the program has a handler for them, are passed on to every
** worker (FWD_SIGNALS).  They are blocked around fork(), and the child puts
** the caller's handlers and mask back (INT and TERM stay blocked:
** supervise.h) before anything can be delivered (the handler also ignores
** a signal when getpid() is not the supervisor's).  SIGPIPE is ignored
** here so that a closed stdout costs only the copied lines.
*/
#include "supervise.h"

#include "listeners.h"
#include "metrics.h"
#include "output.h"
#include "proc.h"
#include "reload.h"
#include "sup_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_S 1.0 /* output is read this long after the last worker
                       exited (its own children may still hold the pipe) */

enum { RUNNING, STOPPING, FORCED };

struct sup_state ame_sup;
#define S ame_sup

/* The loop's own state. */
static struct {
  int sigpipe[2];     /* self-pipe: one byte per signal */
  int state;          /* RUNNING, STOPPING, FORCED */
  int stop_signo;     /* the signal forwarded to the workers */
  int failed;         /* the exit status will be 1 */
  int starting;       /* the first start is not over */
  int resize;         /* TTIN/TTOU deferred while a reload runs */
  struct sigaction old[16];
  int saved[16];      /* old[k] holds the caller's action for HANDLED[k] */
} L;

/* Signals the supervisor handles (SIGPIPE: ignored). */
static const int HANDLED[] = {SIGINT,  SIGTERM, SIGCHLD, SIGHUP, SIGTTIN,
                              SIGTTOU, SIGPIPE, SIGUSR1, SIGUSR2};
#define NHANDLED (sizeof HANDLED / sizeof HANDLED[0])
/* Passed on to the workers when the program has a handler for them:
** twistd's SIGUSR1 log reopening, a program's own USR2; without a handler
** they keep their default action (the supervisor ends, and its workers
** with it, as one process would). */
#define FWD_FIRST 7 /* HANDLED[7..]: USR1, USR2 */

double ame_sup_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ame_sup_say(const char *fmt, ...) {
  char line[640];
  int n = snprintf(line, sizeof line, "%s: ", S.cfg->name);
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  ame_write_all(2, line, (size_t)n);
}

static const char *signame(int signo) {
  switch (signo) {
  case SIGINT: return "SIGINT";
  case SIGTERM: return "SIGTERM";
  case SIGHUP: return "SIGHUP";
  case SIGUSR1: return "SIGUSR1";
  case SIGUSR2: return "SIGUSR2";
  case SIGTTIN: return "SIGTTIN";
  case SIGTTOU: return "SIGTTOU";
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
    ssize_t r = write(L.sigpipe[1], &b, 1); /* full: a byte is there */
    (void)r;
  }
  errno = saved;
}

/* In a new worker: the caller's signal handlers back, the self-pipe
** closed. */
void ame_sup_child_signals(void) {
  for (unsigned k = 0; k < NHANDLED; k++)
    if (L.saved[k]) sigaction(HANDLED[k], &L.old[k], NULL);
  close(L.sigpipe[0]);
  close(L.sigpipe[1]);
}

/* ---- reaping --------------------------------------------------------- */

static void global_stop(int signo, double now, const char *why);

/* Process i (of slot sl) has ended with wait status st. */
static void ended(int i, int st, double now) {
  struct sup_proc p = S.p[i];
  struct sup_slot *sl = &S.s[p.slot];
  int was_ready = ame_sup_ready(i);
  char how[64];
  describe(st, how, sizeof how);
  int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
  ame_page_entry_t *e = ame_page_entry((unsigned)i);
  /* Connections open is a gauge: an ended process has none. */
  for (unsigned k = 0; k < AME_PAGE_NCOUNTERS; k++)
    if (k != AME_PAGE_open)
      sl->done[k] += atomic_load_explicit(&e->c[k], memory_order_relaxed);
  S.p[i].state = P_FREE;
  if (L.state != RUNNING) {
    int by_stop = WIFSIGNALED(st) && WTERMSIG(st) == L.stop_signo;
    if (!clean && !by_stop && p.state != P_HUNG) {
      L.failed = 1;
      if (L.state != FORCED)
        ame_sup_say("worker %u (pid %d) ended with %s", p.slot, (int)p.pid,
                    how);
    }
    if (sl->cur == i) sl->cur = -1;
    if (sl->next == i) sl->next = -1;
    return;
  }
  if (sl->cur == i) {
    sl->cur = -1;
    if (p.state == P_STOPPING) {
      ame_sup_say("worker %u (pid %d) stopped (%s)", p.slot, (int)p.pid, how);
    } else if (L.starting && !was_ready) {
      ame_sup_say("worker %u (pid %d) failed to start (%s); stopping", p.slot,
                  (int)p.pid, how);
      L.failed = 1;
      global_stop(SIGTERM, now, NULL);
      return;
    } else {
      snprintf(sl->why, sizeof sl->why, "%s%s",
               p.state == P_HUNG ? "hung, killed: " : "", how);
    }
    if (p.state == P_STOPPING) {
      /* asked to stop: nothing to restart */
    } else if (sl->next >= 0) { /* its replacement takes over */
      sl->cur = sl->next;
      sl->next = -1;
      sl->restarts++;
      ame_sup_say("worker %u (pid %d) %s (%s); its replacement takes over",
                  p.slot, (int)p.pid, clean ? "exited" : "died", how);
    } else if (clean && p.state != P_HUNG) {
      ame_sup_say("worker %u (pid %d) exited (%s); not restarted", p.slot,
                  (int)p.pid, how);
    } else {
      double d = ame_sup_backoff(sl, p.started, now);
      sl->restart_at = now + d;
      sl->restarts++;
      ame_sup_say("worker %u (pid %d) %s (%s); restarting in %g s", p.slot,
                  (int)p.pid, p.state == P_HUNG ? "was hung and is gone"
                                                : "died", how, d);
    }
  } else if (sl->next == i) {
    sl->next = -1;
    if (p.state != P_STOPPING && ame_reload_owns(p.gen)) {
      ame_reload_worker_failed(i, how, now);
    } else {
      double d = ame_sup_backoff(sl, p.started, now);
      sl->retry_at = now + d;
      ame_sup_say("worker %u's replacement (pid %d) died before serving "
                  "(%s); worker %u goes on, trying again in %g s", p.slot,
                  (int)p.pid, how, p.slot, d);
    }
  } else if (p.state != P_STOPPING && ame_reload_owns(p.gen)) {
    ame_reload_worker_failed(i, how, now);
  } else {
    ame_sup_say("worker %u (pid %d, replaced) exited (%s)", p.slot,
                (int)p.pid, how);
  }
  if (!sl->active && sl->cur < 0 && sl->next < 0) {
    int left = 0;
    for (unsigned k = 0; k < AME_SUP_PROCS; k++)
      left |= S.p[k].state != P_FREE && S.p[k].slot == p.slot;
    if (!left) ame_lst_drop_slot(p.slot);
  }
}

/* Collect every process that has exited (workers, and anything else
** reparented to this subreaper). */
static void reap(double now) {
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) return;
    for (unsigned i = 0; i < AME_SUP_PROCS; i++)
      if (S.p[i].state != P_FREE && S.p[i].pid == pid) {
        if (S.cfg->worker_exited) S.cfg->worker_exited(S.cfg->data, (int)pid);
        ended((int)i, st, now);
        break;
      }
  }
}

/* Worker processes nobody here started.  A reload's worker is forked by
** its generation's zygote and reparented here (this process is a
** subreaper); if its pid never reached us (the zygote answered after
** ame_reload_fork gave up on it), it would serve on unseen, with the
** listening sockets, until the supervisor exits.  So, once a second, the
** children named as workers ("ame", or "ame-zygote" before a worker names
** itself) that no record here holds, and that are not exiting (proc.h: a
** zygote whose death this process saw may not be reaped yet), are stopped
** like a replaced worker: SIGTERM, and SIGKILL after the grace period. */
#define STRAYS 16
struct stray {
  pid_t pid;
  double deadline;              /* SIGKILL then */
};
static struct stray strays[STRAYS];

static int known(pid_t pid) {
  for (unsigned i = 0; i < AME_SUP_PROCS; i++)
    if (S.p[i].state != P_FREE && S.p[i].pid == pid) return 1;
  return 0;
}

static void stray(pid_t pid, double now) {
  unsigned free_at = STRAYS;
  for (unsigned k = 0; k < STRAYS; k++) {
    if (strays[k].pid == pid) {
      if (now >= strays[k].deadline) {
        kill(pid, SIGKILL);
        strays[k].deadline = now + 3600;
      }
      return;
    }
    if (strays[k].pid == 0 && free_at == STRAYS) free_at = k;
  }
  ame_sup_say("a worker process no record here holds (pid %d: its start "
              "was given up on); stopping it", (int)pid);
  kill(pid, SIGTERM);
  if (free_at < STRAYS)
    strays[free_at] = (struct stray){
        pid, now + S.cfg->grace_s + AME_SUP_KILL_SLACK_S};
}

static void sweep_strays(double now) {
  for (unsigned k = 0; k < STRAYS; k++) /* forget the ones gone */
    if (strays[k].pid && kill(strays[k].pid, 0) < 0 && errno == ESRCH)
      strays[k].pid = 0;
  /* Each thread's children (an orphan is given to one of them). */
  DIR *tasks = opendir("/proc/self/task");
  if (tasks == NULL) return;
  struct dirent *t;
  while ((t = readdir(tasks)) != NULL) {
    if (t->d_name[0] == '.') continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", t->d_name);
    FILE *f = fopen(path, "re");
    if (f == NULL) continue; /* no CONFIG_PROC_CHILDREN: nothing to do */
    long pid;
    while (fscanf(f, "%ld", &pid) == 1)
      if (!known((pid_t)pid) && !ame_reload_is_zygote((pid_t)pid) &&
          ame_proc_live_worker((pid_t)pid))
        stray((pid_t)pid, now);
    fclose(f);
  }
  closedir(tasks);
}

/* ---- stopping, signals ----------------------------------------------- */

static void kill_all(int signo) {
  for (unsigned i = 0; i < AME_SUP_PROCS; i++)
    if (S.p[i].state != P_FREE) kill(S.p[i].pid, signo);
}

static void force(const char *why) {
  L.state = FORCED;
  L.failed = 1;
  ame_sup_say("%s: killing %u worker(s)", why, ame_sup_live());
  kill_all(SIGKILL);
}

/* Stop every worker with signo (why: logged, NULL: already said). */
static void global_stop(int signo, double now, const char *why) {
  L.state = STOPPING;
  L.stop_signo = signo;
  ame_reload_cancel();
  for (unsigned s = 1; s <= AME_SUP_MAX_WORKERS; s++)
    S.s[s].restart_at = S.s[s].retry_at = 0;
  if (why)
    ame_sup_say("%s: stopping %u worker(s) gracefully (a second signal "
                "kills them)", why, ame_sup_live());
  for (unsigned i = 0; i < AME_SUP_PROCS; i++) {
    struct sup_proc *p = &S.p[i];
    if (p->state == P_FREE) continue;
    if (p->state != P_HUNG) {
      p->state = P_STOPPING;
      p->deadline = now + S.cfg->grace_s + AME_SUP_KILL_SLACK_S;
    }
    kill(p->pid, signo);
  }
}

static void on_stop_signal(int signo, double now) {
  if (L.state == RUNNING)
    global_stop(signo, now, signame(signo));
  else if (L.state == STOPPING)
    force("second signal");
}

/* A signal the program handles: pass it on to every live worker. */
static void forward(int signo) {
  unsigned n = 0;
  for (unsigned i = 0; i < AME_SUP_PROCS; i++)
    if (S.p[i].state != P_FREE && kill(S.p[i].pid, signo) == 0) n++;
  ame_sup_say("%s: passed on to %u worker(s)", signame(signo), n);
}

/* SIGTTIN (+1) or SIGTTOU (-1).  Return as ame_sup_fork (or 0). */
static int resize(int by, double now) {
  if (ame_reload_busy()) {
    L.resize += by;
    ame_sup_say("%s: after the reload under way", by > 0 ? "SIGTTIN"
                                                           : "SIGTTOU");
    return 0;
  }
  if (by > 0) {
    if (S.nslots >= AME_SUP_MAX_WORKERS) {
      ame_sup_say("SIGTTIN: already %u workers (the most)", S.nslots);
      return 0;
    }
    unsigned slot = ++S.nslots;
    struct sup_slot *sl = &S.s[slot];
    sl->active = 1;
    sl->backoff = 0;
    ame_sup_say("SIGTTIN: %u workers", S.nslots);
    return ame_sup_start_slot(slot, now);
  }
  if (S.nslots <= 1) {
    ame_sup_say("SIGTTOU: 1 worker left; not removing it");
    return 0;
  }
  unsigned slot = S.nslots--;
  struct sup_slot *sl = &S.s[slot];
  sl->active = 0;
  sl->restart_at = sl->retry_at = 0;
  ame_sup_say("SIGTTOU: %u workers (stopping worker %u)", S.nslots, slot);
  int none = 1;
  if (sl->next >= 0) ame_sup_stop_proc(sl->next, now), none = 0;
  if (sl->cur >= 0) ame_sup_stop_proc(sl->cur, now), none = 0;
  if (none) ame_lst_drop_slot(slot);
  return 0;
}

/* ---- checks ---------------------------------------------------------- */

/* Heartbeats, limits, replacements that became ready, kill deadlines.
** Return as ame_sup_fork (or 0). */
static int check(double now) {
  double timeout = S.cfg->timeout_s;
  int all_ready = 1;
  for (unsigned i = 0; i < AME_SUP_PROCS; i++) {
    struct sup_proc *p = &S.p[i];
    if (p->state == P_FREE) continue;
    if ((p->state == P_STOPPING || p->state == P_HUNG) &&
        now >= p->deadline) {
      /* A hung worker past its deadline gets SIGKILL alone, stopping or
      ** not; the others are forced only past the grace period. */
      if (L.state == STOPPING && p->state == P_STOPPING) {
        force("workers still running after the grace period");
        return 0;
      }
      if (L.state == RUNNING && p->state == P_STOPPING)
        ame_sup_say("worker %u (pid %d) did not stop within the grace "
                    "period; killing it", p->slot, (int)p->pid);
      kill(p->pid, SIGKILL);
      p->deadline = now + 3600;
      continue;
    }
    ame_page_entry_t *e = ame_page_entry(i);
    uint64_t beat = atomic_load_explicit(&e->beat_ns, memory_order_acquire);
    if (p->state == P_STARTING && beat) p->state = P_READY;
    if (p->state == P_STARTING) all_ready = 0;
    if (L.state != RUNNING || p->state == P_STOPPING || p->state == P_HUNG)
      continue;
    double last = beat ? (double)beat / 1e9 : p->started;
    if (timeout > 0 && now - last > timeout) {
      char text[160];
      ame_page_text(i, text, sizeof text);
      uint64_t req = atomic_load_explicit(&e->c[AME_PAGE_requests],
                                          memory_order_relaxed);
      ame_sup_say("worker %u (pid %d) is hung: no heartbeat for %.1f s "
                  "(%s; %llu requests served, %llu connections open); "
                  "killing it (SIGABRT for its traceback, then SIGKILL)",
                  p->slot, (int)p->pid, now - last,
                  beat ? "its reactor ran before" : "its reactor never ran",
                  (unsigned long long)req,
                  (unsigned long long)atomic_load_explicit(
                      &e->c[AME_PAGE_open], memory_order_relaxed));
      S.s[p->slot].hung++;
      p->state = P_HUNG;
      p->deadline = now + AME_SUP_HUNG_KILL_S;
      kill(p->pid, SIGABRT);
      continue;
    }
  }
  if (L.starting && all_ready) {
    L.starting = 0;
    ame_sup_say("%u worker(s) serving", S.nslots);
  }
  if (L.state != RUNNING) return 0;
  ame_reload_check(now);
  for (unsigned s = 1; s <= S.nslots; s++) {
    struct sup_slot *sl = &S.s[s];
    if (sl->next >= 0 && !ame_reload_busy() && ame_sup_ready(sl->next)) {
      ame_sup_take_over(s, now);
      continue;
    }
    if (sl->cur < 0 || sl->next >= 0 || ame_reload_busy() ||
        S.p[sl->cur].state != P_READY || now < sl->retry_at)
      continue;
    ame_page_entry_t *e = ame_page_entry((unsigned)sl->cur);
    const char *why = NULL;
    char buf[96];
    if (atomic_load_explicit(&e->recycle, memory_order_relaxed)) {
      snprintf(buf, sizeof buf, "served %llu requests (--max-requests)",
               (unsigned long long)e->max_requests);
      why = buf;
    } else if (S.cfg->max_rss && S.p[sl->cur].rss > S.cfg->max_rss) {
      snprintf(buf, sizeof buf, "RSS %.1f MiB (--max-rss %.0f)",
               (double)S.p[sl->cur].rss / 1048576.0,
               (double)S.cfg->max_rss / 1048576.0);
      why = buf;
    }
    if (why) {
      ame_sup_say("worker %u (pid %d) %s: replacing it", s,
                  (int)S.p[sl->cur].pid, why);
      sl->recycled++;
      snprintf(sl->why, sizeof sl->why, "recycled: %s", why);
      int r = ame_sup_replace(s, S.gen, now);
      if (r == -2) return r;
    }
  }
  return 0;
}

/* ---- the loop -------------------------------------------------------- */

static int setup(const ame_sup_config_t *cfg) {
  memset(&S, 0, sizeof S);
  memset(&L, 0, sizeof L);
  S.cfg = cfg;
  S.self = getpid();
  S.nslots = cfg->workers;
  S.start_time = ame_sup_now();
  L.sigpipe[0] = L.sigpipe[1] = -1;
  L.starting = 1;
  /* fds 0-2 must be open, so that no pipe lands on them. */
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
      return -EBADF;
  if (ame_page_entry(0) == NULL && ame_page_create() < 0) return -ENOMEM;
  S.s = calloc(AME_SUP_MAX_WORKERS + 1, sizeof *S.s);
  if (S.s == NULL) return -ENOMEM;
  for (unsigned s = 0; s <= AME_SUP_MAX_WORKERS; s++) {
    S.s[s].cur = S.s[s].next = -1;
    S.s[s].active = s >= 1 && s <= cfg->workers;
  }
  if (pipe2(L.sigpipe, O_CLOEXEC | O_NONBLOCK) < 0) {
    int e = errno;
    free(S.s);
    return -e;
  }
  if (cfg->reload_fd >= 0) prctl(PR_SET_CHILD_SUBREAPER, 1);
  srandom((unsigned)S.self ^ (unsigned)time(NULL));
  sigprocmask(SIG_SETMASK, NULL, &S.old_mask);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  for (unsigned k = 0; k < NHANDLED; k++) {
    struct sigaction cur;
    if (sigaction(HANDLED[k], NULL, &cur) != 0) continue;
    if (k >= FWD_FIRST) {
      int handled = (cur.sa_flags & SA_SIGINFO)
                        ? cur.sa_sigaction != NULL
                        : cur.sa_handler != SIG_DFL &&
                              cur.sa_handler != SIG_IGN;
      if (!handled) continue;
    }
    sa.sa_handler = HANDLED[k] == SIGPIPE ? SIG_IGN : on_signal;
    if (sigaction(HANDLED[k], &sa, &L.old[k]) == 0) L.saved[k] = 1;
  }
  return 0;
}

static void teardown(void) {
  ame_out_drain(DRAIN_S);
  ame_sup_release();
  ame_sup_child_signals(); /* the caller's handlers back, as in a worker */
}

/* Handle the signals the self-pipe holds.  Return as ame_sup_fork (or 0). */
static int signals(double now) {
  unsigned char sig[64];
  ssize_t n;
  while ((n = read(L.sigpipe[0], sig, sizeof sig)) > 0)
    for (ssize_t k = 0; k < n; k++) {
      int r = 0;
      switch (sig[k]) {
      case SIGINT:
      case SIGTERM: on_stop_signal(sig[k], now); break;
      case SIGCHLD: break;
      case SIGHUP:
        if (L.state == RUNNING) ame_reload_request(now);
        break;
      case SIGTTIN:
      case SIGTTOU:
        if (L.state == RUNNING) r = resize(sig[k] == SIGTTIN ? 1 : -1, now);
        break;
      default: forward(sig[k]);
      }
      if (r == -2) return r;
    }
  return 0;
}

unsigned ame_sup_workers(void) { return S.nslots; }

int ame_supervise(const ame_sup_config_t *cfg, int *status) {
  int rc = setup(cfg);
  if (rc < 0) return rc;
  double now = ame_sup_now();
  for (unsigned s = 1; s <= cfg->workers; s++)
    if (ame_sup_start_slot(s, now) == -2) return S.child_slot;

  struct pollfd *pfds = NULL;
  size_t npcap = 0;
  double next_check = 0;
  for (;;) {
    now = ame_sup_now();
    reap(now);
    if (L.state == RUNNING && !ame_reload_busy() && L.resize) {
      int by = L.resize > 0 ? 1 : -1;
      L.resize -= by;
      if (resize(by, now) == -2) goto child;
    }
    if (L.state == RUNNING)
      for (unsigned s = 1; s <= S.nslots; s++)
        if (S.s[s].cur < 0 && S.s[s].restart_at > 0 &&
            S.s[s].restart_at <= now && ame_sup_start_slot(s, now) == -2)
          goto child;
    if (now >= next_check) {
      if (check(now) == -2) goto child;
      next_check = now + AME_SUP_CHECK_S;
    }
    if (now - S.last_sample >= 1.0) {
      ame_metrics_sample(now);
      if (S.cfg->reload_fd >= 0) sweep_strays(now);
      S.last_sample = now;
    }
    /* Done when no worker runs and none is due to restart. */
    int busy = ame_sup_live() > 0;
    if (L.state == RUNNING)
      for (unsigned s = 1; s <= S.nslots; s++)
        busy |= S.s[s].restart_at > 0;
    if (!busy) break;
    double next = next_check;
    if (L.state == RUNNING)
      for (unsigned s = 1; s <= S.nslots; s++)
        if (S.s[s].restart_at > 0 && S.s[s].restart_at < next)
          next = S.s[s].restart_at;
    int timeout = next <= now ? 0 : (int)((next - now) * 1e3) + 1;

    size_t nout = ame_out_count(), nm = ame_metrics_count();
    size_t want = 3 + nout + nm;
    if (npcap < want) {
      npcap = want + 2 * S.nslots + 8;
      struct pollfd *p = realloc(pfds, npcap * sizeof *p);
      if (p == NULL) { /* try again shortly */
        npcap = 0;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
        continue;
      }
      pfds = p;
    }
    pfds[0] = (struct pollfd){.fd = L.sigpipe[0], .events = POLLIN};
    pfds[1] = (struct pollfd){.fd = ame_reload_pollfd(), .events = POLLIN};
    /* The zygote's socket: only its hang-up (the zygote died) matters. */
    pfds[2] = (struct pollfd){.fd = ame_reload_zygote_fd(), .events = 0};
    ame_out_pollfds(pfds + 3);
    ame_metrics_pollfds(pfds + 3 + nout);
    if (poll(pfds, want, timeout) < 0) continue; /* EINTR */
    now = ame_sup_now();
    if (pfds[0].revents && signals(now) == -2) goto child;
    if (pfds[1].fd >= 0 && pfds[1].revents) ame_reload_readable(now);
    if (pfds[2].fd >= 0 && pfds[2].fd == ame_reload_zygote_fd() &&
        (pfds[2].revents & (POLLHUP | POLLERR)))
      ame_reload_zygote_gone(now);
    ame_out_pump(pfds + 3, nout);
    ame_metrics_handle(pfds + 3 + nout, nm, now);
  }
  free(pfds);
  teardown();
  *status = L.failed ? 1 : 0;
  return 0;
child:
  free(pfds);
  return S.child_slot;
}
