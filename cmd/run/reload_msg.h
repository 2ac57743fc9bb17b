/*
** cmd/run/reload_msg.h — the messages of a reload (reload.c, zygote.c):
** fixed-size structs over SOCK_SEQPACKET socket pairs, descriptors with
** SCM_RIGHTS.  Private to those two files.
*/
#ifndef AME_CMD_RELOAD_MSG_H
#define AME_CMD_RELOAD_MSG_H

#include "listeners.h"

#include <stdint.h>

#define MAGIC_SPAWN 0x616d6531u
#define MAGIC_READY 0x616d6532u
#define MAGIC_FORK 0x616d6533u
#define MAGIC_SPAWNED 0x616d6534u /* template -> supervisor, on the
                                     candidate's socket: its pid */
#define MAX_FDS (AME_LST_MAX + 3)
#define FORK_REPLY_MS 10000 /* a zygote that takes longer is gone */
#define REPARENT_WAIT_MS 5000
#define SPAWN_DEFAULT_S 60.0 /* a candidate's setup limit with --timeout 0 */

struct msg {
  uint32_t magic;
  uint32_t n;          /* listener fds passed (after the fixed ones) */
  uint32_t slot, entry;
  uint32_t workers;    /* FORK: the configured workers (AME_WORKERS) */
  uint32_t seq;        /* FORK: the request's number, echoed in the answer */
  int32_t root;        /* the supervisor's pid */
  int32_t pid;         /* FORKED: the worker's pid or -errno; READY,
                          SPAWNED: the candidate's */
  uint64_t adopted;    /* READY: bit p: listener p was adopted */
  uint32_t idx[AME_LST_MAX]; /* the listener index of each fd passed */
};

/* Send m with nfds descriptors.  Return 0 or a negative errno value. */
int ame_reload__send(int sock, const struct msg *m, const int *fds,
                     unsigned nfds);

/* Receive one message and its descriptors (close-on-exec) into fds
** (MAX_FDS).  Return the number of fds (m->magic is 0 at end of file), or
** a negative errno value. */
int ame_reload__recv(int sock, struct msg *m, int *fds);

#endif /* AME_CMD_RELOAD_MSG_H */
