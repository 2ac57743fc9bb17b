/*
** cmd/run/supervise.h — the worker-process supervisor of
** `ame run --workers N` (supervise.c; docs/multicore.md).
**
** ame_supervise() forks N workers from the calling process and supervises
** them: it restarts a worker that dies (with back-off), forwards SIGINT and
** SIGTERM for a graceful stop (a second one kills the workers), and copies
** each worker's stdout and stderr to its own with the prefix "[wN] ".  It
** knows nothing of Python: the caller's fork hooks do what the language
** runtime needs around fork().
**
** Not thread-safe, and meant to be called once per process: the calling
** process should have no other threads (fork copies only the caller).
*/
#ifndef AME_CMD_SUPERVISE_H
#define AME_CMD_SUPERVISE_H

typedef struct ame_sup_config {
  unsigned workers;     /* N >= 1: worker ids are 1..N */
  double grace_s;       /* after a stop signal, workers still alive after
                           grace_s + AME_SUP_KILL_SLACK_S are killed */
  const char *name;     /* the log prefix: "ame run" */
  void (*before_fork)(void *data);       /* each may be NULL */
  void (*after_fork_parent)(void *data);
  void (*after_fork_child)(void *data);
  /* A worker has exited or died (reaped), before any restart: the place to
  ** recover what it held in shared state (ame_heap_recover_pid). */
  void (*worker_exited)(void *data, int pid);
  void *data;
} ame_sup_config_t;

#define AME_SUP_KILL_SLACK_S 5.0

/* Restart back-off: the first restart of a worker waits BACKOFF_MIN_S; a
** worker that dies again within BACKOFF_RESET_S of its start doubles the
** wait, up to BACKOFF_MAX_S; one that ran longer starts over at the min. */
#define AME_SUP_BACKOFF_MIN_S 0.1
#define AME_SUP_BACKOFF_MAX_S 10.0
#define AME_SUP_BACKOFF_RESET_S 10.0

/* Fork cfg->workers workers and supervise them.
**
** In a worker, return its id (1..N): the process is a fresh fork of the
** caller, with stdout and stderr on pipes to the supervisor, the caller's
** signal dispositions and mask as they were before the call except that
** SIGINT and SIGTERM are blocked — the caller unblocks them once it is
** ready to handle a stop (one sent earlier waits until then) — and
** PR_SET_PDEATHSIG set to SIGTERM (a worker stops if the supervisor dies).
** A restarted worker is a new fork of the supervisor, so it too starts
** from the state the caller had when it called ame_supervise().
**
** In the supervisor, return 0 once every worker has exited and there is
** nothing left to restart, with *status set to the exit status the
** supervisor should exit with: 0 when every worker ended cleanly (exit
** status 0, or killed by the stop signal that was forwarded to it), 1
** otherwise (or when the workers had to be killed).  The caller should
** exit without running anything of the program again.
**
** Return a negative errno value, with no worker started, if the
** supervisor cannot set itself up (pipes, signal handlers). */
int ame_supervise(const ame_sup_config_t *cfg, int *status);

#endif
