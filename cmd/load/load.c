/*
** cmd/load/load.c — `ame load URL`: an HTTP/1.1 load generator on the
** ame reactor (docs/load.md).
**
** Shape of a run.  The URL is resolved once (getaddrinfo) and the first
** address that accepts a test connection is used.  A reactor with -t
** workers runs -c connections, spread over the workers by the reactor
** (ame_tcp_connect gives each new stream to the worker with the fewest).
** https:// adds TLS (OpenSSL) under the same loop: see "https" below.
** Each connection sends one request (GET unless -m says otherwise, with
** the --body if one is given; built once, keep-alive), parses the
** response with http-parser, records the latency and sends the next one
** (closed loop), or, with --rate, waits for its next slot in a fixed
** schedule (open loop, see below).  A housekeeping timer every 10 ms ends
** the run at the deadline, aborts requests older than --timeout and prints
** the progress line.  At the deadline no new request is sent and the run
** waits (at most --timeout) for the responses in flight, so every request
** the server answered is counted; then ame_reactor_stop().
**
** State and the STM.  Every callback is a transaction, and one that
** conflicts is re-run, so what a callback changes must be undone by an
** abort.  The hot path touches no STM word at all:
**   - Results are per worker (wstats_t: counters, status codes, the
**     latency histogram), changed only by callbacks of streams on that
**     worker, merged after the run.  A callback undo-logs (ame_tx_save) the
**     words it is about to change, so a re-run starts from the same state.
**   - A connection slot's parser state (conn_t's first part) belongs to its
**     current stream, whose callbacks run one at a time on its worker; it
**     is undo-logged the same way.
**   - What timers on other workers need of a slot is shared: the stream
**     pointer and its generation are STM words (written at open and close
**     only), so a timer that finds the stream also keeps its memory alive
**     (the reactor frees handles through the STM's deferred free).  The
**     time the request in flight was written is a plain atomic, written
**     before the draining flag is read (and the deadline sets that flag
**     before reading the times), so the two sides cannot both miss.
**   - Rare global events (the first connection open, connect failures
**     before any) are STM words: a conflict there costs a re-run at start.
** Progress totals are read with relaxed atomic loads of the per-worker
** counters, which their owners store atomically.
**
** --rate R.  Each connection gets R/c requests per second on a fixed
** schedule (slot k of connection i is due at start + (i/c + k) * c/R).
** Latency is measured from the slot's due time, not from when the request
** was written: a server that stalls delays the requests behind it, and
** that waiting counts (this avoids coordinated omission, as wrk2 does).
** Timers have millisecond resolution, so a request may go out up to 1 ms
** early; its latency is then measured from when it was written.  With one
** request in flight per connection, a server slower than c / latency falls
** behind the schedule and its latencies grow: that is the measurement.
*/
#include "load.h"

#include "hist.h"

#include <ame/reactor.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <http_parser.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#ifdef AME_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif
#include <unistd.h>

#define HK_MS 10               /* housekeeping period */
#define RECONNECT_MS 50        /* wait after a failed connect */
#define PROBE_MS 2000          /* the start's test connection */
#define HIST_HIGHEST_NS (60ull * 1000000000ull) /* latencies up to 60 s */
#define MAX_CONNS 1000000
#define MAX_THREADS 256
#define NSTATUS 600            /* status codes 0..599 counted one by one */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define LOAD_SC(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE_SC(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

enum { ERR_CONNECT, ERR_READ, ERR_WRITE, ERR_TIMEOUT, ERR_PARSE, ERR_TLS,
       ERR__COUNT };
static const char *const err_names[ERR__COUNT] = {"connect", "read", "write",
                                                  "timeout", "parse", "tls"};

/* One worker's results.  Changed only by callbacks running on that worker;
** the counters before `status` are also read (atomically) by the progress
** line. */
typedef struct wstats {
  _Alignas(64) uint64_t requests; /* responses completed */
  uint64_t errors[ERR__COUNT];    /* socket errors by kind */
  uint64_t bytes;                 /* bytes read */
  uint64_t abandoned;             /* requests in flight at the final stop */
  uint64_t status[NSTATUS];       /* responses by status code */
  uint64_t status_other;          /* ... with a code of 600 or more */
  hist_t hist;                    /* latencies (ns) */
} wstats_t;
#define WS_COUNTERS_SIZE offsetof(wstats_t, status)

/* A connection slot.  It outlives its streams: after a close the slot
** connects again with a new stream.  Slots are cache-line aligned: the
** reactor puts neighbours on different workers. */
typedef struct conn {
  /* Owned by the current stream's callbacks (one at a time, on its
  ** worker), which undo-log this part before changing it. */
  _Alignas(64) http_parser parser; /* the response being read */
  ame_tx_t *tx;         /* the callback running now (for the parser's) */
  wstats_t *ws;         /* its worker's results */
  uint64_t intended_ns; /* --rate: when the current request is due */
  uint32_t epoch;       /* the current stream's generation (= epoch_w) */
  int open;             /* the current stream reached on_open */
  int attempted;        /* a connect of this slot has ended before */
  int completed;        /* a response completed in this callback */
  int keep_alive;       /* ... and the server keeps the connection */
  int bad;              /* a parser callback failed: 1 protocol, <0 errno */
  struct tls_conn *tls; /* https: the current stream's TLS state */
  /* Shared with timers, which may run on any worker. */
  uintptr_t stream_w;      /* STM word: the open stream, or 0 */
  uintptr_t epoch_w;       /* STM word: bumped when a stream closes */
  uint64_t inflight_since; /* atomic: when the request in flight was
                              written (ns), 0 when there is none */
  uint64_t timed_out;      /* atomic: epoch+1 of a stream the housekeeper
                              aborted for a timeout */
  uint64_t timeout_epoch;  /* the housekeeper's: what it will store there */
  unsigned index;          /* immutable: this slot's number */
} conn_t;
#define CONN_OWNED_SIZE offsetof(conn_t, stream_w)

/* The run.  One per process (the callbacks find it through `L`). */
struct load {
  /* Settings, immutable while the reactor runs. */
  const char *url;
  char addr[INET6_ADDRSTRLEN]; /* the numeric address connected to */
  int port;
  char *request;               /* the request, built once */
  size_t request_len;
  const char *method;          /* -m: GET by default */
  size_t body_len;             /* --body / --body-file: its length */
  int has_body;                /* a body was given (maybe empty) */
  unsigned nconns, nworkers;
  uint64_t duration_ns, timeout_ns;
  double rate;                 /* requests/s over all connections, 0: none */
  uint64_t interval_ns;        /* --rate: between one connection's slots */
  int json, progress, tty;
  int head;                    /* the method is HEAD */
  int tls;                     /* https:// */
  char sni[256];               /* https: the server name sent, or "" */
#ifdef AME_HAVE_OPENSSL
  SSL_CTX *ssl_ctx;
#endif
  int tls_ok_ever;             /* atomic: some TLS handshake completed */
  unsigned tls_failures;       /* atomic: handshakes failed before that */
  int tls_fatal;               /* atomic: every first handshake failed */
  char tls_error[256];         /* the first TLS error (set once) */
  int tls_error_set;           /* atomic: tls_error is set */
  ame_reactor_t *r;
  conn_t *conns;
  wstats_t *ws;                /* one per worker */
  uint64_t start_ns;
  /* Flags and times any callback may read (atomics). */
  int draining;                /* the deadline passed: send nothing new */
  int stopped;                 /* ame_reactor_stop() was asked for */
  int interrupted;             /* SIGINT or SIGTERM seen */
  uint64_t end_ns;             /* when the stop was asked for */
  /* STM words for rare events, on a granule of their own. */
  struct {
    _Alignas(64) uintptr_t opened_ever;    /* some connection opened */
    uintptr_t initial_failures;            /* first connects that failed */
    uintptr_t fatal_error;                 /* errno that ended the run */
  } g;
  /* The housekeeper's own (its timer's callbacks run one at a time). */
  struct {
    _Alignas(64) uint64_t drain_ns; /* when draining began */
    uint64_t next_progress_ns;      /* when to print the next line */
    uint64_t last_requests;         /* the count at the last line */
    uint64_t last_ns;
  } hk;
  int progress_shown; /* a progress line was printed (main thread reads) */
};

static struct load *L;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Add n to a counter that only the calling worker writes. */
static void bump(uint64_t *p, uint64_t n) { STORE(p, LOAD(p) + n); }

/* ------------------------------------------------------------------------
** The connection's callbacks.
*/

static const ame_stream_cbs_t conn_cbs;

/* Undo-log what a stream callback of c may change: the slot's owned part
** and its worker's counters.  Return 0 or -ENOMEM. */
static int save_conn(ame_tx_t *tx, conn_t *c, wstats_t *ws) {
  int rc = ame_tx_save(tx, c, CONN_OWNED_SIZE);
  if (rc == 0) rc = ame_tx_save(tx, ws, WS_COUNTERS_SIZE);
  return rc;
}

/* Connect slot c again (at commit inside a transaction). */
static int reconnect(conn_t *c) {
  ame_stream_t *s;
  return ame_tcp_connect(L->r, L->addr, L->port, &conn_cbs, c, &s);
}

/* Nothing in flight on c. */
static void set_idle(conn_t *c) { STORE_SC(&c->inflight_since, 0); }

static int tls_write_request(conn_t *c, ame_stream_t *s);

/* Write the request on s now, unless the run is draining (then close s).
** The time is published before the draining flag is read: see the top. */
static int send_now(conn_t *c, ame_stream_t *s, wstats_t *ws, uint64_t now) {
  STORE_SC(&c->inflight_since, now ? now : 1);
  if (LOAD_SC(&L->draining)) {
    set_idle(c);
    ame_stream_close(s);
    return 0;
  }
  int rc = L->tls ? tls_write_request(c, s)
                  : ame_stream_write(s, L->request, L->request_len);
  if (rc < 0) {
    set_idle(c);
    bump(&ws->errors[ERR_WRITE], 1);
    ame_stream_abort(s);
  }
  return 0;
}

static int rate_cb(ame_tx_t *tx, ame_timer_t *t);

/* --rate: send c's current request (due at c->intended_ns) now if it is
** due within a millisecond, else start a timer for it. */
static int schedule(conn_t *c, ame_stream_t *s, wstats_t *ws, uint64_t now) {
  if (c->intended_ns <= now + 1000000) return send_now(c, s, ws, now);
  set_idle(c);
  if (LOAD_SC(&L->draining)) {
    ame_stream_close(s);
    return 0;
  }
  uint64_t ms = (c->intended_ns - now) / 1000000; /* early rather than late */
  uintptr_t d = ((uintptr_t)c->index << 32) | c->epoch;
  return ame_timer_start(L->r, ms, 0, rate_cb, (void *)d, NULL);
}

/* A --rate timer: write the request on the slot's stream if it is still
** the stream that asked.  Runs on any worker, so it touches only the
** slot's shared part. */
static void clear_inflight(void *arg) { set_idle(arg); }

static int rate_cb(ame_tx_t *tx, ame_timer_t *t) {
  uintptr_t d = (uintptr_t)ame_handle_data(t);
  conn_t *c = &L->conns[d >> 32];
  if (LOAD_SC(&L->draining)) return 0;
  if ((uint32_t)ame_load_word_tx(tx, &c->epoch_w) != (uint32_t)d) return 0;
  ame_stream_t *s = ame_load_ptr_tx(tx, (void *const *)&c->stream_w);
  if (s == NULL) return 0;
  /* An attempt that aborts after publishing the time takes it back. */
  int rc = ame_tx_on_abort(tx, clear_inflight, c);
  if (rc) return rc;
  uint64_t now = now_ns();
  STORE_SC(&c->inflight_since, now);
  if (LOAD_SC(&L->draining)) {
    set_idle(c);
    return 0;
  }
  if (ame_stream_write(s, L->request, L->request_len) < 0)
    set_idle(c); /* closing: its on_close reconnects */
  return 0;
}

/* http-parser: one response is complete.  Record it. */
static int on_message_complete(http_parser *p) {
  conn_t *c = p->data;
  uint64_t since = LOAD(&c->inflight_since);
  if (c->completed || since == 0) {
    c->bad = 1; /* a response to no request */
    return 1;
  }
  uint64_t now = now_ns();
  uint64_t start = since;
  if (L->rate > 0 && c->intended_ns < since) start = c->intended_ns;
  uint64_t lat = now > start ? now - start : 0;
  wstats_t *ws = c->ws;
  hist_t *h = &ws->hist;
  unsigned code = p->status_code;
  uint64_t *st = code < NSTATUS ? &ws->status[code] : &ws->status_other;
  /* (c->tx is NULL where https responses are read: after the callback's
  ** commit, see tls_data_commit, where nothing is undone.) */
  if (c->tx && (ame_tx_save(c->tx, &h->count, HIST_SUMMARY_SIZE) ||
                ame_tx_save(c->tx, &h->counts[hist_index(h, lat)],
                            sizeof(uint64_t)) ||
                ame_tx_save(c->tx, st, sizeof *st))) {
    c->bad = -ENOMEM;
    return 1;
  }
  hist_record(h, lat);
  (*st)++;
  bump(&ws->requests, 1);
  c->completed = 1;
  c->keep_alive = http_should_keep_alive(p);
  return 0;
}

/* http-parser: a response to HEAD has no body, whatever its headers say
** (1: "no body follows"). */
static int on_headers_complete(http_parser *p) {
  (void)p;
  return L->head;
}

static const http_parser_settings parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* A protocol error on s: count it and start over on a new connection. */
static int protocol_error(conn_t *c, ame_stream_t *s, wstats_t *ws) {
  set_idle(c);
  bump(&ws->errors[ERR_PARSE], 1);
  ame_stream_abort(s);
  return 0;
}

/* ------------------------------------------------------------------------
** https.  Each stream has an OpenSSL client (struct tls_conn) over two
** memory BIOs: the reactor's bytes go in, what OpenSSL wants sent comes
** out and is written to the stream.  OpenSSL's state cannot be undone, so
** it is never touched inside a transaction: the callbacks hand the work to
** commit handlers (tls_open_commit, tls_data_commit, tls_free_commit),
** which run once, after the callback committed, on the stream's worker,
** in order.  There the response bytes go through plain_data() with no
** transaction (nothing to undo), and requests are written with
** ame_stream_write(), which outside a transaction acts at once.  Like
** wrk, the server's certificate is not verified; the server name is sent
** (SNI) when the URL's host is a name.  --rate is refused with https
** (its timers may run on another worker than the stream's).
*/

static void stop_commit(void *arg);
static int plain_data(ame_tx_t *tx, conn_t *c, ame_stream_t *s,
                      wstats_t *ws, const char *data, size_t len);

#ifdef AME_HAVE_OPENSSL
struct tls_conn {
  SSL *ssl;
  BIO *rbio, *wbio; /* network side: bytes received, bytes to send */
  int handshaken;
  int failed;       /* tls_fail() counted it */
  const char *lost; /* the stream closed during the handshake: why */
};

struct tls_chunk {
  conn_t *c;
  ame_stream_t *s;
  size_t len;
  char data[];
};

static void tls_conn_free(struct tls_conn *t) {
  if (t == NULL) return;
  SSL_free(t->ssl); /* and its BIOs */
  free(t);
}

static struct tls_conn *tls_conn_new(void) {
  struct tls_conn *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->ssl = SSL_new(L->ssl_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    return NULL;
  }
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_connect_state(t->ssl);
  if (L->sni[0]) SSL_set_tlsext_host_name(t->ssl, L->sni);
  return t;
}

/* Write what OpenSSL has to send to s.  Return 0 or -errno. */
static int tls_flush(struct tls_conn *t, ame_stream_t *s) {
  char buf[16384];
  int n;
  while ((n = BIO_read(t->wbio, buf, (int)sizeof buf)) > 0) {
    int rc = ame_stream_write(s, buf, (size_t)n);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Keep the first TLS error's text for the final message. */
static void tls_note_error(const char *what) {
  unsigned long e = ERR_peek_last_error();
  if (__atomic_exchange_n(&L->tls_error_set, 1, __ATOMIC_SEQ_CST) == 0) {
    char reason[200] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    snprintf(L->tls_error, sizeof L->tls_error, "%s%s%s", what,
             reason[0] ? ": " : "", reason);
  }
  ERR_clear_error();
}

/* A handshake failed.  When none has ever completed and as many have
** failed as there are connections, the run ends (the server does not
** speak TLS, or not ours). */
static void tls_count_failure(const char *what) {
  tls_note_error(what);
  if (!LOAD_SC(&L->tls_ok_ever) &&
      __atomic_add_fetch(&L->tls_failures, 1, __ATOMIC_SEQ_CST) >= L->nconns &&
      __atomic_exchange_n(&L->tls_fatal, 1, __ATOMIC_SEQ_CST) == 0) {
    stop_commit(NULL);
    ame_reactor_stop(L->r);
  }
}

/* A TLS failure on s: count it, and start over on a new connection. */
static void tls_fail(conn_t *c, ame_stream_t *s, wstats_t *ws,
                     const char *what) {
  set_idle(c);
  bump(&ws->errors[ERR_TLS], 1);
  if (c->tls) c->tls->failed = 1;
  tls_count_failure(what);
  ame_stream_abort(s);
}

static int tls_handshaken(const struct tls_conn *t) { return t->handshaken; }

/* In on_close: t's stream closed before its handshake completed (why). */
static void tls_mark_lost(struct tls_conn *t, const char *why) {
  if (!t->failed) t->lost = why;
}

static int tls_write_request(conn_t *c, ame_stream_t *s) {
  struct tls_conn *t = c->tls;
  if (t == NULL || SSL_write(t->ssl, L->request, (int)L->request_len) <= 0) {
    tls_note_error("TLS write failed");
    return -EPIPE;
  }
  return tls_flush(t, s);
}

/* Go on with the handshake; once it is done, send the first request.
** Return 0 if the stream goes on, 1 if it is being closed. */
static int tls_handshake(conn_t *c, ame_stream_t *s, wstats_t *ws) {
  struct tls_conn *t = c->tls;
  int r = SSL_do_handshake(t->ssl);
  if (r == 1) {
    t->handshaken = 1;
    STORE_SC(&L->tls_ok_ever, 1);
    if (tls_flush(t, s) < 0) return 1; /* closing: on_close reconnects */
    set_idle(c);
    send_now(c, s, ws, now_ns());
    return 0;
  }
  if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
    return tls_flush(t, s) < 0;
  tls_fail(c, s, ws, "TLS handshake failed");
  return 1;
}

/* After on_open committed: a new TLS client for c's stream, and the
** handshake's first message.  The handshake counts as a request in
** flight, so --timeout applies to it. */
static void tls_open_commit(void *arg) {
  conn_t *c = arg;
  ame_stream_t *s = (ame_stream_t *)LOAD(&c->stream_w);
  if (s == NULL) return;
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  if (LOAD_SC(&L->draining)) {
    ame_stream_close(s);
    return;
  }
  c->tls = tls_conn_new();
  if (c->tls == NULL) {
    tls_fail(c, s, ws, "out of memory");
    return;
  }
  STORE_SC(&c->inflight_since, now_ns());
  tls_handshake(c, s, ws);
}

/* After on_data committed: decrypt what came, and handle the plaintext. */
static void tls_data_commit(void *arg) {
  struct tls_chunk *k = arg;
  conn_t *c = k->c;
  ame_stream_t *s = k->s;
  struct tls_conn *t = c->tls;
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  int in = t ? BIO_write(t->rbio, k->data, (int)k->len) : 0;
  int whole = t && in == (int)k->len;
  free(k);
  if (!whole) {
    if (t) tls_fail(c, s, ws, "out of memory");
    return;
  }
  if (!t->handshaken && (tls_handshake(c, s, ws) || !t->handshaken)) return;
  char buf[16384];
  for (;;) {
    int n = SSL_read(t->ssl, buf, (int)sizeof buf);
    if (n > 0) {
      int rc = plain_data(NULL, c, s, ws, buf, (size_t)n);
      if (rc < 0) {
        set_idle(c);
        bump(&ws->errors[ERR_READ], 1);
        ame_stream_abort(s);
      }
      if (rc != 0) return;
      continue;
    }
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify: the server is done */
      ame_stream_close(s);
      return;
    }
    tls_fail(c, s, ws, "TLS read failed");
    return;
  }
  if (tls_flush(t, s) < 0) ame_stream_abort(s);
}

/* After on_close committed. */
static void tls_free_commit(void *arg) {
  struct tls_conn *t = arg;
  if (t->lost) tls_count_failure(t->lost);
  tls_conn_free(t);
}

/* on_data with https: copy the bytes for tls_data_commit. */
static int tls_data(ame_tx_t *tx, conn_t *c, ame_stream_t *s,
                    const char *data, size_t len) {
  struct tls_chunk *k = malloc(sizeof *k + len);
  if (k == NULL) return -ENOMEM;
  k->c = c;
  k->s = s;
  k->len = len;
  memcpy(k->data, data, len);
  if (ame_tx_on_abort(tx, free, k) != 0) {
    free(k);
    return -ENOMEM;
  }
  return ame_tx_on_commit(tx, tls_data_commit, k) != 0 ? -ENOMEM : 0;
}
#else
static int tls_write_request(conn_t *c, ame_stream_t *s) {
  (void)c;
  (void)s;
  return -EPROTONOSUPPORT;
}
static void tls_open_commit(void *arg) { (void)arg; }
static void tls_free_commit(void *arg) { (void)arg; }
static int tls_handshaken(const struct tls_conn *t) {
  (void)t;
  return 1;
}
static void tls_mark_lost(struct tls_conn *t, const char *why) {
  (void)t;
  (void)why;
}
static int tls_data(ame_tx_t *tx, conn_t *c, ame_stream_t *s,
                    const char *data, size_t len) {
  (void)tx, (void)c, (void)s, (void)data, (void)len;
  return -EPROTONOSUPPORT;
}
#endif

static int on_open(ame_tx_t *tx, ame_stream_t *s) {
  conn_t *c = ame_handle_data(s);
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  ame_store_ptr_tx(tx, (void **)&c->stream_w, s);
  if (ame_load_word_tx(tx, &L->g.opened_ever) == 0)
    ame_store_word_tx(tx, &L->g.opened_ever, 1);
  c->open = 1;
  c->attempted = 1;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  ame_stream_nodelay(s, 1);
  if (L->tls) /* the handshake first, after this commits */
    return ame_tx_on_commit(tx, tls_open_commit, c) != 0 ? -ENOMEM : 0;
  uint64_t now = now_ns();
  return L->rate > 0 ? schedule(c, s, ws, now) : send_now(c, s, ws, now);
}

/* Response bytes for c (on stream s, worker results ws): parse them,
** record what completed, and send the next request.  tx is the callback's
** transaction, or NULL after it (https: tls_data_commit).  Return 0, 1 if
** s is being closed (read nothing more from it), or -errno. */
static int plain_data(ame_tx_t *tx, conn_t *c, ame_stream_t *s,
                      wstats_t *ws, const char *data, size_t len) {
  c->tx = tx;
  c->ws = ws;
  c->completed = 0;
  c->bad = 0;
  size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
  if (c->bad < 0) return c->bad;
  if (c->bad || HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || n != len)
    return protocol_error(c, s, ws), 1;
  if (!c->completed) return 0;
  if (!c->keep_alive) {
    set_idle(c);
    ame_stream_close(s); /* on_close connects again */
    return 1;
  }
  uint64_t now = now_ns();
  if (L->rate <= 0) return send_now(c, s, ws, now);
  c->intended_ns += L->interval_ns;
  return schedule(c, s, ws, now);
}

static int tls_data(ame_tx_t *tx, conn_t *c, ame_stream_t *s,
                    const char *data, size_t len);

static int on_data(ame_tx_t *tx, ame_stream_t *s, const char *data,
                   size_t len) {
  conn_t *c = ame_handle_data(s);
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  ws->bytes += len;
  if (L->tls) return tls_data(tx, c, s, data, len);
  rc = plain_data(tx, c, s, ws, data, len);
  return rc < 0 ? rc : 0;
}

static int on_eof(ame_tx_t *tx, ame_stream_t *s) {
  conn_t *c = ame_handle_data(s);
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  c->tx = tx;
  c->ws = ws;
  c->completed = 0;
  c->bad = 0;
  /* A response whose body runs to EOF ends here; one cut short stays in
  ** flight and on_close counts a read error. */
  http_parser_execute(&c->parser, &parser_settings, NULL, 0);
  if (c->bad < 0) return c->bad;
  if (c->completed) set_idle(c);
  ame_stream_close(s);
  return 0;
}

/* After on_close commits: the slot has nothing in flight. */
static void closed_commit(void *arg) { set_idle(arg); }

static void begin_stop(ame_tx_t *tx);

/* A slot's wait after a failed connect is over.  The slot has no stream,
** so nothing else touches it meanwhile. */
static int reconnect_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  if (LOAD_SC(&L->draining) || LOAD_SC(&L->stopped)) return 0;
  return reconnect(ame_handle_data(t));
}

static void on_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  conn_t *c = ame_handle_data(s);
  wstats_t *ws = &L->ws[ame_stream_worker(s)];
  if (save_conn(tx, c, ws) || ame_tx_on_commit(tx, closed_commit, c)) return;
  struct tls_conn *t = c->tls;
  if (t) { /* freed once this commits (no handler of it runs later) */
    if (ame_tx_on_commit(tx, tls_free_commit, t) != 0) return;
    c->tls = NULL;
  }
  uint64_t since = LOAD(&c->inflight_since);
  int stopped = LOAD_SC(&L->stopped), draining = LOAD_SC(&L->draining);
  if (c->open) {
    c->open = 0;
    int timed_out = LOAD(&c->timed_out) == (uint64_t)c->epoch + 1;
    c->epoch++;
    ame_store_ptr_tx(tx, (void **)&c->stream_w, NULL);
    ame_store_word_tx(tx, &c->epoch_w, c->epoch);
    /* https: a stream that ends during its handshake is a TLS error. */
    int handshaking = t && !tls_handshaken(t) && since && !stopped;
    if (handshaking)
      tls_mark_lost(t, timed_out ? "the TLS handshake timed out"
                                 : "the server closed the connection "
                                   "during the TLS handshake");
    if (timed_out)
      bump(&ws->errors[handshaking ? ERR_TLS : ERR_TIMEOUT], 1);
    else if (since && stopped)
      bump(&ws->abandoned, 1);
    else if (since)
      bump(&ws->errors[handshaking             ? ERR_TLS
                       : status == -EPIPE ? ERR_WRITE
                                          : ERR_READ],
           1);
    else if (status < 0 && !stopped)
      bump(&ws->errors[ERR_READ], 1);
    if (since && L->rate > 0) c->intended_ns += L->interval_ns;
    if (!draining && !stopped && reconnect(c) != 0)
      bump(&ws->errors[ERR_CONNECT], 1);
    return;
  }
  /* The connect failed (or the stop came first). */
  if (stopped || status >= 0) return;
  bump(&ws->errors[ERR_CONNECT], 1);
  int first = !c->attempted;
  c->attempted = 1;
  if (first && ame_load_word_tx(tx, &L->g.opened_ever) == 0) {
    uintptr_t n = ame_load_word_tx(tx, &L->g.initial_failures) + 1;
    ame_store_word_tx(tx, &L->g.initial_failures, n);
    if (n == L->nconns) { /* every first connect failed: give up */
      ame_store_word_tx(tx, &L->g.fatal_error, (uintptr_t)-status);
      begin_stop(tx);
      return;
    }
  }
  if (!draining) ame_timer_start(L->r, RECONNECT_MS, 0, reconnect_cb, c,
                               NULL);
}

static const ame_stream_cbs_t conn_cbs = {
    .on_open = on_open,
    .on_data = on_data,
    .on_eof = on_eof,
    .on_close = on_close,
};

/* ------------------------------------------------------------------------
** Housekeeping: deadline, drain, timeouts, progress.
*/

static void stop_commit(void *arg) {
  (void)arg;
  if (__atomic_exchange_n(&L->stopped, 1, __ATOMIC_SEQ_CST) == 0)
    STORE(&L->end_ns, now_ns());
}

/* Stop the reactor when tx commits. */
static void begin_stop(ame_tx_t *tx) {
  if (LOAD_SC(&L->stopped)) return;
  if (ame_tx_on_commit(tx, stop_commit, NULL) != 0) return;
  ame_reactor_stop(L->r);
}

static void timeout_commit(void *arg) {
  conn_t *c = arg;
  STORE(&c->timed_out, c->timeout_epoch + 1);
}

/* Sum the progress counters of every worker. */
static void progress_totals(uint64_t *requests, uint64_t *errors) {
  *requests = *errors = 0;
  for (unsigned w = 0; w < L->nworkers; w++) {
    *requests += LOAD(&L->ws[w].requests);
    for (int k = 0; k < ERR__COUNT; k++) *errors += LOAD(&L->ws[w].errors[k]);
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
  double dt = (double)(now - L->hk.last_ns) / 1e9;
  double rps = dt > 0 ? (double)(req - L->hk.last_requests) / dt : 0;
  L->hk.last_requests = req;
  L->hk.last_ns = now;
  char *line = malloc(160);
  if (line == NULL) return;
  snprintf(line, 160, "%s[%5.1fs] %llu requests, %.0f req/s, %llu errors%s",
           L->tty ? "\r\033[K" : "", (double)(now - L->start_ns) / 1e9,
           (unsigned long long)req, rps, (unsigned long long)err,
           L->tty ? "" : "\n");
  if (ame_tx_on_commit(tx, print_commit, line) != 0) {
    free(line);
    return;
  }
  /* An abort drops the commit handler: free the line then. */
  if (ame_tx_on_abort(tx, free, line) != 0) return;
  STORE(&L->progress_shown, 1);
}

static int hk_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  int rc = ame_tx_save(tx, &L->hk, sizeof L->hk);
  if (rc) return rc;
  uint64_t now = now_ns();
  if (LOAD_SC(&L->stopped)) return 0;
  if (now - L->start_ns >= L->duration_ns || LOAD(&L->interrupted))
    STORE_SC(&L->draining, 1);
  int draining = LOAD_SC(&L->draining);
  if (draining && L->hk.drain_ns == 0) L->hk.drain_ns = now;
  unsigned busy = 0;
  for (unsigned i = 0; i < L->nconns; i++) {
    conn_t *c = &L->conns[i];
    uint64_t since = LOAD_SC(&c->inflight_since);
    if (since == 0) continue;
    busy++;
    if (now <= since || now - since <= L->timeout_ns) continue;
    ame_stream_t *s = ame_load_ptr_tx(tx, (void *const *)&c->stream_w);
    uint64_t epoch = ame_load_word_tx(tx, &c->epoch_w);
    if (s == NULL || LOAD(&c->timed_out) == (epoch & 0xffffffffu) + 1)
      continue;
    /* Mark the stream, then abort it (commit handlers run in order). */
    c->timeout_epoch = epoch & 0xffffffffu;
    if ((rc = ame_tx_on_commit(tx, timeout_commit, c)) != 0) return rc;
    ame_stream_abort(s);
  }
  if (draining && (busy == 0 || now - L->hk.drain_ns > L->timeout_ns)) {
    begin_stop(tx);
    return 0;
  }
  if (L->progress && now >= L->hk.next_progress_ns) {
    progress_line(tx, now);
    L->hk.next_progress_ns += 1000000000ull;
  }
  return 0;
}

static int signal_cb(ame_tx_t *tx, ame_signal_t *sig, int signum) {
  (void)sig;
  (void)signum;
  /* First signal: end the run as at the deadline; second: stop now. */
  if (LOAD_SC(&L->interrupted)) {
    begin_stop(tx);
    return 0;
  }
  STORE_SC(&L->interrupted, 1);
  return 0;
}

/* ------------------------------------------------------------------------
** Command line.
*/

static void usage(FILE *f) {
  fprintf(f,
          "usage: ame load URL [-c CONNECTIONS] [-d DURATION] [-t THREADS]\n"
          "                    [--rate R] [--timeout T] [-H HEADER]... "
          "[--json] [--progress]\n"
          "                    [-m METHOD] [-b BODY | --body-file FILE]\n"
          "\n"
          "An HTTP/1.1 load generator on the ame reactor: CONNECTIONS "
          "keep-alive\n"
          "connections send GET URL (or METHOD URL with BODY) one request "
          "at a time,\nfor DURATION.\n"
          "\n"
          "  URL                    http[s]://HOST[:PORT][/PATH] (HOST: name, "
          "IPv4, [IPv6];\n"
          "                         https: TLS, the certificate not "
          "verified, as wrk)\n"
          "  -c, --connections N    connections (default 10)\n"
          "  -d, --duration D       how long: 10s, 500ms, 1m, 1h (default "
          "10s)\n"
          "  -t, --threads N        worker threads (default: one per CPU it "
          "may use)\n"
          "  -r, --rate R           requests per second over all "
          "connections, on a\n"
          "                         fixed schedule; latency counts from "
          "each request's\n"
          "                         due time (no coordinated omission)\n"
          "      --timeout T        a request unanswered for T is an error "
          "(default 2s)\n"
          "  -H, --header 'N: V'    add a request header (repeatable)\n"
          "  -m, --method M         request method (default GET; HEAD "
          "responses are\n"
          "                         read without a body)\n"
          "  -b, --body DATA        send DATA as every request's body "
          "(Content-Length\n"
          "                         is set; give Content-Type with -H)\n"
          "      --body-file FILE   the same, with FILE's bytes (at most "
          "64 MiB)\n"
          "      --json             print the results as JSON\n"
          "      --progress         print progress every second on stderr "
          "(default:\n"
          "                         when stderr is a terminal)\n"
          "      --no-progress      never print progress\n"
          "  -h, --help             this help\n"
          "\n"
          "Exit status: 0 when responses came back, 1 when nothing "
          "succeeded, 2 on\na usage error.\n");
}

/* Print a usage error and return 2. */
static int usage_error(const char *fmt, const char *arg) {
  fputs("ame load: ", stderr);
  fprintf(stderr, fmt, arg);
  fputs("\nTry 'ame load --help'.\n", stderr);
  return 2;
}

/* Parse a duration ("10s", "500ms", "1m", "1.5h", "250us"; a bare number is
** seconds) into nanoseconds.  Return 0, or -1 if it is not a positive
** duration of at most 10 days. */
static int load_parse_duration(const char *s, uint64_t *ns) {
  static const struct {
    const char *unit;
    double scale;
  } units[] = {{"ns", 1},       {"us", 1e3},         {"ms", 1e6},
               {"s", 1e9},      {"", 1e9},           {"m", 60e9},
               {"min", 60e9},   {"h", 3600e9}};
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno || !isfinite(v) || v <= 0) return -1;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(end, units[i].unit) == 0) {
      double d = v * units[i].scale;
      if (d < 1 || d > 864000e9) return -1;
      *ns = (uint64_t)d;
      return 0;
    }
  }
  return -1;
}

/* Parse an unsigned number in [lo, hi].  Return 0 or -1. */
static int parse_uint(const char *s, unsigned long lo, unsigned long hi,
                      unsigned *out) {
  char *end;
  errno = 0;
  if (*s == '-' || *s == '+') return -1;
  unsigned long v = strtoul(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return -1;
  *out = (unsigned)v;
  return 0;
}

typedef struct url {
  int tls;             /* https:// */
  char host[256];      /* without brackets */
  char authority[300]; /* host[:port] as written: the Host header */
  int port;
  const char *path;    /* from the first '/' or '?' (points into the URL) */
} url_t;

/* Split an http:// URL.  Return NULL or a message saying what is wrong. */
static const char *parse_url(const char *s, url_t *u) {
  const char *p = strstr(s, "://");
  u->tls = 0;
  if (p) {
    if ((size_t)(p - s) == 5 && strncasecmp(s, "https", 5) == 0) {
#ifdef AME_HAVE_OPENSSL
      u->tls = 1;
#else
      return "https is not supported by this build (no OpenSSL)";
#endif
    } else if ((size_t)(p - s) != 4 || strncasecmp(s, "http", 4) != 0) {
      return "the URL must start with http:// or https://";
    }
    p += 3;
  } else {
    p = s;
  }
  size_t alen = strcspn(p, "/?#");
  if (alen == 0) return "the URL has no host";
  if (alen >= sizeof u->authority) return "the URL's host is too long";
  memcpy(u->authority, p, alen);
  u->authority[alen] = '\0';
  if (strchr(u->authority, '@')) return "user:password@ is not supported";
  const char *path = p + alen;
  u->path = *path == '/' ? path : NULL; /* "?q" and "" get a '/' added */
  const char *a = u->authority, *colon;
  size_t hlen;
  if (*a == '[') {
    const char *rb = strchr(a, ']');
    if (rb == NULL) return "unbalanced [ in the URL's host";
    hlen = (size_t)(rb - a - 1);
    memcpy(u->host, a + 1, hlen);
    colon = rb[1] == ':' ? rb + 1 : NULL;
    if (rb[1] != ':' && rb[1] != '\0') return "bad characters after ]";
  } else {
    colon = strrchr(a, ':');
    hlen = colon ? (size_t)(colon - a) : alen;
    if (colon && strchr(a, ':') != colon)
      return "an IPv6 address in a URL goes in brackets: http://[::1]:80/";
    memcpy(u->host, a, hlen);
  }
  u->host[hlen] = '\0';
  if (hlen == 0) return "the URL has no host";
  u->port = u->tls ? 443 : 80;
  if (colon) {
    unsigned port;
    if (parse_uint(colon + 1, 1, 65535, &port) != 0)
      return "the URL's port must be a number from 1 to 65535";
    u->port = (int)port;
  }
  return NULL;
}

/* Build the request for u (and the extra headers, and the body) into a new
** string.  A GET is nearly as small as wrk's (wrk sends the request line
** and Host; this adds Connection: keep-alive), so that both tools cost
** the server about the same; -H adds the rest.  Content-Length goes with a body, and with POST, PUT and
** PATCH even without one (RFC 9110 8.6). */
static char *build_request(const url_t *u, const char *query,
                           const char *method, char **headers,
                           size_t nheaders, const char *body, size_t body_len,
                           int has_body, size_t *len) {
  size_t cap = 320 + strlen(method) + strlen(u->authority) +
               (u->path ? strlen(u->path) : 0) + (query ? strlen(query) : 0) +
               body_len;
  for (size_t i = 0; i < nheaders; i++) cap += strlen(headers[i]) + 2;
  char *req = malloc(cap);
  if (req == NULL) return NULL;
  const char *target = u->path ? u->path : (query ? query : "");
  int tlen = (int)strcspn(target, "#"); /* a fragment is not sent */
  int n = snprintf(req, cap,
                   "%s %s%.*s HTTP/1.1\r\nHost: %s\r\n"
                   "Connection: keep-alive\r\n",
                   method, u->path ? "" : "/", tlen, target, u->authority);
  size_t off = (size_t)n;
  for (size_t i = 0; i < nheaders; i++)
    off += (size_t)snprintf(req + off, cap - off, "%s\r\n", headers[i]);
  if (has_body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
      strcmp(method, "PATCH") == 0)
    off += (size_t)snprintf(req + off, cap - off, "Content-Length: %zu\r\n",
                            body_len);
  off += (size_t)snprintf(req + off, cap - off, "\r\n");
  if (body_len) memcpy(req + off, body, body_len);
  *len = off + body_len;
  return req;
}

/* Is m an HTTP method name (a token, RFC 9110 5.6.2, of 1..32 chars)? */
static int valid_method(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > 32) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)m[i]) && !strchr("!#$%&'*+-.^_`|~", m[i]))
      return 0;
  return 1;
}

/* Does header line h ("Name: value") have the name `name` (any case)? */
static int header_is(const char *h, const char *name) {
  size_t n = strlen(name);
  return strncasecmp(h, name, n) == 0 && (h[n] == ':' || h[n] == ' ');
}

#define MAX_BODY ((size_t)64 << 20)

/* Read all of path into a new buffer (*len bytes).  Return it, or NULL
** after one line on stderr. */
static char *read_body_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "ame load: --body-file %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
    if (n == cap) {
      if (cap > MAX_BODY) break;
      char *nb = realloc(buf, cap * 2);
      if (nb == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (buf == NULL) {
    fprintf(stderr, "ame load: --body-file %s: out of memory\n", path);
    return NULL;
  }
  if (err || n > MAX_BODY) {
    fprintf(stderr, "ame load: --body-file %s: %s\n", path,
            err ? strerror(err) : "larger than 64 MiB");
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
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

/* Resolve u's host and keep the first address that accepts a connection
** in ld->addr.  Return 0, or print a one-line error and return 1. */
static int find_server(struct load *ld, const url_t *u) {
  /* (No AI_ADDRCONFIG: it drops ::1 for "localhost" on a host whose only
  ** IPv6 address is the loopback; each address is tried anyway.) */
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  char port[8];
  snprintf(port, sizeof port, "%d", u->port);
  int rc = getaddrinfo(u->host, port, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot resolve %s: %s\n", u->host,
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
      ld->port = u->port;
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
    fprintf(stderr, "ame load: %s has no usable address\n", u->host);
  } else {
    int v6 = strchr(first_addr, ':') != NULL;
    fprintf(stderr, "ame load: cannot connect to %s%s%s:%d: %s\n",
            v6 ? "[" : "", first_addr, v6 ? "]" : "", u->port,
            strerror(-first_err));
  }
  return 1;
}

/* Let the process open nconns sockets.  Return 0, or print why not and
** return 1. */
static int raise_fd_limit(unsigned nconns) {
  struct rlimit rl;
  rlim_t need = (rlim_t)nconns + 64;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return 0;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need
                    ? need
                    : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= need) return 0;
  fprintf(stderr,
          "ame load: %u connections need %llu file descriptors; the limit "
          "is %llu (ulimit -n)\n",
          nconns, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
  return 1;
}

/* ------------------------------------------------------------------------
** Results.
*/

/* A latency in ns, readably ("812.4us", "3.20ms", "1.50s"). */
static const char *fmt_ns(char *buf, size_t n, uint64_t ns) {
  if (ns < 1000)
    snprintf(buf, n, "%lluns", (unsigned long long)ns);
  else if (ns < 1000000)
    snprintf(buf, n, "%.1fus", (double)ns / 1e3);
  else if (ns < 1000000000)
    snprintf(buf, n, "%.2fms", (double)ns / 1e6);
  else
    snprintf(buf, n, "%.2fs", (double)ns / 1e9);
  return buf;
}

static const char *fmt_bytes(char *buf, size_t n, double b) {
  if (b < 1024)
    snprintf(buf, n, "%.0f B", b);
  else if (b < 1024 * 1024)
    snprintf(buf, n, "%.1f KiB", b / 1024);
  else if (b < 1024.0 * 1024 * 1024)
    snprintf(buf, n, "%.2f MiB", b / (1024 * 1024));
  else
    snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

static const struct {
  const char *name; /* JSON key and label */
  double p;
} percentiles[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p99.9", 99.9}};

static void report_text(const struct load *ld, const wstats_t *t,
                        double elapsed) {
  char b1[32], b2[32];
  const hist_t *h = &t->hist;
  printf("ame load %s%s%s: %s, %u connection%s, %u thread%s",
         strcmp(ld->method, "GET") ? ld->method : "",
         strcmp(ld->method, "GET") ? " " : "", ld->url,
         fmt_ns(b1, sizeof b1, ld->duration_ns), ld->nconns,
         ld->nconns == 1 ? "" : "s", ld->nworkers,
         ld->nworkers == 1 ? "" : "s");
  if (ld->rate > 0) printf(", %.6g req/s scheduled", ld->rate);
  if (ld->has_body) {
    char b3[32];
    printf(", %s body", fmt_bytes(b3, sizeof b3, (double)ld->body_len));
  }
  printf("\n  requests  %llu in %.2fs: %.2f req/s, %s read (%s/s)\n",
         (unsigned long long)t->requests, elapsed,
         elapsed > 0 ? (double)t->requests / elapsed : 0.0,
         fmt_bytes(b1, sizeof b1, (double)t->bytes),
         fmt_bytes(b2, sizeof b2,
                   elapsed > 0 ? (double)t->bytes / elapsed : 0.0));
  printf("  latency  ");
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++)
    printf(" %s %s", percentiles[i].name,
           fmt_ns(b1, sizeof b1, hist_percentile(h, percentiles[i].p)));
  printf("  max %s\n", fmt_ns(b1, sizeof b1, h->max));
  printf("            min %s  mean %s  (from %s)\n",
         fmt_ns(b1, sizeof b1, h->count ? h->min : 0),
         fmt_ns(b2, sizeof b2, (uint64_t)hist_mean(h)),
         ld->rate > 0 ? "each request's due time" : "the write of each "
                                                     "request");
  printf("  status   ");
  int any = 0;
  for (unsigned code = 0; code < NSTATUS; code++) {
    if (t->status[code] == 0) continue;
    printf(" %u: %llu", code, (unsigned long long)t->status[code]);
    any = 1;
  }
  if (t->status_other) {
    printf(" other: %llu", (unsigned long long)t->status_other);
    any = 1;
  }
  printf("%s\n  errors   ", any ? "" : " none");
  for (int k = 0; k < ERR__COUNT; k++)
    printf(" %s %llu", err_names[k], (unsigned long long)t->errors[k]);
  printf("\n");
  if (t->abandoned)
    printf("  %llu requests still unanswered at the end were dropped\n",
           (unsigned long long)t->abandoned);
}

static void report_json(const struct load *ld, const wstats_t *t,
                        double elapsed) {
  const hist_t *h = &t->hist;
  printf("{\"url\": ");
  json_string(stdout, ld->url);
  printf(", \"method\": ");
  json_string(stdout, ld->method);
  printf(", \"body_bytes\": %zu", ld->body_len);
  printf(", \"address\": ");
  json_string(stdout, ld->addr);
  printf(", \"port\": %d, \"connections\": %u, \"threads\": %u, "
         "\"duration_s\": %.3f, \"timeout_s\": %.3f, ",
         ld->port, ld->nconns, ld->nworkers, (double)ld->duration_ns / 1e9,
         (double)ld->timeout_ns / 1e9);
  if (ld->rate > 0)
    printf("\"rate\": %.6g, ", ld->rate);
  else
    printf("\"rate\": null, ");
  printf("\"elapsed_s\": %.6f, \"requests\": %llu, \"requests_per_s\": %.3f, "
         "\"bytes\": %llu, \"bytes_per_s\": %.1f,\n",
         elapsed, (unsigned long long)t->requests,
         elapsed > 0 ? (double)t->requests / elapsed : 0.0,
         (unsigned long long)t->bytes,
         elapsed > 0 ? (double)t->bytes / elapsed : 0.0);
  printf(" \"latency_us\": {\"count\": %llu, \"min\": %.3f, \"mean\": %.3f",
         (unsigned long long)h->count, h->count ? (double)h->min / 1e3 : 0.0,
         hist_mean(h) / 1e3);
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++)
    printf(", \"%s\": %.3f", percentiles[i].name,
           (double)hist_percentile(h, percentiles[i].p) / 1e3);
  printf(", \"max\": %.3f, \"from\": \"%s\"},\n", (double)h->max / 1e3,
         ld->rate > 0 ? "due" : "write");
  printf(" \"status\": {");
  const char *sep = "";
  for (unsigned code = 0; code < NSTATUS; code++) {
    if (t->status[code] == 0) continue;
    printf("%s\"%u\": %llu", sep, code, (unsigned long long)t->status[code]);
    sep = ", ";
  }
  if (t->status_other)
    printf("%s\"other\": %llu", sep, (unsigned long long)t->status_other);
  printf("},\n \"errors\": {");
  uint64_t total = 0;
  for (int k = 0; k < ERR__COUNT; k++) {
    printf("\"%s\": %llu, ", err_names[k], (unsigned long long)t->errors[k]);
    total += t->errors[k];
  }
  printf("\"total\": %llu}, \"abandoned\": %llu,\n \"requests_per_thread\": [",
         (unsigned long long)total, (unsigned long long)t->abandoned);
  for (unsigned w = 0; w < ld->nworkers; w++)
    printf("%s%llu", w ? ", " : "", (unsigned long long)ld->ws[w].requests);
  printf("]}\n");
}

/* ------------------------------------------------------------------------
** main.
*/

/* https: the client context, and the server name to send. */
static int tls_setup(struct load *ld, const url_t *u) {
#ifdef AME_HAVE_OPENSSL
  ld->ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (ld->ssl_ctx == NULL ||
      !SSL_CTX_set_min_proto_version(ld->ssl_ctx, TLS1_2_VERSION)) {
    fprintf(stderr, "ame load: cannot set up TLS: %s\n",
            ERR_reason_error_string(ERR_get_error()));
    return -1;
  }
  SSL_CTX_set_verify(ld->ssl_ctx, SSL_VERIFY_NONE, NULL);
  unsigned char addr[16];
  if (inet_pton(AF_INET, u->host, addr) != 1 &&
      inet_pton(AF_INET6, u->host, addr) != 1)
    snprintf(ld->sni, sizeof ld->sni, "%s", u->host);
  return 0;
#else
  (void)ld;
  (void)u;
  return -1;
#endif
}

static void free_load(struct load *ld) {
  if (ld->ws)
    for (unsigned w = 0; w < ld->nworkers; w++) hist_free(&ld->ws[w].hist);
  free(ld->ws);
  free(ld->conns);
  free(ld->request);
#ifdef AME_HAVE_OPENSSL
  SSL_CTX_free(ld->ssl_ctx);
  ld->ssl_ctx = NULL;
#endif
}

/* Connect every slot and run the reactor to the end.  Return 0, or print
** why not and return 1. */
static int run(struct load *ld) {
  ame_reactor_config_t cfg = {.workers = ld->nworkers};
  int rc = ame_reactor_new(&ld->r, &cfg);
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot start the reactor: %s\n",
            ame_strerror(rc));
    return 1;
  }
  ld->nworkers = ame_reactor_workers(ld->r);
  ld->ws = aligned_alloc(_Alignof(wstats_t), ld->nworkers * sizeof *ld->ws);
  ld->conns = aligned_alloc(_Alignof(conn_t), ld->nconns * sizeof *ld->conns);
  if (ld->ws) memset(ld->ws, 0, ld->nworkers * sizeof *ld->ws);
  if (ld->conns) memset(ld->conns, 0, ld->nconns * sizeof *ld->conns);
  for (unsigned w = 0; ld->ws && w < ld->nworkers && rc == 0; w++)
    rc = hist_init(&ld->ws[w].hist, HIST_HIGHEST_NS);
  if (ld->ws == NULL || ld->conns == NULL || rc != 0) {
    fprintf(stderr, "ame load: out of memory\n");
    ame_reactor_free(ld->r);
    return 1;
  }
  ld->start_ns = now_ns();
  ld->hk.next_progress_ns = ld->start_ns + 1000000000ull;
  ld->hk.last_ns = ld->start_ns;
  rc = ame_timer_start(ld->r, HK_MS, HK_MS, hk_cb, NULL, NULL);
  if (rc == 0) rc = ame_signal_start(ld->r, SIGINT, signal_cb, NULL, NULL);
  if (rc == 0) rc = ame_signal_start(ld->r, SIGTERM, signal_cb, NULL, NULL);
  for (unsigned i = 0; i < ld->nconns && rc == 0; i++) {
    conn_t *c = &ld->conns[i];
    c->index = i;
    /* --rate: the slots of the connections interleave evenly. */
    c->intended_ns = ld->start_ns + ld->interval_ns / ld->nconns * i;
    rc = reconnect(c);
  }
  if (rc != 0) {
    fprintf(stderr, "ame load: cannot start: %s\n", ame_strerror(rc));
    ame_reactor_free(ld->r);
    return 1;
  }
  rc = ame_reactor_run(ld->r);
  if (rc != 0)
    fprintf(stderr, "ame load: the reactor failed: %s\n", ame_strerror(rc));
  if (ld->end_ns == 0) ld->end_ns = now_ns();
  ame_reactor_free(ld->r);
  return rc != 0;
}

int ame_load_main(int argc, char **argv) {
  enum { OPT_RATE = 256, OPT_TIMEOUT, OPT_JSON, OPT_PROGRESS, OPT_NOPROGRESS,
         OPT_SELFTEST, OPT_BODY_FILE };
  static const struct option opts[] = {
      {"connections", required_argument, NULL, 'c'},
      {"duration", required_argument, NULL, 'd'},
      {"threads", required_argument, NULL, 't'},
      {"rate", required_argument, NULL, 'r'},
      {"timeout", required_argument, NULL, OPT_TIMEOUT},
      {"header", required_argument, NULL, 'H'},
      {"method", required_argument, NULL, 'm'},
      {"body", required_argument, NULL, 'b'},
      {"body-file", required_argument, NULL, OPT_BODY_FILE},
      {"json", no_argument, NULL, OPT_JSON},
      {"progress", no_argument, NULL, OPT_PROGRESS},
      {"no-progress", no_argument, NULL, OPT_NOPROGRESS},
      {"help", no_argument, NULL, 'h'},
      {"selftest-hist", no_argument, NULL, OPT_SELFTEST},
      {NULL, 0, NULL, 0},
  };
  static struct load ld; /* zeroed; `L` points here while running */
  memset(&ld, 0, sizeof ld);
  ld.nconns = 10;
  ld.duration_ns = 10000000000ull;
  ld.timeout_ns = 2000000000ull;
  ld.nworkers = ame_cpu_count();
  if (ld.nworkers > MAX_THREADS) ld.nworkers = MAX_THREADS;
  int progress = -1; /* -1: when stderr is a terminal */
  const char *body = NULL, *body_file = NULL;
  ld.method = "GET";
  char **headers = calloc((size_t)argc + 1, sizeof *headers);
  size_t nheaders = 0;
  if (headers == NULL) {
    fprintf(stderr, "ame load: out of memory\n");
    return 1;
  }
  int ch, status = 0;
  opterr = 0;
  optind = 1;
  while (status == 0 &&
         (ch = getopt_long(argc, argv, ":c:d:t:r:H:m:b:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'c':
      if (parse_uint(optarg, 1, MAX_CONNS, &ld.nconns) != 0)
        status = usage_error("-c wants a number of connections from 1 to "
                             "1000000, not '%s'", optarg);
      break;
    case 'd':
      if (load_parse_duration(optarg, &ld.duration_ns) != 0)
        status = usage_error("-d wants a duration such as 10s, 500ms or 1m, "
                             "not '%s'", optarg);
      break;
    case 't':
      if (parse_uint(optarg, 1, MAX_THREADS, &ld.nworkers) != 0)
        status = usage_error("-t wants a number of threads from 1 to 256, "
                             "not '%s'", optarg);
      break;
    case 'r': {
      char *end;
      errno = 0;
      ld.rate = strtod(optarg, &end);
      if (end == optarg || *end || errno || !isfinite(ld.rate) ||
          ld.rate <= 0 || ld.rate > 1e9)
        status = usage_error("--rate wants requests per second (a positive "
                             "number), not '%s'", optarg);
      break;
    }
    case OPT_TIMEOUT:
      if (load_parse_duration(optarg, &ld.timeout_ns) != 0)
        status = usage_error("--timeout wants a duration such as 2s, not "
                             "'%s'", optarg);
      break;
    case 'H':
      if (strchr(optarg, ':') == NULL || strpbrk(optarg, "\r\n"))
        status = usage_error("-H wants 'Name: value', not '%s'", optarg);
      else
        headers[nheaders++] = optarg;
      break;
    case 'm':
      if (!valid_method(optarg))
        status = usage_error("-m wants a method name such as POST (letters, "
                             "digits, !#$%%&'*+-.^_`|~), not '%s'", optarg);
      else
        ld.method = optarg;
      break;
    case 'b':
      if (body || body_file)
        status = usage_error("%s", "give one body: --body or --body-file, "
                                   "once");
      else if (strlen(optarg) > MAX_BODY)
        status = usage_error("%s", "--body is longer than 64 MiB");
      else
        body = optarg;
      break;
    case OPT_BODY_FILE:
      if (body || body_file)
        status = usage_error("%s", "give one body: --body or --body-file, "
                                   "once");
      else
        body_file = optarg;
      break;
    case OPT_JSON: ld.json = 1; break;
    case OPT_PROGRESS: progress = 1; break;
    case OPT_NOPROGRESS: progress = 0; break;
    case OPT_SELFTEST: {
      int fails = hist_selftest();
      printf("hist selftest: %s\n", fails ? "FAILED" : "ok");
      free(headers);
      return fails ? 1 : 0;
    }
    case 'h':
      usage(stdout);
      free(headers);
      return 0;
    case ':':
      status = usage_error("%s needs a value", argv[optind - 1]);
      break;
    default:
      status = usage_error("unknown option '%s'", argv[optind - 1]);
      break;
    }
  }
  url_t u;
  if (status == 0 && optind != argc - 1)
    status = usage_error("%s", optind >= argc ? "which URL? (ame load URL)"
                                              : "give exactly one URL");
  const char *msg = status == 0 ? parse_url(argv[optind], &u) : NULL;
  if (msg) status = usage_error("%s", msg);
  if (status != 0) {
    free(headers);
    return status;
  }
  for (size_t i = 0; status == 0 && i < nheaders; i++)
    if ((body || body_file) && (header_is(headers[i], "Content-Length") ||
                                header_is(headers[i], "Transfer-Encoding")))
      status = usage_error("-H '%s': ame load sets Content-Length from the "
                           "body", headers[i]);
  if (status != 0) {
    free(headers);
    return status;
  }
  char *file_body = NULL;
  if (body_file) {
    file_body = read_body_file(body_file, &ld.body_len);
    if (file_body == NULL) {
      free(headers);
      return 1;
    }
    body = file_body;
  } else if (body) {
    ld.body_len = strlen(body);
  }
  ld.has_body = body != NULL;
  ld.head = strcmp(ld.method, "HEAD") == 0;
  ld.tls = u.tls;
  if (ld.tls && ld.rate > 0) {
    free(headers);
    free(file_body);
    return usage_error("%s", "--rate is not supported with https:// yet");
  }
  ld.url = argv[optind];
  if (ld.nworkers > ld.nconns) ld.nworkers = ld.nconns;
  if (ld.rate > 0) ld.interval_ns = (uint64_t)(1e9 * ld.nconns / ld.rate);
  ld.tty = isatty(STDERR_FILENO);
  ld.progress = progress < 0 ? ld.tty : progress;
  if (!ld.progress) ld.tty = 0;
  const char *q = strchr(argv[optind], '?');
  ld.request = build_request(&u, u.path ? NULL : q, ld.method, headers,
                             nheaders, body, ld.body_len, ld.has_body,
                             &ld.request_len);
  free(headers);
  free(file_body);
  if (ld.request == NULL) {
    fprintf(stderr, "ame load: out of memory\n");
    return 1;
  }
  if (find_server(&ld, &u) != 0 || raise_fd_limit(ld.nconns) != 0 ||
      (ld.tls && tls_setup(&ld, &u) != 0)) {
    free_load(&ld);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);

  L = &ld;
  int failed = run(&ld);
  if (ld.progress_shown && ld.tty) fputs("\r\033[K", stderr);
  if (failed) {
    free_load(&ld);
    ame_stm_shutdown();
    return 1;
  }

  /* Merge the workers' results. */
  wstats_t *t = aligned_alloc(_Alignof(wstats_t), sizeof *t);
  if (t == NULL || (memset(t, 0, sizeof *t),
                    hist_init(&t->hist, HIST_HIGHEST_NS) != 0)) {
    fprintf(stderr, "ame load: out of memory\n");
    free(t);
    free_load(&ld);
    ame_stm_shutdown();
    return 1;
  }
  for (unsigned w = 0; w < ld.nworkers; w++) {
    const wstats_t *s = &ld.ws[w];
    t->requests += s->requests;
    t->bytes += s->bytes;
    t->abandoned += s->abandoned;
    t->status_other += s->status_other;
    for (int k = 0; k < ERR__COUNT; k++) t->errors[k] += s->errors[k];
    for (unsigned code = 0; code < NSTATUS; code++)
      t->status[code] += s->status[code];
    hist_merge(&t->hist, &s->hist);
  }
  double elapsed = (double)(ld.end_ns - ld.start_ns) / 1e9;
  int rc = 0;
  int v6 = strchr(ld.addr, ':') != NULL;
  if (ld.g.fatal_error) {
    fprintf(stderr, "ame load: cannot connect to %s%s%s:%d: %s\n",
            v6 ? "[" : "", ld.addr, v6 ? "]" : "", ld.port,
            strerror((int)ld.g.fatal_error));
    rc = 1;
  } else if (LOAD_SC(&ld.tls_fatal)) {
    fprintf(stderr, "ame load: no TLS handshake with %s%s%s:%d succeeded: "
            "%s\n", v6 ? "[" : "", ld.addr, v6 ? "]" : "", ld.port,
            ld.tls_error);
    rc = 1;
  } else {
    if (ld.json)
      report_json(&ld, t, elapsed);
    else
      report_text(&ld, t, elapsed);
    fflush(stdout);
    if (t->requests == 0) {
      uint64_t errs = 0;
      for (int k = 0; k < ERR__COUNT; k++) errs += t->errors[k];
      fprintf(stderr, "ame load: no response from %s (%llu socket errors)\n",
              ld.url, (unsigned long long)errs);
      rc = 1;
    }
  }
  hist_free(&t->hist);
  free(t);
  free_load(&ld);
  L = NULL;
  ame_stm_shutdown();
  return rc;
}
