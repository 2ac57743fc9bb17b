/*
** cmd/run/reload.c — SIGHUP: a new generation of workers from a fresh run
** of the program (reload.h).
**
** Three processes talk over SOCK_SEQPACKET socket pairs, one message per
** request, descriptors passed with SCM_RIGHTS:
**   supervisor -> template   SPAWN: the primaries (with their listener
**                            indexes) and the candidate's control socket
**   template -> supervisor   SPAWNED (on the candidate's socket): its pid
**   candidate -> supervisor  READY: which primaries its program adopted
**   supervisor -> zygote     FORK: slot, page entry, the worker's stdout
**                            and stderr pipes, the slot's sockets
**   zygote -> supervisor     FORKED: the new worker's pid, or -errno
** The supervisor waits for FORKED (it is quick: two forks), matching it to
** its FORK by a sequence number, and polls the control socket otherwise;
** end of file there means the candidate (or the zygote) is gone.  Closing
** it tells a zygote to exit.
**
** The serving generation's zygote may die (killed, out of memory): its
** control socket hangs up, and the supervisor runs the program again (a
** reload) so that its workers can be restarted; until one succeeds, or
** if none can run (the template is gone too) or it fails, workers are
** forked from the supervisor itself again (generation 0: the program as
** first started).
**
** A candidate whose setup has not reached reactor.run() (READY) within
** --timeout (SPAWN_DEFAULT_S when that is 0) is killed, and the reload
** fails.
**
** A reload runs one at a time: a SIGHUP during one is remembered and
** starts the next once this one has switched over (or failed), so a storm
** of them ends with one generation of exactly the configured workers.
*/
#include "reload.h"
#include "reload_msg.h"

#include "listeners.h"
#include "page.h"
#include "sup_internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define S ame_sup
/* ---- messages with descriptors --------------------------------------- */

int ame_reload__send(int sock, const struct msg *m, const int *fds,
                    unsigned nfds) {
  char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
  struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof *m};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds) {
    memset(cbuf, 0, sizeof cbuf);
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  ssize_t r;
  do r = sendmsg(sock, &mh, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  return r == (ssize_t)sizeof *m ? 0 : r < 0 ? -errno : -EPROTO;
}

/* Receive one message and up to MAX_FDS descriptors (close-on-exec).
** Return the number of fds, 0 at end of file (*m untouched... m->magic
** 0), or a negative errno value. */
int ame_reload__recv(int sock, struct msg *m, int *fds) {
  char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
  struct iovec iov = {.iov_base = m, .iov_len = sizeof *m};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
                      .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  memset(m, 0, sizeof *m);
  ssize_t r;
  do r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  int n = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      memcpy(fds + n, CMSG_DATA(c), (size_t)k * sizeof(int));
      n += k;
    }
  if (r == 0) return 0;
  if (r != (ssize_t)sizeof *m) {
    while (n > 0) close(fds[--n]);
    return -EPROTO;
  }
  return n;
}

/* ---- the template ---------------------------------------------------- */

int ame_reload_template(void (*candidate)(void *data),
                        void (*exited)(void *data, int pid), void *data) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    return -e;
  }
  if (pid > 0) {
    close(sv[1]);
    return sv[0];
  }
  /* The template: it ends with the process that made it. */
  close(sv[0]);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(0);
  prctl(PR_SET_NAME, "ame-template");
  for (;;) {
    /* Reap the candidates (zygotes) that ended, and let the caller give
    ** back what they held (their slots in the shared heap). */
    pid_t c;
    while ((c = waitpid(-1, NULL, WNOHANG)) > 0)
      if (exited) exited(data, (int)c);
    struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
    if (poll(&pfd, 1, 1000) <= 0) continue;
    struct msg m;
    int fds[MAX_FDS];
    int n = ame_reload__recv(sv[1], &m, fds);
    if (n == 0 && m.magic == 0) _exit(0); /* the supervisor is gone */
    if (n < 0) {
      if (n == -EPROTO) continue;
      _exit(0);
    }
    if (m.magic != MAGIC_SPAWN || (unsigned)n != m.n + 1) {
      while (n > 0) close(fds[--n]);
      continue;
    }
    c = fork();
    if (c == 0) {
      close(sv[1]);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      prctl(PR_SET_NAME, "ame-reload");
      ame_reload_set_candidate(fds[m.n], m.root, fds, m.idx, m.n);
      candidate(data);
      _exit(1);
    }
    if (c > 0) { /* the supervisor kills a candidate that takes too long */
      struct msg sp = {.magic = MAGIC_SPAWNED, .pid = (int32_t)c};
      ame_reload__send(fds[m.n], &sp, NULL, 0);
    }
    for (int k = 0; k < n; k++) close(fds[k]);
  }
}

/* ---- in the supervisor ----------------------------------------------- */

enum { IDLE, SPAWNING, STARTING };

static struct {
  int phase;
  int pending;       /* a SIGHUP came during this reload */
  int ctl;           /* the candidate's control socket (SPAWNING, STARTING) */
  unsigned gen;      /* the generation it will be */
  unsigned last;     /* the last generation number given to an attempt */
  uint32_t seq;      /* the last FORK request's number */
  uint64_t adopted;
  pid_t cpid;        /* the candidate's pid (SPAWNED, READY), 0: unknown */
  double deadline;   /* SPAWNING: the candidate is killed then */
  int zygote[2];     /* control sockets of the current and the previous
                        generations' zygotes (-1: none; generation 0 is
                        the supervisor itself) */
  unsigned zgen[2];
  pid_t zpid[2];
  int template_fd;
  int inited;
} R;

static void init(void) {
  if (R.inited) return;
  R.inited = 1;
  R.ctl = R.zygote[0] = R.zygote[1] = -1;
  R.template_fd = S.cfg->reload_fd;
}

int ame_reload_busy(void) { return R.inited && R.phase != IDLE; }

int ame_reload_owns(unsigned gen) {
  return R.inited && R.phase != IDLE && gen == R.gen;
}

int ame_reload_pollfd(void) {
  init();
  return R.phase != IDLE ? R.ctl : -1;
}

int ame_reload_zygote_fd(void) {
  init();
  return R.zygote[0];
}

int ame_reload_is_zygote(pid_t pid) {
  if (!R.inited || pid <= 0) return 0;
  return (R.zygote[0] >= 0 && pid == R.zpid[0]) ||
         (R.zygote[1] >= 0 && pid == R.zpid[1]) ||
         (R.phase == STARTING && pid == R.cpid);
}

/* No reload under way, and no zygote for the serving generation: fork
** workers from the supervisor again. */
static void orphaned_gen(void) {
  if (S.gen == 0 || R.phase != IDLE) return;
  for (int k = 0; k < 2; k++)
    if (R.zygote[k] >= 0 && R.zgen[k] == S.gen) return;
  ame_sup_say("generation %u has no zygote: workers are forked from the "
              "supervisor again (generation 0, the program as first "
              "started) until a reload succeeds", S.gen);
  S.gen = 0;
}

static void fail(const char *why, double now) {
  ame_sup_say("reload failed: %s; the old workers go on", why);
  S.reload_failures++;
  for (unsigned s = 1; s <= S.nslots; s++) {
    struct sup_slot *sl = &S.s[s];
    if (sl->next >= 0 && S.p[sl->next].gen == R.gen) {
      ame_sup_stop_proc(sl->next, now);
      sl->next = -1;
    }
  }
  if (R.ctl >= 0) close(R.ctl);
  R.ctl = -1;
  R.phase = IDLE;
  /* A SIGHUP during the attempt asked for the program as it is now: run
  ** it (it may have been fixed meanwhile). */
  if (R.pending) {
    R.pending = 0;
    ame_reload_request(now);
  }
  orphaned_gen();
}

/* How long a candidate's setup may take, in seconds. */
static double spawn_limit(void) {
  return S.cfg->timeout_s > 0 ? S.cfg->timeout_s : SPAWN_DEFAULT_S;
}

void ame_reload_request(double now) {
  init();
  if (R.template_fd < 0) {
    ame_sup_say("SIGHUP: cannot reload (%s)",
                S.cfg->reload_fd == -2
                    ? "the template process is gone (daemonized twistd?)"
                    : "no template process");
    return;
  }
  if (R.phase != IDLE) {
    if (!R.pending)
      ame_sup_say("SIGHUP: a reload is under way; another one follows it");
    R.pending = 1;
    return;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    ame_sup_say("SIGHUP: cannot reload: %s", strerror(errno));
    return;
  }
  struct msg m = {.magic = MAGIC_SPAWN, .root = (int32_t)S.self};
  int fds[MAX_FDS];
  for (unsigned p = 0; p < ame_lst_count(); p++)
    if (ame_lst_primary(p) >= 0) {
      m.idx[m.n] = p;
      fds[m.n++] = ame_lst_primary(p);
    }
  fds[m.n] = sv[1];
  int rc = ame_reload__send(R.template_fd, &m, fds, m.n + 1);
  close(sv[1]);
  if (rc < 0) {
    close(sv[0]);
    ame_sup_say("SIGHUP: cannot reload: the template process is gone (%s)",
                strerror(-rc));
    close(R.template_fd);
    R.template_fd = -1;
    return;
  }
  R.ctl = sv[0];
  R.phase = SPAWNING;
  R.pending = 0;
  R.gen = ++R.last;
  R.cpid = 0;
  R.deadline = now + spawn_limit();
  ame_sup_say("SIGHUP: reloading: running the program again "
              "(generation %u)", R.gen);
}

void ame_reload_readable(double now) {
  if (R.phase == IDLE) return;
  struct msg m;
  int fds[MAX_FDS];
  int n = ame_reload__recv(R.ctl, &m, fds);
  while (n > 0) close(fds[--n]);
  if (n < 0 && n != -EPROTO) n = 0;
  if (m.magic == MAGIC_SPAWNED) {
    R.cpid = m.pid;
    return;
  }
  if (R.phase == STARTING) {
    /* End of file; anything else is a late answer to a fork request
    ** given up on (its worker is a stray: sweep_strays). */
    if (n == 0 && m.magic == 0) fail("the new program's process ended", now);
    return;
  }
  if (m.magic != MAGIC_READY) {
    fail("the new program did not start (its error is above)", now);
    return;
  }
  R.adopted = m.adopted;
  R.cpid = m.pid;
  R.phase = STARTING;
  for (unsigned s = 1; s <= S.nslots; s++)
    if (ame_sup_replace(s, R.gen, now) < 0) {
      fail("cannot start the new workers", now);
      return;
    }
}

void ame_reload_check(double now) {
  if (!R.inited) return;
  if (R.phase == SPAWNING && now >= R.deadline) {
    if (R.cpid > 0) kill(R.cpid, SIGKILL); /* the template reaps it */
    char why[96];
    snprintf(why, sizeof why, "the new program did not start within %g s "
             "(killed)", spawn_limit());
    fail(why, now);
    return;
  }
  if (R.phase != STARTING) return;
  for (unsigned s = 1; s <= S.nslots; s++) {
    int i = S.s[s].next;
    if (i < 0 || S.p[i].gen != R.gen || !ame_sup_ready(i)) return;
  }
  /* Every new worker serves: switch over. */
  for (unsigned s = 1; s <= S.nslots; s++) ame_sup_take_over(s, now);
  S.gen = R.gen;
  if (R.zygote[1] >= 0) close(R.zygote[1]);
  R.zygote[1] = R.zygote[0];
  R.zgen[1] = R.zgen[0];
  R.zpid[1] = R.zpid[0];
  R.zygote[0] = R.ctl;
  R.zgen[0] = R.gen;
  R.zpid[0] = R.cpid;
  R.ctl = -1;
  R.phase = IDLE;
  S.reloads++;
  /* The previous generation forks no more workers; its zygote exits. */
  if (R.zygote[1] >= 0) {
    close(R.zygote[1]);
    R.zygote[1] = -1;
  }
  unsigned dropped = 0;
  for (unsigned p = 0; p < ame_lst_count(); p++)
    if (ame_lst_primary(p) >= 0 && !(R.adopted & ((uint64_t)1 << p))) {
      ame_lst_drop(p);
      dropped++;
    }
  ame_sup_say("reload: generation %u serves (%u worker(s)); the old ones "
              "stop gracefully%s", S.gen, S.nslots,
              dropped ? "; listeners the new program left are closed" : "");
  if (R.pending) {
    R.pending = 0;
    ame_reload_request(now);
  }
}

void ame_reload_zygote_gone(double now) {
  if (R.zygote[0] < 0) return;
  unsigned gen = R.zgen[0];
  close(R.zygote[0]);
  R.zygote[0] = -1;
  if (gen != S.gen) return;
  if (R.phase != IDLE) {
    ame_sup_say("the zygote of generation %u is gone; the reload under way "
                "replaces its workers", gen);
    return;
  }
  ame_sup_say("the zygote of generation %u is gone (its workers cannot be "
              "restarted): running the program again", gen);
  ame_reload_request(now);
  orphaned_gen();
}

void ame_reload_worker_failed(int i, const char *how, double now) {
  char why[160];
  snprintf(why, sizeof why, "worker %u (pid %d) of generation %u died "
           "before serving (%s)", S.p[i].slot, (int)S.p[i].pid, R.gen, how);
  fail(why, now);
}

pid_t ame_reload_fork(unsigned gen, unsigned slot, unsigned entry, int out,
                      int err, const int *fds, unsigned n) {
  init();
  int ctl = -1;
  if (R.phase != IDLE && gen == R.gen) ctl = R.ctl;
  for (int k = 0; k < 2 && ctl < 0; k++)
    if (R.zygote[k] >= 0 && R.zgen[k] == gen) ctl = R.zygote[k];
  if (ctl < 0) return -ESRCH;
  struct msg m = {.magic = MAGIC_FORK, .slot = slot, .entry = entry,
                  .workers = S.nslots, .root = (int32_t)S.self};
  int all[MAX_FDS];
  all[0] = out;
  all[1] = err;
  for (unsigned p = 0; p < n && p < AME_LST_MAX; p++)
    if (fds[p] >= 0) {
      m.idx[m.n] = p;
      all[2 + m.n++] = fds[p];
    }
  m.seq = ++R.seq;
  int rc = ame_reload__send(ctl, &m, all, 2 + m.n);
  if (rc < 0) return rc;
  /* A signal (a SIGHUP storm, a worker's SIGCHLD) interrupts poll: its
  ** flag waits for the supervisor loop, and the wait goes on. */
  double until = ame_sup_now() + FORK_REPLY_MS / 1e3;
  for (;;) {
    int left = (int)((until - ame_sup_now()) * 1e3);
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd pfd = {.fd = ctl, .events = POLLIN};
    int r = poll(&pfd, 1, left);
    if (r < 0 && errno != EINTR) return -errno;
    if (r <= 0) continue;
    struct msg a;
    int got[MAX_FDS];
    int k = ame_reload__recv(ctl, &a, got);
    while (k > 0) close(got[--k]);
    if (k < 0 && k != -EPROTO) return k;
    if (k == 0 && a.magic == 0) return -EPIPE; /* the zygote is gone */
    if (a.magic == MAGIC_FORK && a.seq == m.seq) return a.pid;
    /* The late answer to a request given up on: the worker it names is
    ** no one's (sweep_strays stops it). */
  }
}

void ame_reload_cancel(void) {
  if (!R.inited || R.phase == IDLE) return;
  if (R.ctl >= 0) close(R.ctl);
  R.ctl = -1;
  R.phase = IDLE;
  R.pending = 0;
}

void ame_reload_forget(void) {
  init();
  if (R.ctl >= 0) close(R.ctl);
  for (int k = 0; k < 2; k++)
    if (R.zygote[k] >= 0) close(R.zygote[k]);
  if (R.template_fd >= 0) close(R.template_fd);
  R.ctl = R.zygote[0] = R.zygote[1] = R.template_fd = -1;
}
