/*
** cmd/run/page.h — the page the supervisor of `ame run` shares with its
** workers: one entry per worker process, written by that worker, read by
** the supervisor (page.c; docs/multicore.md).
**
** The page is a MAP_SHARED anonymous mapping made before Python starts and
** before any fork, so every worker (and a reload's new program, forked from
** the template process made at the same time: reload.c) maps it at the same
** address.  The supervisor hands each worker process an entry of its own
** when it forks it and takes it back when it reaps it; only that worker
** writes the entry meanwhile (ame_page_tick, from the worker's reactor
** loop), and only the supervisor reads it.  So every field has one writer;
** the counters are relaxed atomics, the heartbeat is stored last with
** release order and read first with acquire order, and the text of the
** hottest conflicts is under a sequence lock (its words relaxed atomics,
** so that a read racing a write is a retry, not a data race).
**
** Nothing in here costs the serving path: the worker writes its entry once
** per tick (a reactor timer, at most once a second), and the supervisor
** reads the entries when it wakes (AME_SUP_CHECK_S).
*/
#ifndef AME_CMD_PAGE_H
#define AME_CMD_PAGE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* The counters a worker reports at each tick, in this order. */
#define AME_PAGE_COUNTERS(X)                                              \
  X(requests, "requests served (HTTP requests twisted.web finished)")    \
  X(accepted, "connections accepted")                                     \
  X(open, "connections open")                                             \
  X(callbacks, "reactor callbacks run on the C side")                     \
  X(fd_events, "readiness events delivered to Python")                   \
  X(reads, "recv() calls of the C TCP streams")                           \
  X(sends, "send() calls of the C TCP streams")                           \
  X(python_path, "connections left on Twisted's Python I/O path")        \
  X(stm_commits, "STM commits")                                           \
  X(stm_aborts, "STM aborts")                                             \
  X(bytes_in, "bytes received on TCP connections")                        \
  X(bytes_out, "bytes sent on TCP connections")

enum {
#define AME_PAGE_ENUM(name, help) AME_PAGE_##name,
  AME_PAGE_COUNTERS(AME_PAGE_ENUM)
#undef AME_PAGE_ENUM
  AME_PAGE_NCOUNTERS
};

#define AME_PAGE_TEXT 480 /* bytes of the hottest-conflicts text */

typedef struct ame_page_entry {
  _Atomic uint64_t beat_ns;  /* CLOCK_MONOTONIC ns of the last tick; 0 until
                                the worker's reactor runs (then: ready) */
  _Atomic uint64_t c[AME_PAGE_NCOUNTERS]; /* AME_PAGE_COUNTERS */
  _Atomic uint32_t recycle;  /* the worker reached its request limit */
  _Atomic uint32_t seq;      /* sequence lock over text: odd while written */
  uint64_t max_requests;     /* set by the supervisor before the fork: the
                                worker's request limit (0: none) */
  /* The hottest STM conflicts as text ("" when none), in words so that
  ** the racing reads of the sequence lock are relaxed atomic loads. */
  _Atomic uint64_t text[AME_PAGE_TEXT / 8];
} ame_page_entry_t;

/* Entries: two per worker (a worker and its replacement overlap while a
** reload or a recycling hands over), and some to spare. */
#define AME_PAGE_ENTRIES (2 * 1024 + 64)

/* Map the page.  Return 0, or a negative errno value. */
int ame_page_create(void);

/* The entry i (0 <= i < AME_PAGE_ENTRIES), or NULL when there is no page. */
ame_page_entry_t *ame_page_entry(unsigned i);

/* Supervisor: clear entry i for a new worker process whose request limit
** is max_requests (0: none). */
void ame_page_reset(unsigned i, uint64_t max_requests);

/* Supervisor: a consistent copy of entry i's text into buf (size bytes,
** NUL-terminated). */
void ame_page_text(unsigned i, char *buf, size_t size);

/* ---- in a worker ----------------------------------------------------- */

/* In a new worker process, first thing after the fork (and, for a worker
** forked by a reload's zygote, once the supervisor is its parent):
**   - remember that entry is this worker's (ame_page_tick writes it);
**   - arm the orphan deadline: when the parent dies (PR_SET_PDEATHSIG) the
**     worker is sent SIGTERM (a graceful stop) and a timer it armed itself
**     kills it with SIGKILL deadline_s later, whatever it is doing.
** Return 0, or -1 if the supervisor (supervisor_pid) is already gone. */
int ame_page_worker_setup(unsigned entry, int supervisor_pid,
                          double deadline_s);

/* In a worker: the request limit the supervisor gave it (0: none). */
uint64_t ame_page_max_requests(void);

/* In a worker: record a tick: the counters (n of them, in
** AME_PAGE_COUNTERS order), the conflict text (may be NULL: unchanged),
** the recycle request, and the heartbeat, now.  No-op outside a worker. */
void ame_page_tick(const uint64_t *counters, unsigned n, const char *text,
                   int recycle);

#endif /* AME_CMD_PAGE_H */
