/*
** cmd/load/internal.h — what the files of `ame load` share: the run, a
** connection slot, a worker's results, and the TLS seam (docs/load.md).
**
** The files, in the order data travels.  options.c turns the command line
** into the run's settings (ld_run, below) and builds the request, once.
** load.c finds the server, starts the reactor with its housekeeping timer
** (the deadline, the drain, --timeout, the progress line) and, after the
** run, has report.c merge the workers' results and print them (text or
** --json).  conn.c is a connection slot: the callbacks of its reactor
** streams, the response parser (http-parser) and --rate's schedule.
** https:// goes through the TLS seam at the end of this file, implemented
** by tls_openssl.c where the build finds OpenSSL and by tls_none.c, which
** refuses https:// on the command line, where it does not.  hist.c is the
** latency histogram (hist.h).  Names shared between the files start with
** ld_ (LD_ for macros); everything else is static to its file.
**
** Shape of a run.  The URL is resolved once (getaddrinfo) and the first
** address that accepts a test connection is used.  A reactor with -t
** workers runs -c connections, spread over the workers by the reactor
** (ame_tcp_connect gives each new stream to the worker with the fewest).
** https:// adds TLS under the same loop (tls_openssl.c).  Each connection
** sends one request (GET unless -m says otherwise, with the --body if one
** is given; built once, keep-alive), parses the response with
** http-parser, records the latency and sends the next one (closed loop),
** or, with --rate, waits for its next slot in a fixed schedule (open loop,
** see below).  A housekeeping timer every 10 ms ends the run at the
** deadline, aborts requests older than --timeout and prints the progress
** line.  At the deadline no new request is sent and the run waits (at
** most --timeout) for the responses in flight, so every request the
** server answered is counted; then ame_reactor_stop().
**
** State and the STM.  Every callback is a transaction, and one that
** conflicts is re-run, so what a callback changes must be undone by an
** abort.  The hot path touches no STM word at all:
**   - Results are per worker (ld_stats_t: counters, status codes, the
**     latency histogram), changed only by callbacks of streams on that
**     worker, merged after the run.  A callback undo-logs (ame_tx_save) the
**     words it is about to change, so a re-run starts from the same state.
**   - A connection slot's parser state (ld_conn_t's first part) belongs to
**     its current stream, whose callbacks run one at a time on its worker;
**     it is undo-logged the same way.
**   - What timers on other workers need of a slot is shared: the stream
**     pointer and its generation are STM words (written at open and close
**     only), so a timer that finds the stream also keeps its memory alive
**     (the reactor frees handles through the STM's deferred free).  The
**     time the request in flight was written is a plain atomic, written
**     before the draining flag is read (and the deadline sets that flag
**     before reading the times), so the two sides cannot both miss.  A
**     --rate timer publishes it only once its transaction has committed
**     (an aborted attempt's time was seen by on_close as a request in
**     flight), and takes it back if the stream's on_close committed
**     first (closed_epoch, set before on_close's commit clears the time).
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
#ifndef AME_CMD_LOAD_INTERNAL_H
#define AME_CMD_LOAD_INTERNAL_H

#include "hist.h"

#include <ame/reactor.h>

#include <http_parser.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define LD_HIST_HIGHEST_NS (60ull * 1000000000ull) /* latencies up to 60 s */
#define LD_NSTATUS 600 /* status codes 0..599 counted one by one */

#define LD_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LD_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define LD_LOAD_SC(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define LD_STORE_SC(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

/* Socket errors by kind (their names: report.c). */
enum { LD_ERR_CONNECT, LD_ERR_READ, LD_ERR_WRITE, LD_ERR_TIMEOUT,
       LD_ERR_PARSE, LD_ERR_TLS, LD_ERR__COUNT };

/* One worker's results.  Changed only by callbacks running on that worker;
** the counters before `status` are also read (atomically) by the progress
** line. */
typedef struct ld_stats {
  _Alignas(64) uint64_t requests;  /* responses completed */
  uint64_t errors[LD_ERR__COUNT];  /* socket errors by kind */
  uint64_t bytes;                  /* bytes read */
  uint64_t abandoned;              /* requests in flight at the final stop */
  uint64_t status[LD_NSTATUS];     /* responses by status code */
  uint64_t status_other;           /* ... with a code of 600 or more */
  hist_t hist;                     /* latencies (ns) */
} ld_stats_t;
#define LD_STATS_COUNTERS_SIZE offsetof(ld_stats_t, status)

struct ld_tls; /* one stream's TLS state (tls_openssl.c) */

/* A connection slot.  It outlives its streams: after a close the slot
** connects again with a new stream.  Slots are cache-line aligned: the
** reactor puts neighbours on different workers. */
typedef struct ld_conn {
  /* Owned by the current stream's callbacks (one at a time, on its
  ** worker), which undo-log this part before changing it. */
  _Alignas(64) http_parser parser; /* the response being read */
  ame_tx_t *tx;         /* the callback running now (for the parser's) */
  ld_stats_t *ws;       /* its worker's results */
  uint64_t intended_ns; /* --rate: when the current request is due */
  uint32_t epoch;       /* the current stream's generation (= epoch_w) */
  int open;             /* the current stream reached on_open */
  int attempted;        /* a connect of this slot has ended before */
  int completed;        /* a response completed in this callback */
  int keep_alive;       /* ... and the server keeps the connection */
  int bad;              /* a parser callback failed: 1 protocol, <0 errno */
  struct ld_tls *tls;   /* https: the current stream's TLS state */
  /* Shared with timers, which may run on any worker. */
  uintptr_t stream_w;      /* STM word: the open stream, or 0 */
  uintptr_t epoch_w;       /* STM word: bumped when a stream closes */
  uint64_t inflight_since; /* atomic: when the request in flight was
                              written (ns), 0 when there is none */
  uint64_t timed_out;      /* atomic: epoch+1 of a stream the housekeeper
                              aborted for a timeout */
  uint64_t closed_epoch;   /* atomic: the epoch after the last stream
                              whose on_close committed (0: none yet) */
  uint64_t timeout_epoch;  /* the housekeeper's: what it will store there */
  unsigned index;          /* immutable: this slot's number */
} ld_conn_t;
#define LD_CONN_OWNED_SIZE offsetof(ld_conn_t, stream_w)

/* The run.  One per process: ld_run, which every file reads. */
typedef struct ld_run {
  /* Settings (options.c, then load.c), immutable while the reactor runs. */
  const char *url;
  char host[256];              /* the URL's host, without brackets */
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
  /* https: the outcome, set by the TLS code. */
  int tls_fatal;               /* atomic: every first handshake failed */
  char tls_error[256];         /* the first TLS error (set once) */
  ame_reactor_t *r;
  ld_conn_t *conns;
  ld_stats_t *ws;              /* one per worker */
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
} ld_run_t;

extern ld_run_t ld_run; /* load.c */

static inline uint64_t ld_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Add n to a counter that only the calling worker writes. */
static inline void ld_bump(uint64_t *p, uint64_t n) {
  LD_STORE(p, LD_LOAD(p) + n);
}

/* Nothing in flight on c. */
static inline void ld_set_idle(ld_conn_t *c) {
  LD_STORE_SC(&c->inflight_since, 0);
}

/* ------------------------------------------------------------------------
** options.c: the command line.
*/

/* Parse argv (argv[0] = "load") into ld, which is zeroed, and build the
** request (ld->request, the caller's to free).  Return -1 if the run
** should go ahead; otherwise what ame_load_main() returns at once: 0
** after --help or a passing --selftest-hist, 2 after a usage error (one
** message on stderr), 1 when --body-file cannot be read or memory runs
** out. */
int ld_options(ld_run_t *ld, int argc, char **argv);

/* ------------------------------------------------------------------------
** conn.c: a connection slot.
*/

/* Connect slot c (again): a new stream whose callbacks are conn.c's.
** Inside a transaction the connect happens at commit.  Return 0 or a
** negative errno. */
int ld_reconnect(ld_conn_t *c);

/* Write the request on s (c's stream, ws its worker's results) now,
** unless the run is draining (then close s).  A write that fails counts a
** write error and aborts s.  Return 0. */
int ld_send_now(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws,
                uint64_t now);

/* Response bytes for c (on stream s, worker results ws): parse them,
** record what completed, and send the next request.  tx is the callback's
** transaction, or NULL after it (https: the TLS code's commit handlers).
** Return 0, 1 if s is being closed (read nothing more from it), or
** -errno. */
int ld_plain_data(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                  ld_stats_t *ws, const char *data, size_t len);

/* The end of c's response bytes (on stream s, worker results ws): the
** server closed (plain EOF, or TLS close_notify).  A response whose body
** runs to the close completes and is recorded; then s is closed.  tx as
** for ld_plain_data().  Return 0 or -errno. */
int ld_plain_eof(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                 ld_stats_t *ws);

/* ------------------------------------------------------------------------
** load.c: the end of the run.
*/

/* Note that the run is stopping (once: ld_run.stopped and end_ns).  A
** commit handler (arg unused); the TLS code also calls it directly, just
** before ame_reactor_stop(). */
void ld_stop_commit(void *arg);

/* Stop the reactor when tx commits. */
void ld_begin_stop(ame_tx_t *tx);

/* ------------------------------------------------------------------------
** report.c: the results.
*/

/* Merge the workers' results and print them (text, or JSON with --json)
** on stdout; or, when the run ended for want of a server, say why in one
** line on stderr.  Return the exit status: 0 when responses came back, 1
** when none did (the reason on stderr) or memory ran out. */
int ld_report(const ld_run_t *ld);

/* ------------------------------------------------------------------------
** The TLS seam: https:// for conn.c and load.c, which know nothing of the
** library behind it.  tls_openssl.c implements it with OpenSSL; in a build
** without OpenSSL, tls_none.c makes ld_tls_unsupported() say so, the
** command line refuses https://, and nothing else here is ever called.
** The per-stream functions are called only for a run with ld_run.tls set.
*/

/* NULL if this build speaks TLS; else why not (a usage error's text). */
const char *ld_tls_unsupported(void);

/* Set up the client for ld (ld->host gives the server name to send).
** Return 0, or print why not on stderr and return -1. */
int ld_tls_setup(const ld_run_t *ld);

/* Free what ld_tls_setup() made (nothing if it was not called). */
void ld_tls_free(void);

/* In on_open (tx) of c's new stream: after tx commits, start the TLS
** handshake; the first request goes out when it completes.  Return 0 or
** -ENOMEM. */
int ld_tls_open(ame_tx_t *tx, ld_conn_t *c);

/* In on_data (tx): bytes received on c's stream s.  They are decrypted
** after tx commits and the plaintext goes to ld_plain_data() (with no
** transaction).  Return 0 or -ENOMEM. */
int ld_tls_data(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                const char *data, size_t len);

/* Write the request on s, encrypted.  Return 0 or a negative errno. */
int ld_tls_write_request(ld_conn_t *c, ame_stream_t *s);

/* In on_close (tx): free t once tx commits.  Return 0 or -ENOMEM. */
int ld_tls_release(ame_tx_t *tx, struct ld_tls *t);

/* In on_close, for a stream with a request in flight that closed before
** the stop: if t's handshake had not completed, remember why the stream
** was lost (timed_out: the housekeeper aborted it; else the server closed
** it), to count as a failed handshake once t is freed, and return 1;
** else return 0. */
int ld_tls_lost(struct ld_tls *t, int timed_out);

#endif /* AME_CMD_LOAD_INTERNAL_H */
