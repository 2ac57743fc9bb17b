/*
** cmd/run/reload.h — SIGHUP: a new generation of workers from a fresh run
** of the program, with no connection lost (reload.c; docs/multicore.md).
**
** The supervisor's own workers are forks of the supervisor, which ran the
** program's setup once; a fresh run needs a process where Python has never
** run.  So, before Python starts, `ame run` forks a template: a small C
** process that holds the shared heap and the page (inherited) and nothing
** of Python.  On SIGHUP the supervisor asks the template for a candidate:
** a fork of the template that starts Python and runs the program again
** from the start (the files are read again), adopting the supervisor's
** listening sockets for the addresses it listens on (the primaries, sent
** over the template's socket).  At reactor.run() the candidate becomes a
** zygote: it tells the supervisor it is ready, and from then on forks the
** new generation's workers when the supervisor asks (a double fork: each
** worker's parent becomes the supervisor, a child subreaper, which reaps
** and supervises it like any other).  The supervisor starts one new worker
** per slot, on the slot's own sockets; once every one serves, it stops the
** old ones gracefully.  A candidate that fails (a syntax error, an
** exception in setup) exits with its one-line error, and the old workers
** go on.
*/
#ifndef AME_CMD_RELOAD_H
#define AME_CMD_RELOAD_H

#include <stdint.h>
#include <sys/types.h>

/* ---- before Python: the template ------------------------------------- */

/* Fork the template.  It runs candidate(data) in a new child for every
** request, once ame_reload_set_candidate() has recorded what came with
** it; candidate must not return (it exits).  When it reaps a candidate
** (a zygote that ended), it calls exited(data, pid) (may be NULL).  Return
** the supervisor's end of the template's socket, or a negative errno
** value.  The template ends when that socket is closed (with the process
** that holds it). */
int ame_reload_template(void (*candidate)(void *data),
                        void (*exited)(void *data, int pid), void *data);

/* ---- in the supervisor ----------------------------------------------- */

/* Called by the supervisor loop (supervise.c). */
void ame_reload_request(double now);       /* SIGHUP */
int ame_reload_busy(void);                 /* a reload is under way */
/* A reload is under way and gen is its generation (every attempt gets a
** number of its own, so a process of an attempt that failed is never taken
** for one of the attempt under way). */
int ame_reload_owns(unsigned gen);
int ame_reload_pollfd(void);               /* the fd to poll, or -1 */
void ame_reload_readable(double now);      /* it is readable */
/* The serving generation's zygote's control socket (poll it for POLLHUP),
** or -1; ame_reload_zygote_gone() when it hangs up: the zygote died, so a
** reload runs to replace it (or, when none can, workers are forked from
** the supervisor again: generation 0). */
int ame_reload_zygote_fd(void);
void ame_reload_zygote_gone(double now);
/* Is pid a zygote (or a reload's candidate) known here?  (One that the
** template's death left to the supervisor is not a stray worker.) */
int ame_reload_is_zygote(pid_t pid);
void ame_reload_check(double now);         /* new workers ready? */
/* A new-generation worker died before the switch (proc i). */
void ame_reload_worker_failed(int i, const char *how, double now);
/* Fork a worker of generation gen (> 0) from its zygote: return its pid,
** or a negative errno value (-ETIMEDOUT: no answer within FORK_REPLY_MS,
** signals to the supervisor notwithstanding; a late answer is told apart
** by its sequence number and dropped, and the worker it names is stopped
** as a stray). */
pid_t ame_reload_fork(unsigned gen, unsigned slot, unsigned entry, int out,
                      int err, const int *fds, unsigned n);
/* The supervisor is stopping: give up a reload under way. */
void ame_reload_cancel(void);
/* Close the zygotes' sockets (the supervisor ends, or a new worker). */
void ame_reload_forget(void);

/* ---- in a candidate -------------------------------------------------- */

/* In a candidate, before its Python runs: remember its control socket, the
** supervisor's pid, and the primaries it was given (fds[k] is listener
** idx[k]). */
void ame_reload_set_candidate(int ctl, int root, const int *fds,
                              const uint32_t *idx, unsigned n);

/* In a candidate: the primaries it was given (for the program's setup to
** adopt), or NULL when this process is no candidate. */
const int *ame_reload_inherited(unsigned *n);

/* In a candidate at reactor.run(): become the zygote.  pyfds[0..npy) are
** the listening sockets the program's setup holds (those among the
** inherited primaries were adopted; the others are closed).  Return the
** worker id in each worker it forks, which then runs the reactor as any
** worker; never return in the zygote.  Return a negative errno value if
** the supervisor cannot be told. */
int ame_reload_zygote(const int *pyfds, unsigned npy, double deadline_s,
                      void (*before_fork)(void *), void (*after_parent)(void *),
                      void (*after_child)(void *), void *data);

/* In a worker the zygote forked: the configured workers (slots) when the
** supervisor asked for it. */
unsigned ame_reload_workers(void);

#endif /* AME_CMD_RELOAD_H */
