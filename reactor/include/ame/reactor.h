/*
** ame/reactor.h — the ame reactor: libuv event loops on a pool of worker
** threads, every callback a transaction of ame's STM (ame/stm.h).
**
** The model.  A program is a set of callbacks.  The reactor runs N workers
** (threads), each driving its own libuv loop.  Every callback it calls runs
** as one STM transaction on the calling worker: it may read and write shared
** data through the STM (ame_load_*_tx / ame_store_*_tx) and is re-run if it
** conflicts with a callback on another worker.  The irreversible effects it
** asks for — writes, closes, shutdowns, timers started or cancelled,
** listens, connects, spawns, kills, wakeups — are carried out only when it
** commits, exactly once, in the order asked; an aborted attempt leaves no
** trace.
** Called outside any transaction (program setup, other threads), the same
** functions act at once.
**
** Ordering.  A stream (connection) belongs to one worker for its life; its
** callbacks never run concurrently and always in event order: on_open,
** on_data..., on_eof, on_close.  The callbacks of one worker's timers run in
** deadline order, ties in the order started.  Calls posted with
** ame_reactor_call() run in the order posted.  Tasks (ame_reactor_task) have
** no order.  Whatever the interleaving, the outcome is that of some serial
** order of the committed callbacks consistent with these.
**
** Load balance.  New connections go to the worker with the fewest open
** streams (or, with AME_TCP_REUSEPORT, each worker accepts on its own
** socket).  Work not bound to a stream — timer callbacks, posted calls,
** tasks — is taken by an idle worker from a busy one.
**
** Ownership.  Handles (streams, listeners, timers, UDP sockets, processes,
** polls, signals) are allocated and owned by the reactor.  A handle stays
** valid until its on_close callback (streams), its on_exit callback and
** the on_close of each of its stdio streams (processes), or its cancel /
** stop has taken effect; the pointer must not be used after that.  Each
** handle carries a user pointer (ame_handle_data / ame_handle_set_data).
**
** Errors are negative errno values (libuv's UV_E* are the same numbers on
** Linux).  A call that takes a callback and fails never calls it.  A
** callback returns 0, or a negative error to say it failed: the reactor
** logs the failure with its cause, closes the stream (if any) and goes on.
**
** Stopped.  Once ame_reactor_stop() has taken effect (at once outside a
** transaction, at commit inside one), and for good (a reactor runs once),
** every call that makes a handle or a request (listens, adopts, connects,
** timers, UDP sockets, signals, watches, resolves, spawns), as well as
** ame_reactor_call() and ame_reactor_task(), returns -ESHUTDOWN and makes
** nothing: from the callbacks the stop still runs (on_close, ...), after
** ame_reactor_run() has returned, before it runs if stopped first.  A
** call on another thread that races with the stop may still succeed; what
** it made is then closed by the stop like the rest (a stream's on_close,
** a child's on_exit get -ESHUTDOWN).
**
** Thread safety: ame_reactor_call(), ame_reactor_stop() and
** ame_reactor_task() may be called from any thread; everything else from a
** worker (inside callbacks) or from the thread that created the reactor
** before ame_reactor_run() or after it returned.
*/
#ifndef AME_REACTOR_H
#define AME_REACTOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <netdb.h>
#include <sys/socket.h>

#include "ame/stm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* libame-reactor is built with hidden symbols: what this header declares
** is its whole exported interface (as AME_EXTERN is for libame). */
#if defined(AME_BUILDING_REACTOR)
#define AME_REACTOR_EXTERN __attribute__((visibility("default")))
#else
#define AME_REACTOR_EXTERN
#endif

/* <netdb.h> defines it only when POSIX features are on (a program built
** with -std=c11 alone has none); ame_resolve() needs the tag in scope. */
struct addrinfo;

typedef struct ame_reactor ame_reactor_t;
typedef struct ame_handle ame_handle_t;   /* any handle */
typedef struct ame_stream ame_stream_t;   /* TCP or Unix stream, or pipe */
typedef struct ame_listener ame_listener_t;
typedef struct ame_timer ame_timer_t;
typedef struct ame_udp ame_udp_t;
typedef struct ame_process ame_process_t;
typedef struct ame_poll ame_poll_t;
typedef struct ame_signal ame_signal_t;

/* ------------------------------------------------------------------------
** The reactor.
*/

typedef struct ame_reactor_config {
  unsigned workers;         /* worker threads (0: ame_cpu_count()) */
  size_t high_watermark;    /* bytes queued for writing on one stream above
                               which its reading pauses (0: 1 MiB) */
  size_t low_watermark;     /* ... below which reading resumes (0: 256 KiB) */
  unsigned drain_timeout_ms;/* graceful stop: longest wait for writes to
                               flush; a close's longest linger (0: 5000) */
  int report_on_stop;       /* write the STM conflict report at stop */
  FILE *log;                /* where failures are logged (NULL: stderr) */
  /* Called by each worker, on its thread and outside any transaction,
  ** when it has run what was ready and is about to poll for more: the
  ** place to publish, once per loop iteration, what its callbacks
  ** gathered (the Python binding wakes its Python thread here, once for a
  ** whole batch of connections).  It returns nonzero to make this poll
  ** not block (the worker polls what is ready and comes back at once: the
  ** binding's wait(0) uses it to have the worker take every event the
  ** kernel has reported).  NULL: none. */
  int (*before_poll)(void *arg);
  void *before_poll_arg;
} ame_reactor_config_t;

/* Create a reactor.  Return 0 and set *out, or -ENOMEM / -EINVAL / a libuv
** error.  Registers nothing with the STM until it runs. */
AME_REACTOR_EXTERN int ame_reactor_new(ame_reactor_t **out,
                                       const ame_reactor_config_t *cfg);

/* Run the workers until ame_reactor_stop() has completed.  The calling
** thread becomes worker 0.  Return 0 or a negative error. */
AME_REACTOR_EXTERN int ame_reactor_run(ame_reactor_t *r);

/* Embedding: run a one-worker reactor from a loop of the caller's own,
** instead of ame_reactor_run() (the Python binding's wait() does, in
** processes that should have one thread: libuv's uv_backend_fd pattern).
**
** ame_reactor_attach(r) makes the calling thread r's worker: it registers
** it with the STM and blocks SIGPIPE on it (as on every worker; restored
** when the reactor has stopped).  From then on, ops that thread asks for
** between steps (ame_poll_change, ame_stream_write, ...) run at once, as
** from a callback.  r must have exactly one worker and not be running.
** Return 0, -EINVAL (not one worker) or -EALREADY (running or attached).
**
** ame_reactor_step(r, &timeout_ms), on the attached thread, runs one loop
** iteration without blocking: the callbacks of whatever is ready (I/O,
** expired timers, posted calls, jobs, before_poll).  It sets *timeout_ms
** to how long the caller may block before the next step (-1: until
** ame_reactor_fd(r) is readable; 0: step again at once).  It returns 1
** while the reactor runs, and 0 once it has stopped (ame_reactor_stop()
** has completed: the thread is detached and r may be freed), or -EINVAL
** off the attached thread.
**
** ame_reactor_fd(r) is readable when a step has work (libuv's backend
** fd): poll it, with the caller's own fds, for at most the timeout.
** ame_reactor_free() of an attached reactor that has not stopped stops it
** and steps it to the end first (on the attached thread). */
AME_REACTOR_EXTERN int ame_reactor_attach(ame_reactor_t *r);
AME_REACTOR_EXTERN int ame_reactor_step(ame_reactor_t *r, int *timeout_ms);
AME_REACTOR_EXTERN int ame_reactor_fd(const ame_reactor_t *r);

/* Stop gracefully: stop accepting, let running callbacks finish, flush
** queued writes and close streams as ame_stream_close() does (lingering;
** up to drain_timeout_ms in all: then a stream that has not flushed is
** reset, with on_close -ETIMEDOUT), close every handle (calling the
** on_close callbacks), then make ame_reactor_run() return.  Posted calls,
** tasks and timer callbacks that have not started by then are dropped.
** Thread-safe and idempotent.  Inside a transaction, it takes effect at
** commit. */
AME_REACTOR_EXTERN void ame_reactor_stop(ame_reactor_t *r);

/* Free a reactor that is not running.  Handles still open are closed
** without callbacks. */
AME_REACTOR_EXTERN void ame_reactor_free(ame_reactor_t *r);

/* The number of workers, and the index of the calling worker (or -1 if the
** calling thread is not one of r's workers). */
AME_REACTOR_EXTERN unsigned ame_reactor_workers(const ame_reactor_t *r);
AME_REACTOR_EXTERN int ame_reactor_current_worker(const ame_reactor_t *r);

/* Milliseconds on the calling worker's loop clock (monotonic). */
AME_REACTOR_EXTERN uint64_t ame_reactor_now(ame_reactor_t *r);

/* Run fn(tx, arg) as a transaction on a worker, after the calls posted
** before it from the same thread.  Safe from any thread (this is the
** "call from another thread" entry).  Inside a transaction the post happens
** at commit.  Return 0 or -ENOMEM, or -ESHUTDOWN once stopping. */
typedef int (*ame_call_fn)(ame_tx_t *tx, void *arg);
AME_REACTOR_EXTERN int ame_reactor_call(ame_reactor_t *r, ame_call_fn fn,
                                        void *arg);

/* Add a task: fn(tx, arg) runs as a transaction on whichever worker is
** free, in no particular order (the thread-less task API on the reactor's
** pool).  Inside a transaction, added at commit.  Return 0, -ENOMEM or
** -ESHUTDOWN. */
AME_REACTOR_EXTERN int ame_reactor_task(ame_reactor_t *r, ame_call_fn fn,
                                        void *arg);

/* Per-reactor counters. */
typedef struct ame_reactor_stats {
  uint64_t callbacks;      /* callbacks committed */
  uint64_t failures;       /* callbacks that returned an error */
  uint64_t stolen;         /* jobs run by a worker other than their own */
  uint64_t accepted;       /* connections accepted */
  uint64_t accept_errors;  /* accept() failures (EMFILE, ...) */
  uint64_t streams_open;   /* streams open now */
  uint64_t per_worker_callbacks[64]; /* callbacks per worker (first 64) */
} ame_reactor_stats_t;
AME_REACTOR_EXTERN void ame_reactor_stats(const ame_reactor_t *r,
                                          ame_reactor_stats_t *out);

/* Write the reactor's counters and the STM conflict report (hot words,
** callback sites) to f. */
AME_REACTOR_EXTERN void ame_reactor_report(ame_reactor_t *r, FILE *f);

/* ------------------------------------------------------------------------
** Handles.
*/

AME_REACTOR_EXTERN void *ame_handle_data(const void *handle);
AME_REACTOR_EXTERN void ame_handle_set_data(void *handle, void *data);

/* Name a handle's callbacks in conflict reports (a string literal). */
AME_REACTOR_EXTERN void ame_handle_set_name(void *handle, const char *name);

/* ------------------------------------------------------------------------
** Streams: TCP (IPv4/IPv6), Unix stream sockets, process pipes.
*/

typedef struct ame_stream_cbs {
  /* The stream is open (accepted, or connected). */
  int (*on_open)(ame_tx_t *tx, ame_stream_t *s);
  /* Bytes arrived.  data is valid during the call only. */
  int (*on_data)(ame_tx_t *tx, ame_stream_t *s, const char *data,
                 size_t len);
  /* The peer closed its writing side.  NULL: close the stream. */
  int (*on_eof)(ame_tx_t *tx, ame_stream_t *s);
  /* The queued writes fell below the low watermark after going over the
  ** high one (a producer may resume). */
  int (*on_drain)(ame_tx_t *tx, ame_stream_t *s);
  /* The stream is closed and about to be freed: status 0 after a close
  ** asked for or the peer's EOF, else the error (-ECONNRESET,
  ** -ECONNREFUSED for a connect that failed, ...).  Called exactly once
  ** for every stream that was handed to the program. */
  void (*on_close)(ame_tx_t *tx, ame_stream_t *s, int status);
} ame_stream_cbs_t;

/* Queue len bytes (copied) for writing.  Return 0, -ENOMEM, or -EPIPE if
** the stream is already closed and gone (a transaction that found it in
** shared data after its on_close committed; that attempt will abort).
** Bytes written to a stream that is closing are dropped when the write
** reaches it. */
AME_REACTOR_EXTERN int ame_stream_write(ame_stream_t *s, const void *data,
                                        size_t len);

/* Close after the queued writes are flushed (Twisted's loseConnection).
** The close lingers, so that the peer gets every byte and then an EOF,
** not a reset (which a socket closed with unread input sends, and which
** throws away what the peer has not received): once flushed, the stream
** shuts down its writing side and reads on, discarding what arrives (no
** on_data, no on_eof), until the peer's EOF, or until the peer has
** acknowledged every byte and no input waits, or for drain_timeout_ms at
** most; then it closes, and on_close gets 0 (or the error the socket met
** meanwhile).  A write that reaches a lingering stream is dropped. */
AME_REACTOR_EXTERN void ame_stream_close(ame_stream_t *s);

/* Close at once, dropping queued writes (abortConnection; TCP sends RST). */
AME_REACTOR_EXTERN void ame_stream_abort(ame_stream_t *s);

/* Shut down the writing side once the queued writes are flushed. */
AME_REACTOR_EXTERN void ame_stream_shutdown(ame_stream_t *s);

/* Stop and restart reading (flow control by the program). */
AME_REACTOR_EXTERN void ame_stream_pause(ame_stream_t *s);
AME_REACTOR_EXTERN void ame_stream_resume(ame_stream_t *s);

/* Bytes queued for writing and not yet sent (as of the last commit). */
AME_REACTOR_EXTERN size_t ame_stream_write_queue(const ame_stream_t *s);

/* Set this stream's watermarks (0 keeps the current one: the reactor's
** unless set before).  Inside a transaction they are set at commit, in
** order with the stream's other effects (a write asked for after them
** is measured against them), and not at all by an attempt that aborts. */
AME_REACTOR_EXTERN void ame_stream_set_watermarks(ame_stream_t *s, size_t high,
                                                  size_t low);

/* The socket's file descriptor, its addresses (return 0 or -errno).  Once
** the stream has closed its descriptor (in on_close, and after), -1 and
** -EBADF: never another socket's that got the same number. */
AME_REACTOR_EXTERN int ame_stream_fd(const ame_stream_t *s);
AME_REACTOR_EXTERN int ame_stream_peername(const ame_stream_t *s,
                                           struct sockaddr_storage *sa);
AME_REACTOR_EXTERN int ame_stream_sockname(const ame_stream_t *s,
                                           struct sockaddr_storage *sa);

/* The worker the stream belongs to. */
AME_REACTOR_EXTERN unsigned ame_stream_worker(const ame_stream_t *s);

/* TCP_NODELAY and keep-alive (0 or -errno; applied at commit in a tx). */
AME_REACTOR_EXTERN int ame_stream_nodelay(ame_stream_t *s, int on);

/* Listen flags. */
enum {
  AME_TCP_REUSEPORT = 1, /* one socket per worker, SO_REUSEPORT */
  AME_TCP_IPV6ONLY = 2,  /* an IPv6 listener takes no IPv4 */
};

/* Listen on host:port (numeric IPv4 or IPv6 address; port 0 picks one).
** Each accepted stream gets cbs and data.  The socket is bound at once, so
** errors (-EADDRINUSE, -EACCES, -EINVAL) are returned here; accepting starts
** at commit inside a transaction (an abort closes the socket).  Return 0 and
** set *out. */
AME_REACTOR_EXTERN int ame_tcp_listen(ame_reactor_t *r, const char *host,
                                      int port, int flags, int backlog,
                                      const ame_stream_cbs_t *cbs, void *data,
                                      ame_listener_t **out);

/* Listen on a Unix socket path (an existing socket file is an error). */
AME_REACTOR_EXTERN int ame_unix_listen(ame_reactor_t *r, const char *path,
                                       int backlog, const ame_stream_cbs_t *cbs,
                                       void *data, ame_listener_t **out);

/* Adopt an already listening socket (IReactorSocket.adoptStreamPort).  fd
** stays the caller's: the listener works on a duplicate of it (close fd
** after adopting to hold one descriptor).  Its connections take one
** descriptor each. */
AME_REACTOR_EXTERN int ame_listen_fd(ame_reactor_t *r, int fd,
                                     const ame_stream_cbs_t *cbs, void *data,
                                     ame_listener_t **out);

/* The bound port / address of a listener. */
AME_REACTOR_EXTERN int ame_listener_port(const ame_listener_t *l);
AME_REACTOR_EXTERN int ame_listener_sockname(const ame_listener_t *l,
                                             struct sockaddr_storage *sa);

/* Stop listening and close the socket (at commit in a transaction).  The
** pointer is invalid afterwards. */
AME_REACTOR_EXTERN void ame_listener_close(ame_listener_t *l);

/* Connect to host:port (numeric address) or a Unix path.  The stream is
** returned at once; on_open runs when connected, or on_close with the
** error.  Return 0 or -EINVAL / -ENOMEM / -ESHUTDOWN (then no
** callback). */
AME_REACTOR_EXTERN int ame_tcp_connect(ame_reactor_t *r, const char *host,
                                       int port, const ame_stream_cbs_t *cbs,
                                       void *data, ame_stream_t **out);
AME_REACTOR_EXTERN int ame_unix_connect(ame_reactor_t *r, const char *path,
                                        const ame_stream_cbs_t *cbs, void *data,
                                        ame_stream_t **out);

/* Adopt a connected socket (IReactorSocket.adoptStreamConnection).  fd
** stays the caller's, as for ame_listen_fd: the stream works on a
** duplicate (libuv's handle owns and closes its fd); close fd after
** adopting to hold one descriptor per connection. */
AME_REACTOR_EXTERN int ame_stream_adopt(ame_reactor_t *r, int fd,
                                        const ame_stream_cbs_t *cbs, void *data,
                                        ame_stream_t **out);

/* ------------------------------------------------------------------------
** Timers.
*/

typedef int (*ame_timer_cb)(ame_tx_t *tx, ame_timer_t *t);

/* Call cb after timeout_ms, then every repeat_ms if repeat_ms > 0.  The
** timer belongs to the calling worker (worker 0 from outside).  Return 0
** and set *out (may be NULL), or -ENOMEM, or -ESHUTDOWN once stopping.
**
** Its memory: a timer whose pointer was asked for (out not NULL) is freed
** once ame_timer_cancel() has taken effect — fired or not, a one-shot
** too — or at the reactor's stop: a program that keeps *out cancels the
** timer when it no longer needs it, so that its pointer stays valid (and
** the cancel can answer -ENOENT) after a one-shot fired.  Without out, a
** one-shot timer is freed after its callback commits, a repeating one at
** the stop. */
AME_REACTOR_EXTERN int ame_timer_start(ame_reactor_t *r, uint64_t timeout_ms,
                                       uint64_t repeat_ms, ame_timer_cb cb,
                                       void *data, ame_timer_t **out);

/* Cancel a timer that has not fired (or a repeating one), and give its
** pointer back: it must not be used once the cancel has taken effect.
** Return 0, or -ENOENT if it already fired (a one-shot) or was cancelled.
** Inside a transaction the cancel takes effect at commit: -ENOENT if the
** timer had already fired or been cancelled when called, else 0 (and if
** it fires before the commit, its callback still runs). */
AME_REACTOR_EXTERN int ame_timer_cancel(ame_timer_t *t);

/* ------------------------------------------------------------------------
** UDP.
*/

typedef int (*ame_udp_recv_cb)(ame_tx_t *tx, ame_udp_t *u, const char *data,
                               size_t len, const struct sockaddr *from);

/* Bind a UDP socket (numeric host, port 0 picks one).  Return 0 or -errno. */
AME_REACTOR_EXTERN int ame_udp_bind(ame_reactor_t *r, const char *host,
                                    int port, int flags, ame_udp_recv_cb cb,
                                    void *data, ame_udp_t **out);
AME_REACTOR_EXTERN int ame_udp_send(ame_udp_t *u, const struct sockaddr *to,
                                    const void *data, size_t len);
AME_REACTOR_EXTERN int ame_udp_port(const ame_udp_t *u);
AME_REACTOR_EXTERN int ame_udp_fd(const ame_udp_t *u);
/* Join or leave a multicast group (interface may be NULL: any).  Return 0
** or -errno: -EINVAL for a group or interface that is no address, else
** setsockopt's (-EADDRINUSE: already joined, -EADDRNOTAVAIL: not a
** member, ...).  Inside a transaction the change is made at commit, on
** the socket's worker, in order with its sends, and not at all by an
** attempt that aborts: the call checks the addresses and returns 0, and a
** failure at commit is logged. */
AME_REACTOR_EXTERN int ame_udp_membership(ame_udp_t *u, const char *group,
                                          const char *iface, int join);
AME_REACTOR_EXTERN void ame_udp_close(ame_udp_t *u);

/* ------------------------------------------------------------------------
** Signals, DNS, watching file descriptors.
*/

/* Call cb, as a transaction on worker 0, each time the process receives
** signum (1-64); ame_signal_stop() ends that.  Outside a transaction
** before the reactor runs (or on worker 0) the signal is caught when this
** returns, and one that arrives before the loops run is delivered once
** they do: a server may say it is ready right after.  Inside a
** transaction it is caught once worker 0 has taken the commit's op.
** A signal that cannot be caught (SIGKILL, SIGSTOP) is -EINVAL, at once
** where the watcher starts at once, in the log otherwise. */
typedef int (*ame_signal_cb)(ame_tx_t *tx, ame_signal_t *s, int signum);
AME_REACTOR_EXTERN int ame_signal_start(ame_reactor_t *r, int signum,
                                        ame_signal_cb cb, void *data,
                                        ame_signal_t **out);
AME_REACTOR_EXTERN void ame_signal_stop(ame_signal_t *s);

/* Resolve host/service (libuv's getaddrinfo on its thread pool); cb gets
** the list (freed after cb returns) and status 0, or NULL and a negative
** errno value, as every error here (never getaddrinfo's EAI_* codes, nor
** libuv's UV_EAI_*): -ENOENT the name or the service does not exist, or
** has no address (of the family asked for) (EAI_NONAME, EAI_NODATA,
** EAI_ADDRFAMILY, EAI_SERVICE); -EAGAIN a temporary failure, such as no
** answer from the name server (EAI_AGAIN); -EIO a permanent one
** (EAI_FAIL); -ENOMEM; -EAFNOSUPPORT, -ESOCKTNOSUPPORT, -EPROTONOSUPPORT,
** -EINVAL for hints that getaddrinfo refuses (EAI_FAMILY, EAI_SOCKTYPE,
** EAI_PROTOCOL, EAI_BADFLAGS); any other errno getaddrinfo met (EAI_SYSTEM).
** Return 0, or -EINVAL / -ENOMEM / -ESHUTDOWN (then no callback). */
typedef int (*ame_resolve_cb)(ame_tx_t *tx, int status,
                              const struct addrinfo *res, void *data);
AME_REACTOR_EXTERN int ame_resolve(ame_reactor_t *r, const char *host,
                                   const char *service,
                                   const struct addrinfo *hints,
                                   ame_resolve_cb cb, void *data);

enum { AME_READABLE = 1, AME_WRITABLE = 2, AME_DISCONNECT = 4 };
typedef int (*ame_poll_cb)(ame_tx_t *tx, ame_poll_t *p, int status,
                           int events);
/* Watch fd (not owned) for events; cb runs on the owning worker.  A
** regular file or directory is refused (-EPERM), a closed fd too (-EBADF).
** As with uv_poll, the fd is made non-blocking, and after an error
** (EPOLLERR) the watch stops and cb gets a negative status and no events.
** Remove a watch before closing its fd. */
AME_REACTOR_EXTERN int ame_poll_start(ame_reactor_t *r, int fd, int events,
                                      ame_poll_cb cb, void *data,
                                      ame_poll_t **out);
AME_REACTOR_EXTERN int ame_poll_change(ame_poll_t *p, int events);
AME_REACTOR_EXTERN void ame_poll_stop(ame_poll_t *p);

/* ------------------------------------------------------------------------
** Child processes.
*/

typedef struct ame_process_options {
  const char *file;          /* program (PATH is searched) */
  char **args;               /* argv, NULL-terminated */
  char **env;                /* NULL: inherit */
  const char *cwd;           /* NULL: inherit */
  int pipe_stdin;            /* give the child a stdin pipe (else /dev/null) */
  const ame_stream_cbs_t *stdout_cbs; /* NULL: inherit stdout */
  const ame_stream_cbs_t *stderr_cbs; /* NULL: inherit stderr */
  int (*on_exit)(ame_tx_t *tx, ame_process_t *p, int64_t status,
                 int term_signal);
  void *data;
} ame_process_options_t;

/* Start a child.  Return 0 and set *out, or -errno with no callback:
** -ENOENT (no such program), -EMFILE / -ENFILE (no descriptor left for
** its stdio pipes, or for the spawn itself), -ENOMEM, ....  Inside a
** transaction the child starts at commit, and a failure to start shows as
** on_exit with status -errno (the same values). */
AME_REACTOR_EXTERN int ame_spawn(ame_reactor_t *r,
                                 const ame_process_options_t *opts,
                                 ame_process_t **out);
AME_REACTOR_EXTERN int ame_process_pid(const ame_process_t *p);
/* The child's stdin (NULL without pipe_stdin), stdout and stderr streams. */
AME_REACTOR_EXTERN ame_stream_t *ame_process_stdio(ame_process_t *p, int fd);
/* Send signum to the child.  Return 0, -EINVAL, or -ESRCH if it has not
** started or has exited; outside a transaction, uv_kill's error.  Inside a
** transaction the signal is sent at commit, once, on the child's worker
** (nothing if the child exited meanwhile); an attempt that aborts sends
** nothing. */
AME_REACTOR_EXTERN int ame_process_kill(ame_process_t *p, int signum);

#ifdef __cplusplus
}
#endif
#endif /* AME_REACTOR_H */
