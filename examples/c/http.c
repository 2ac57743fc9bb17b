/*
** examples/c/http.c — an HTTP/1.1 server whose workers share state without
** a lock.  Each worker thread drives its own event loop; every callback is
** a transaction, so the per-path hit counters and the cache (http_app.c)
** are plain data structures in STM words that any worker may update: a
** conflict re-runs the callback, never corrupts the table.
**
**   GET /  or  GET /hello    "Hello, world!\n" (what bench/ measures)
**   GET /stats               hit counters and cache counters, as JSON
**   GET /cache/<key>         the key's value (computed once on a miss)
**   PUT|POST /cache/<key>    store the request body as the key's value
**   DELETE /cache/<key>      forget it
**
** Keep-alive and pipelining (every request of one read is answered, in
** order, by one write), "Connection: close" and HTTP/1.0 are honoured.  A
** malformed request gets 400 (431 for headers over 8 KiB, 413/414 for a
** body/target too long, 501 for an unknown method, 405 for a known one we
** do not serve; without a body for HEAD) and the connection is closed; so
** is one whose pipelined requests in one read ask for more than
** HTTP_MAX_OUTPUT (1 MiB) of responses: the request past it gets 503.  A connection that has
** completed no request for the idle timeout (an idle keep-alive client, or
** a slowloris one that never finishes its request) is closed, so that
** such clients cannot hold every descriptor.  SIGINT or SIGTERM stops the
** server gracefully; it then prints its totals and the reactor's report.
**
**   build/examples/c/http [-p PORT] [-w WORKERS] [--reuseport] [--host ADDR]
**                         [--idle-timeout SECONDS]
**       PORT 0 picks a free port (printed); WORKERS 0 = one per core;
**       SECONDS 0 = no timeout (default 60).
**   curl -s localhost:8080/hello; curl -s localhost:8080/stats
*/
#include "http_app.h"
#include "parse_num.h"
#include "stop_signals.h"

#include <ame/reactor.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GRAIN 64 /* a cache line: whole STM conflict granules (32 bytes) */

static http_shared_t *shared; /* set before the reactor runs; immutable */
static uintptr_t idle_timeout = 60; /* seconds; 0: none.  Immutable */

/* A connection.  The open ones of each worker are a doubly linked list in
** STM words, which the sweeper (on_sweep) walks to close those idle for
** longer than idle_timeout. */
struct conn {
  http_conn_t *app;          /* parser state; its stream's callbacks only */
  ame_stream_t *s;           /* immutable */
  unsigned list;             /* its list (its worker); immutable */
  struct conn *prev, *next;  /* STM */
  uintptr_t since;           /* STM: second of the open, or of the last
                                completed request */
};

/* One list head per worker, each on its own granule so that workers
** opening connections at once do not conflict. */
static struct list_head {
  struct conn *head; /* STM */
  char pad[GRAIN - sizeof(struct conn *)];
} *lists;
static unsigned nlists; /* immutable */

/* The monotonic clock, in seconds. */
static uintptr_t now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uintptr_t)ts.tv_sec;
}

/* The connection's state goes in its handle's data.  Every attempt sets
** it, so a re-run after an abort (which frees the attempt's ame_tx_malloc
** blocks) leaves no stale pointer behind. */
static int on_open(ame_tx_t *tx, ame_stream_t *s) {
  unsigned w = ame_stream_worker(s);
  struct conn *c = ame_tx_malloc(tx, sizeof *c);
  http_conn_t *app = c ? http_conn_new(tx, shared, w) : NULL;
  ame_handle_set_data(s, app ? c : NULL);
  if (app == NULL) { /* the transaction still commits */
    if (c) ame_tx_free(tx, c, 0);
    return -ENOMEM;
  }
  /* Fresh block: plain stores until the list store publishes it. */
  struct conn **head = &lists[w % nlists].head;
  struct conn *first = ame_load_ptr_tx(tx, (void **)head);
  c->app = app;
  c->s = s;
  c->list = w % nlists;
  c->prev = NULL;
  c->next = first;
  c->since = now_s();
  if (first) ame_store_ptr_tx(tx, (void **)&first->prev, c);
  ame_store_ptr_tx(tx, (void **)head, c);
  return 0;
}

static int on_data(ame_tx_t *tx, ame_stream_t *s, const char *data,
                   size_t len) {
  struct conn *c = ame_handle_data(s);
  int rc = http_conn_feed(tx, c->app, data, len);
  if (rc < 0) return rc;
  size_t n;
  const char *out = http_conn_output(c->app, &n);
  if (n > 0) {
    int wrc = ame_stream_write(s, out, n);
    if (wrc < 0) return wrc;
    /* A request completed.  Stored once a second at most, so that the
    ** sweeper seldom conflicts with a busy connection. */
    uintptr_t now = now_s();
    if (ame_load_word_tx(tx, &c->since) != now)
      ame_store_word_tx(tx, &c->since, now);
  }
  if (rc == HTTP_CLOSE) ame_stream_close(s);
  return 0;
}

static void on_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)status;
  struct conn *c = ame_handle_data(s);
  if (c == NULL) return;
  struct conn *prev = ame_load_ptr_tx(tx, (void **)&c->prev);
  struct conn *next = ame_load_ptr_tx(tx, (void **)&c->next);
  if (prev)
    ame_store_ptr_tx(tx, (void **)&prev->next, next);
  else
    ame_store_ptr_tx(tx, (void **)&lists[c->list].head, next);
  if (next) ame_store_ptr_tx(tx, (void **)&next->prev, prev);
  http_conn_free(tx, c->app);
  /* The size locks its words: a sweep that still walks through it
  ** conflicts with this transaction. */
  ame_tx_free(tx, c, sizeof *c);
}

/* Every second: close the connections that have completed no request for
** longer than idle_timeout.  A closed one stays listed until its on_close;
** closing it again meanwhile does nothing more. */
static int on_sweep(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  uintptr_t now = now_s();
  for (unsigned i = 0; i < nlists; i++)
    for (struct conn *c = ame_load_ptr_tx(tx, (void **)&lists[i].head); c;
         c = ame_load_ptr_tx(tx, (void **)&c->next))
      if (now > ame_load_word_tx(tx, &c->since) + idle_timeout)
        ame_stream_close(c->s);
  return 0;
}

static const ame_stream_cbs_t http_cbs = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
};

static void usage(FILE *f) {
  fprintf(f, "usage: http [-p PORT] [-w WORKERS] [--reuseport] "
             "[--host ADDR]\n"
             "  -p, --port PORT      port to listen on (default 8080; 0 "
             "picks one)\n"
             "  -w, --workers N      worker threads (default: one per "
             "core)\n"
             "      --reuseport      one listening socket per worker\n"
             "      --host ADDR      numeric address (default 0.0.0.0)\n"
             "      --idle-timeout S close a connection that completes no "
             "request for S\n"
             "                       seconds (default 60; 0: never)\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"port", required_argument, NULL, 'p'},
      {"workers", required_argument, NULL, 'w'},
      {"reuseport", no_argument, NULL, 'R'},
      {"host", required_argument, NULL, 'H'},
      {"idle-timeout", required_argument, NULL, 'T'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  unsigned long port = 8080, workers = 0, timeout = 60;
  int flags = 0, ch;
  const char *host = "0.0.0.0";
  while ((ch = getopt_long(argc, argv, "p:w:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'p':
      if (parse_num(optarg, 65535, &port) != 0) goto bad;
      break;
    case 'w':
      if (parse_num(optarg, UINT_MAX, &workers) != 0) goto bad;
      break;
    case 'R': flags |= AME_TCP_REUSEPORT; break;
    case 'H': host = optarg; break;
    case 'T': /* at most ~31 years: since + timeout cannot wrap */
      if (parse_num(optarg, 1000000000, &timeout) != 0) goto bad;
      break;
    case 'h': usage(stdout); return 0;
    default: goto bad;
    }
  }
  if (optind != argc) {
  bad:
    usage(stderr);
    return 2;
  }
  idle_timeout = (uintptr_t)timeout;

  ame_reactor_config_t cfg = {.workers = (unsigned)workers};
  ame_reactor_t *r;
  int rc = ame_reactor_new(&r, &cfg);
  if (rc != 0) {
    fprintf(stderr, "http: %s\n", ame_strerror(rc));
    return 1;
  }
  http_app_init();
  shared = http_shared_new(ame_reactor_workers(r));
  nlists = ame_reactor_workers(r);
  lists = aligned_alloc(GRAIN, nlists * sizeof *lists);
  if (shared == NULL || lists == NULL) {
    fprintf(stderr, "http: out of memory\n");
    http_shared_free(shared);
    free(lists);
    ame_reactor_free(r);
    return 1;
  }
  memset(lists, 0, nlists * sizeof *lists);
  ame_listener_t *l;
  rc = ame_tcp_listen(r, host, (int)port, flags, 0, &http_cbs, NULL, &l);
  if (rc != 0) {
    fprintf(stderr, "http: cannot listen on %s port %lu: %s\n", host, port,
            ame_strerror(rc));
    http_shared_free(shared);
    free(lists);
    ame_reactor_free(r);
    return 1;
  }
  if (idle_timeout > 0 &&
      (rc = ame_timer_start(r, 1000, 1000, on_sweep, NULL, NULL)) != 0) {
    fprintf(stderr, "http: %s\n", ame_strerror(rc));
    http_shared_free(shared);
    free(lists);
    ame_reactor_free(r);
    return 1;
  }
  if (stop_on_signals(r, "http") != 0) {
    http_shared_free(shared);
    free(lists);
    ame_reactor_free(r);
    return 1;
  }
  printf("http: listening on port %d with %u workers%s\n",
         ame_listener_port(l), ame_reactor_workers(r),
         flags & AME_TCP_REUSEPORT ? " (reuseport)" : "");
  fflush(stdout);

  rc = ame_reactor_run(r);

  http_totals_t t;
  http_shared_totals(shared, &t);
  printf("http: %llu requests on %llu paths; cache: %llu keys, %llu "
         "computed, %llu stored\n",
         (unsigned long long)t.requests, (unsigned long long)t.paths,
         (unsigned long long)t.cache_entries,
         (unsigned long long)t.cache_computed,
         (unsigned long long)t.cache_sets);
  ame_reactor_report(r, stdout);
  ame_reactor_free(r);
  http_shared_free(shared);
  free(lists);
  ame_stm_shutdown();
  return rc == 0 ? 0 : 1;
}
