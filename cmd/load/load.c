/*
** cmd/load/load.c — `ame load URL`: an HTTP/1.1 load generator on the
** ame reactor (docs/load.md).  This file is the run from start to end;
** internal.h says how the files share the work and the state.
**
** How a run goes.  ame_load_main() has options.c turn the command line
** into ld_run's settings and the request, finds the server (the first
** address of the URL's host that accepts a test connection, within
** PROBE_MS), raises the descriptor limit for -c connections and -t
** workers, sets up TLS for https://, and runs the reactor: one
** housekeeping timer (hk_cb, every HK_MS), SIGINT and SIGTERM handlers,
** and a connect for every slot (conn.c does the rest).  The
** housekeeper, whose callbacks run one at a time, owns ld_run.hk: it
** aborts requests older than --timeout and prints the progress line (at
** commit: an attempt that aborts prints nothing); at the deadline (or
** the first signal) it sets ld_run.draining, and once nothing is in
** flight, or --timeout after the deadline, it stops the reactor (what is
** still in flight then is abandoned; while draining nothing times out).
** A second signal stops it at once.  When ame_reactor_run() returns no
** callback runs any more, and report.c prints the results.
*/
#include "load.h"

#include "internal.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HK_MS 10        /* housekeeping period */
#define PROBE_MS 2000   /* the start's test connection */
#define FDS_PER_WORKER 8 /* a reactor worker holds 4 (measured: an epoll
                            fd, an eventfd, a pipe): twice that */

ld_run_t ld_run;

/* ------------------------------------------------------------------------
** Housekeeping: deadline, drain, timeouts, progress.
*/

void ld_stop_commit(void *arg) {
  (void)arg;
  if (__atomic_exchange_n(&ld_run.stopped, 1, __ATOMIC_SEQ_CST) == 0)
    LD_STORE(&ld_run.end_ns, ld_now_ns());
}

void ld_begin_stop(ame_tx_t *tx) {
  if (LD_LOAD_SC(&ld_run.stopped)) return;
  if (ame_tx_on_commit(tx, ld_stop_commit, NULL) != 0) return;
  ame_reactor_stop(ld_run.r);
}

static void timeout_commit(void *arg) {
  ld_conn_t *c = arg;
  LD_STORE(&c->timed_out, c->timeout_epoch + 1);
}

/* Sum the progress counters of every worker. */
static void progress_totals(uint64_t *requests, uint64_t *errors) {
  *requests = *errors = 0;
  for (unsigned w = 0; w < ld_run.nworkers; w++) {
    *requests += LD_LOAD(&ld_run.ws[w].requests);
    for (int k = 0; k < LD_ERR__COUNT; k++)
      *errors += LD_LOAD(&ld_run.ws[w].errors[k]);
  }
}

static void print_commit(void *arg) {
  fputs(arg, stderr);
  fflush(stderr);
  free(arg);
}

static void progress_line(ame_tx_t *tx, uint64_t now) {
  uint64_t req, err;
  progress_totals(&req, &err);
  double dt = (double)(now - ld_run.hk.last_ns) / 1e9;
  double rps = dt > 0 ? (double)(req - ld_run.hk.last_requests) / dt : 0;
  ld_run.hk.last_requests = req;
  ld_run.hk.last_ns = now;
  char *line = malloc(160);
  if (line == NULL) return;
  snprintf(line, 160, "%s[%5.1fs] %llu requests, %.0f req/s, %llu errors%s",
           ld_run.tty ? "\r\033[K" : "",
           (double)(now - ld_run.start_ns) / 1e9,
           (unsigned long long)req, rps, (unsigned long long)err,
           ld_run.tty ? "" : "\n");
  if (ame_tx_on_commit(tx, print_commit, line) != 0) {
    free(line);
    return;
  }
  /* An abort drops the commit handler: free the line then. */
  if (ame_tx_on_abort(tx, free, line) != 0) return;
  LD_STORE(&ld_run.progress_shown, 1);
}

static int hk_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  int rc = ame_tx_save(tx, &ld_run.hk, sizeof ld_run.hk);
  if (rc) return rc;
  uint64_t now = ld_now_ns();
  if (LD_LOAD_SC(&ld_run.stopped)) return 0;
  if (now - ld_run.start_ns >= ld_run.duration_ns ||
      LD_LOAD(&ld_run.interrupted))
    LD_STORE_SC(&ld_run.draining, 1);
  int draining = LD_LOAD_SC(&ld_run.draining);
  if (draining && ld_run.hk.drain_ns == 0) ld_run.hk.drain_ns = now;
  unsigned busy = 0;
  for (unsigned i = 0; i < ld_run.nconns; i++) {
    ld_conn_t *c = &ld_run.conns[i];
    uint64_t since = LD_LOAD_SC(&c->inflight_since);
    if (since == 0) continue;
    busy++;
    /* While draining, nothing new is sent: what is in flight was in
    ** flight at the deadline, and what the final wait leaves unanswered
    ** is abandoned (on_close at the stop), not a timeout. */
    if (draining) continue;
    if (now <= since || now - since <= ld_run.timeout_ns) continue;
    ame_stream_t *s = ame_load_ptr_tx(tx, (void *const *)&c->stream_w);
    uint64_t epoch = ame_load_word_tx(tx, &c->epoch_w);
    if (s == NULL || LD_LOAD(&c->timed_out) == (epoch & 0xffffffffu) + 1)
      continue;
    /* Mark the stream, then abort it (commit handlers run in order). */
    c->timeout_epoch = epoch & 0xffffffffu;
    if ((rc = ame_tx_on_commit(tx, timeout_commit, c)) != 0) return rc;
    ame_stream_abort(s);
  }
  if (draining &&
      (busy == 0 || now - ld_run.hk.drain_ns > ld_run.timeout_ns)) {
    ld_begin_stop(tx);
    return 0;
  }
  if (ld_run.progress && now >= ld_run.hk.next_progress_ns) {
    progress_line(tx, now);
    ld_run.hk.next_progress_ns += 1000000000ull;
  }
  return 0;
}

static int signal_cb(ame_tx_t *tx, ame_signal_t *sig, int signum) {
  (void)sig;
  (void)signum;
  /* First signal: end the run as at the deadline; second: stop now. */
  if (LD_LOAD_SC(&ld_run.interrupted)) {
    ld_begin_stop(tx);
    return 0;
  }
  LD_STORE_SC(&ld_run.interrupted, 1);
  return 0;
}

/* ------------------------------------------------------------------------
** Finding the server.
*/

/* Try a TCP connection to sa within ms milliseconds.  Return 0 or -errno. */
static int probe(const struct sockaddr *sa, socklen_t salen, int ms) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0) return -errno;
  int rc = 0;
  if (connect(fd, sa, salen) != 0) {
    if (errno != EINPROGRESS) {
      rc = -errno;
    } else {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      int n = poll(&pfd, 1, ms);
      if (n == 0) {
        rc = -ETIMEDOUT;
      } else if (n < 0) {
        rc = -errno;
      } else {
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
          err = errno;
        rc = -err;
      }
    }
  }
  close(fd);
  return rc;
}

/* Resolve ld->host and keep the first address that accepts a connection
** on ld->port in ld->addr.  Return 0, or print a one-line error and
** return 1. */
static int find_server(ld_run_t *ld) {
  /* (No AI_ADDRCONFIG: it drops ::1 for "localhost" on a host whose only
  ** IPv6 address is the loopback; each address is tried anyway.) */
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  char port[8];
  snprintf(port, sizeof port, "%d", ld->port);
  int rc = getaddrinfo(ld->host, port, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot resolve %s: %s\n", ld->host,
            gai_strerror(rc));
    return 1;
  }
  int first_err = 0;
  char first_addr[INET6_ADDRSTRLEN] = "";
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    char host[NI_MAXHOST];
    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof host, NULL, 0,
                    NI_NUMERICHOST) != 0 ||
        strlen(host) >= sizeof ld->addr)
      continue;
    int err = probe(ai->ai_addr, ai->ai_addrlen, PROBE_MS);
    if (err == 0) {
      strcpy(ld->addr, host);
      freeaddrinfo(res);
      return 0;
    }
    if (first_err == 0) {
      first_err = err;
      strcpy(first_addr, host);
    }
  }
  freeaddrinfo(res);
  if (first_err == 0) {
    fprintf(stderr, "ame load: %s has no usable address\n", ld->host);
  } else {
    int v6 = strchr(first_addr, ':') != NULL;
    fprintf(stderr, "ame load: cannot connect to %s%s%s:%d: %s\n",
            v6 ? "[" : "", first_addr, v6 ? "]" : "", ld->port,
            strerror(-first_err));
  }
  return 1;
}

/* Let the process open nconns sockets and run nworkers reactor workers.
** Return 0, or print why not and return 1. */
static int raise_fd_limit(unsigned nconns, unsigned nworkers) {
  struct rlimit rl;
  rlim_t need = (rlim_t)nconns + 64 + (rlim_t)nworkers * FDS_PER_WORKER;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return 0;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need
                    ? need
                    : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= need) return 0;
  fprintf(stderr,
          "ame load: %u connections and %u threads need %llu file "
          "descriptors; the limit is %llu (ulimit -n)\n",
          nconns, nworkers, (unsigned long long)need,
          (unsigned long long)rl.rlim_cur);
  return 1;
}

/* Connect every slot and run the reactor to the end.  Return 0, or print
** why not and return 1. */
static int run(ld_run_t *ld) {
  ame_reactor_config_t cfg = {.workers = ld->nworkers};
  int rc = ame_reactor_new(&ld->r, &cfg);
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot start the reactor: %s\n",
            ame_strerror(rc));
    return 1;
  }
  ld->nworkers = ame_reactor_workers(ld->r);
  ld->ws = aligned_alloc(_Alignof(ld_stats_t), ld->nworkers * sizeof *ld->ws);
  ld->conns =
      aligned_alloc(_Alignof(ld_conn_t), ld->nconns * sizeof *ld->conns);
  if (ld->ws) memset(ld->ws, 0, ld->nworkers * sizeof *ld->ws);
  if (ld->conns) memset(ld->conns, 0, ld->nconns * sizeof *ld->conns);
  for (unsigned w = 0; ld->ws && w < ld->nworkers && rc == 0; w++)
    rc = hist_init(&ld->ws[w].hist, LD_HIST_HIGHEST_NS);
  if (ld->ws == NULL || ld->conns == NULL || rc != 0) {
    fprintf(stderr, "ame load: out of memory\n");
    ame_reactor_free(ld->r);
    return 1;
  }
  ld->start_ns = ld_now_ns();
  ld->hk.next_progress_ns = ld->start_ns + 1000000000ull;
  ld->hk.last_ns = ld->start_ns;
  rc = ame_timer_start(ld->r, HK_MS, HK_MS, hk_cb, NULL, NULL);
  if (rc == 0) rc = ame_signal_start(ld->r, SIGINT, signal_cb, NULL, NULL);
  if (rc == 0) rc = ame_signal_start(ld->r, SIGTERM, signal_cb, NULL, NULL);
  for (unsigned i = 0; i < ld->nconns && rc == 0; i++) {
    ld_conn_t *c = &ld->conns[i];
    c->index = i;
    /* --rate: the slots of the connections interleave evenly. */
    c->intended_ns = ld->start_ns + ld->interval_ns / ld->nconns * i;
    rc = ld_reconnect(c);
  }
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot start: %s\n", ame_strerror(rc));
    ame_reactor_free(ld->r);
    return 1;
  }
  rc = ame_reactor_run(ld->r);
  if (rc != 0)
    fprintf(stderr, "ame load: the reactor failed: %s\n", ame_strerror(rc));
  if (ld->end_ns == 0) ld->end_ns = ld_now_ns();
  ame_reactor_free(ld->r);
  return rc != 0;
}

static void free_load(ld_run_t *ld) {
  if (ld->ws)
    for (unsigned w = 0; w < ld->nworkers; w++) hist_free(&ld->ws[w].hist);
  free(ld->ws);
  free(ld->conns);
  free(ld->request);
  ld_tls_free();
}

int ame_load_main(int argc, char **argv) {
  ld_run_t *ld = &ld_run;
  memset(ld, 0, sizeof *ld);
  int status = ld_options(ld, argc, argv);
  if (status >= 0) return status;
  if (find_server(ld) != 0 || raise_fd_limit(ld->nconns, ld->nworkers) != 0 ||
      (ld->tls && ld_tls_setup(ld) != 0)) {
    free_load(ld);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);

  int failed = run(ld);
  if (ld->progress_shown && ld->tty) fputs("\r\033[K", stderr);
  int rc = failed ? 1 : ld_report(ld);
  free_load(ld);
  ame_stm_shutdown();
  return rc;
}
