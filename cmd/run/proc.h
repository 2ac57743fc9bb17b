/*
** cmd/run/proc.h — what /proc says of a process the supervisor did not
** start: whether it is a worker that still runs.
**
** The supervisor stops, once a second, the children named as workers that
** no record of its own holds (supervise.c: strays).  A zygote's death is
** seen when its socket hangs up, which happens while it exits, before it
** is a zombie and before reap() collects it: until then it is still a
** child of the supervisor, with its name, and no record holds it any more.
** A process that has begun to exit, or has exited, is no stray.
*/
#ifndef AME_CMD_PROC_H
#define AME_CMD_PROC_H

#include <sys/types.h>

/* Nonzero if process pid is named as a worker ("ame", or "ame-zygote"
** before a worker names itself) and has not begun to exit: not a zombie,
** and the kernel's exiting flag (set as exit starts, before the process
** closes its files) is clear.  0 for any other process, and for a pid
** that /proc does not show. */
int ame_proc_live_worker(pid_t pid);

#endif /* AME_CMD_PROC_H */
