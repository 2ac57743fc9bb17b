/*
** cmd/run/supervise.h — the worker-process supervisor of
** `ame run --workers N` (supervise.c; docs/multicore.md).
**
** ame_supervise() forks N workers from the calling process and supervises
** them until they have all stopped:
**   - it restarts a worker that dies (with back-off), and replaces one
**     whose heartbeat (page.h) stops for timeout_s (a hung worker);
**   - it replaces a worker gracefully once it passes max_requests or
**     max_rss (recycling): the new one starts on the same slot, and the
**     old one stops once the new one serves;
**   - SIGINT and SIGTERM stop every worker gracefully (a second one kills
**     them); SIGHUP reloads the program (a new generation of workers from
**     a fresh run of it, reload.c, then the old ones stop); SIGTTIN and
**     SIGTTOU add or remove a worker; USR1 and USR2 are passed on when
**     the program handles them;
**   - it copies each worker's output with the prefix "[wN] " (output.h);
**   - with a metrics socket, it serves the workers' counters (metrics.c).
** It knows nothing of Python: the caller's fork hooks do what the language
** runtime needs around fork().
**
** Not thread-safe, and meant to be called once per process: the calling
** process should have no other threads (fork copies only the caller).
*/
#ifndef AME_CMD_SUPERVISE_H
#define AME_CMD_SUPERVISE_H

#include <stdint.h>

typedef struct ame_sup_config {
  unsigned workers;       /* N >= 1 at the start: worker ids are 1..N */
  double grace_s;         /* after a stop signal, workers still alive after
                             grace_s + AME_SUP_KILL_SLACK_S are killed */
  double timeout_s;       /* a worker whose heartbeat is older is hung:
                             killed and replaced (0: never) */
  uint64_t max_requests;  /* replace a worker after this many requests, plus
                             a random 0..max_requests_jitter (0: never) */
  uint64_t max_requests_jitter;
  uint64_t max_rss;       /* replace a worker whose RSS passes this many
                             bytes (0: never) */
  int metrics_fd;         /* a listening socket to serve metrics on, or -1 */
  int reload_fd;          /* the reload template's socket (reload.h), or -1:
                             SIGHUP cannot reload */
  const char *name;       /* the log prefix: "ame run" */
  void (*before_fork)(void *data);       /* each may be NULL */
  void (*after_fork_parent)(void *data);
  void (*after_fork_child)(void *data);
  /* A worker has exited or died (reaped), before any restart: the place to
  ** recover what it held in shared state (ame_heap_recover_pid). */
  void (*worker_exited)(void *data, int pid);
  void *data;
} ame_sup_config_t;

#define AME_SUP_KILL_SLACK_S 5.0
#define AME_SUP_CHECK_S 0.1   /* how often heartbeats and limits are read */
#define AME_SUP_HUNG_KILL_S 2.0 /* a hung worker gets SIGABRT (its Python
                                   traceback), then SIGKILL this much later */

/* Restart back-off: the first restart of a worker waits BACKOFF_MIN_S; a
** worker that dies again within BACKOFF_RESET_S of its start doubles the
** wait, up to BACKOFF_MAX_S; one that ran longer starts over at the min. */
#define AME_SUP_BACKOFF_MIN_S 0.1
#define AME_SUP_BACKOFF_MAX_S 10.0
#define AME_SUP_BACKOFF_RESET_S 10.0

#define AME_SUP_MAX_WORKERS 1024

/* Fork cfg->workers workers and supervise them.  The listening sockets
** must have been handed to ame_lst_init() (listeners.h) and the page made
** (ame_page_create, page.h) before.
**
** In a worker, return its id (1..N): the process is a fresh fork of the
** caller, with stdout and stderr on pipes to the supervisor, the caller's
** signal dispositions and mask as they were before the call except that
** SIGINT and SIGTERM are blocked — the caller unblocks them once it is
** ready to handle a stop (one sent earlier waits until then) — its
** slot's listening sockets in place of the primaries, and the orphan
** deadline armed (ame_page_worker_setup: if the supervisor dies, the
** worker gets SIGTERM, and SIGKILL grace_s + AME_SUP_KILL_SLACK_S later).
** A restarted worker is a new fork of the supervisor, so it too starts
** from the state the caller had when it called ame_supervise().
**
** In the supervisor, return 0 once every worker has exited and there is
** nothing left to restart, with *status set to the exit status the
** supervisor should exit with: 0 when every worker ended cleanly (exit
** status 0, or killed by the stop signal that was forwarded to it), 1
** otherwise (or when the workers had to be killed, or a worker failed
** before every worker of the first start was serving: then every other
** worker is stopped too).  The caller should exit without running
** anything of the program again.
**
** Return a negative errno value, with no worker started, if the
** supervisor cannot set itself up (pipes, signal handlers). */
int ame_supervise(const ame_sup_config_t *cfg, int *status);

/* In a worker ame_supervise() returned in: the configured workers when it
** was forked (SIGTTIN and SIGTTOU change the count; AME_WORKERS). */
unsigned ame_sup_workers(void);

#endif
