/*
** cmd/run/listeners.h — the listening sockets of `ame run`'s workers,
** owned by the supervisor (listeners.c; docs/multicore.md).
**
** The program's setup opens its TCP listeners (the primaries) before the
** workers exist.  With --sockets reuseport, worker slot 1 accepts on the
** primary and each other slot on a socket of its own bound to the same
** address with SO_REUSEPORT (a sibling), which the supervisor makes and
** keeps for as long as the slot exists.  A worker process is given its
** slot's socket under the primary's descriptor number (dup2), so the
** program's Port objects need no change.  Because the supervisor holds
** every slot's socket, a worker that stops (recycled, reloaded, crashed)
** never closes a socket with connections queued on it: its replacement,
** on the same slot, accepts them.  Only removing a slot (SIGTTOU) closes
** its siblings.
**
** With --sockets shared every slot accepts on the primaries.
*/
#ifndef AME_CMD_LISTENERS_H
#define AME_CMD_LISTENERS_H

#define AME_LST_MAX 64 /* listeners handed over (more stay shared) */

/* Take the primaries fds[0..n) (each with its listen() backlog) for
** slot sockets; reuseport: make siblings (else every slot shares the
** primaries).  Return 0 or -ENOMEM. */
int ame_lst_init(const int *fds, const int *backlogs, unsigned n,
                 int reuseport);

/* How many listeners there are. */
unsigned ame_lst_count(void);

/* The primary fd of listener p. */
int ame_lst_primary(unsigned p);

/* Listener p's socket for slot (1..): the primary for slot 1 (and for
** every slot with --sockets shared, or when the primary is not a TCP
** socket made with SO_REUSEPORT), else the slot's sibling, made on first
** use.  Return the fd, or a negative errno value (the slot then shares
** the primary: see ame_lst_slot_fds). */
int ame_lst_slot_fd(unsigned p, unsigned slot);

/* Fill fds[p] for every listener p with slot's socket (falling back to
** the primary when a sibling cannot be made; *err then holds why, else
** 0), or -1 for a listener a reload dropped.  Return the count. */
unsigned ame_lst_slot_fds(unsigned slot, int *fds, int *err);

/* Close slot's siblings (the slot was removed and its workers are gone). */
void ame_lst_drop_slot(unsigned slot);

/* Close listener p's primary and siblings (a reload's program no longer
** listens there, and the old workers are gone). */
void ame_lst_drop(unsigned p);

/* In a new worker for slot: put the slot's sockets in place of the
** primaries (dup2), then close every sibling.  targets[p] is the fd that
** listener p's Port uses in this process (NULL: the primaries' own
** numbers; -1: this process has no Port for p). */
void ame_lst_worker(unsigned slot, const int *targets);

/* In a new process that is no worker (the reload template's child): close
** every sibling it inherited. */
void ame_lst_close_siblings(void);

#endif /* AME_CMD_LISTENERS_H */
