/*
** cmd/run/sup_internal.h — the supervisor's state, shared by its files:
** supervise.c (the loop, which alone changes it), metrics.c (which reads
** it to answer /metrics and the live page) and reload.c.  Everything runs
** on the supervisor's one thread.
*/
#ifndef AME_CMD_SUP_INTERNAL_H
#define AME_CMD_SUP_INTERNAL_H

#include "page.h"
#include "rate.h"
#include "supervise.h"

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

#define AME_SUP_PROCS AME_PAGE_ENTRIES /* proc i uses page entry i */
#define AME_SUP_HISTORY 300            /* samples kept per worker (1/s) */

enum { P_FREE, P_STARTING, P_READY, P_STOPPING, P_HUNG };

/* One worker process. */
struct sup_proc {
  int state;            /* P_*: P_FREE when the record is unused */
  pid_t pid;
  unsigned slot;        /* its worker id (1..) */
  unsigned gen;         /* the generation (program run) it was forked from */
  double started;       /* monotonic seconds */
  double deadline;      /* P_STOPPING, P_HUNG: SIGKILL it then */
  uint64_t cpu_ticks;   /* its main thread's utime + stime at the last
                           sample (clock ticks), and when */
  double cpu_at;
  double busy;          /* the main thread's busy fraction, last sample */
  uint64_t rss;         /* bytes, last sample */
};

/* One worker id (a slot), whichever process serves it. */
struct sup_slot {
  int active;           /* part of the configured workers */
  int cur;              /* the proc that serves it, or -1 */
  int next;             /* a replacement starting (recycling, reload), -1 */
  double restart_at;    /* > 0: fork it again then */
  double backoff;       /* the wait before its last restart; 0: none yet */
  double retry_at;      /* a failed replacement is tried again then */
  unsigned restarts;    /* processes that ended and were replaced */
  unsigned hung, recycled;   /* ... of which: hung, recycled */
  char why[160];        /* how the last one ended ("" none) */
  uint64_t done[AME_PAGE_NCOUNTERS]; /* counters of its ended processes */
  /* History, one sample a second: requests/s and busy fraction. */
  float *rate, *busy;   /* AME_SUP_HISTORY each, a ring; NULL: none yet */
  unsigned hlen, hpos;
  ame_rate_t req_rate;   /* requests/s between heartbeats (rate.h) */
};

struct sup_state {
  const ame_sup_config_t *cfg;
  pid_t self;
  struct sup_proc p[AME_SUP_PROCS];
  struct sup_slot *s;   /* AME_SUP_MAX_WORKERS + 1 (index = worker id) */
  unsigned nslots;      /* the configured workers (slots 1..nslots) */
  unsigned gen;         /* the generation new workers are forked from */
  unsigned reloads;     /* completed reloads */
  unsigned reload_failures;
  double start_time;    /* monotonic seconds */
  double last_sample;
  int child_slot;       /* in a new worker: its id */
  sigset_t old_mask;    /* the caller's signal mask, for the workers */
};

extern struct sup_state ame_sup;

/* The monotonic clock in seconds. */
double ame_sup_now(void);

/* Log one line "<name>: <message>" on stderr. */
void ame_sup_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A slot's counters (AME_PAGE_COUNTERS) over all its processes, ended
** and running, into out.  Return the time (ame_sup_now's clock) of the
** latest heartbeat of its running processes, 0 if none has beaten: the
** counters are at least as new as that beat (a beat racing this read may
** add its counts early; the next read balances them). */
double ame_sup_counters(unsigned slot, uint64_t *out);

/* Live worker processes. */
unsigned ame_sup_live(void);

/* How long to wait before restarting slot sl, whose process started at
** started ended now; doubles while it keeps dying young. */
double ame_sup_backoff(struct sup_slot *sl, double started, double now);

/* Fork a worker process for slot from generation gen.  Return its record's
** index in the supervisor, -1 if it could not be forked (logged), or -2 in
** the new worker (S.child_slot is its id). */
int ame_sup_fork(unsigned slot, unsigned gen, double now);

/* Start slot's process (a first start or a restart).  Return as
** ame_sup_fork, having scheduled a retry after a failure. */
int ame_sup_start_slot(unsigned slot, double now);

/* Close the metrics server and the reload sockets and free the slots (the
** supervisor ends, or in a new worker). */
void ame_sup_release(void);

/* In a new worker, and at the supervisor's end (supervise.c): put the
** caller's signal handlers back and close the self-pipe. */
void ame_sup_child_signals(void);

/* Start a replacement for slot's process from generation gen (recycling,
** reload), beside it.  Return its record's index, -1 if it could not be
** forked (logged), or -2 in the new worker (only for generation 0). */
int ame_sup_replace(unsigned slot, unsigned gen, double now);

/* Slot's replacement takes over; the process it replaces stops. */
void ame_sup_take_over(unsigned slot, double now);

/* Has process i sent a heartbeat (its reactor runs)? */
int ame_sup_ready(int i);

/* Ask process i to stop gracefully (SIGTERM), with a kill deadline. */
void ame_sup_stop_proc(int i, double now);

#endif /* AME_CMD_SUP_INTERNAL_H */
