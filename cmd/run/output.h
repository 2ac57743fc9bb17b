/*
** cmd/run/output.h — the supervisor's copy of its workers' output, one
** line at a time with the prefix "[wN] " (output.c; docs/multicore.md).
**
** Each worker process gets a pipe for stdout and one for stderr; the
** supervisor polls their read ends and copies complete lines to its own
** fd 1 or 2, one write() per batch of lines, so lines of different workers
** never interleave within a line.  A line longer than AME_OUT_LINE_MAX is
** cut; an unterminated last line is ended with "\n".  All output is
** write(2), never stdio: a stdio buffer would be copied into every worker
** forked after it.  Not thread-safe (the supervisor has one thread).
*/
#ifndef AME_CMD_OUTPUT_H
#define AME_CMD_OUTPUT_H

#include <poll.h>
#include <stddef.h>

#define AME_OUT_LINE_MAX 65536 /* a longer line is cut into pieces */

/* Make room for streams of n more workers.  Return 0 or -ENOMEM. */
int ame_out_reserve(size_t n);

/* Copy the pipe fd's lines to out (1 or 2) with worker id's prefix. */
void ame_out_add(int fd, int out, unsigned id);

/* How many pipes are open; fill pfds[0..count) to poll them. */
size_t ame_out_count(void);
void ame_out_pollfds(struct pollfd *pfds);

/* After poll(): copy what the pipes in pfds[0..n) have (n as
** ame_out_count() was when pfds was filled), closing those at end of
** file. */
void ame_out_pump(const struct pollfd *pfds, size_t n);

/* Copy what is left for at most drain_s seconds, then end every partial
** line and close every pipe. */
void ame_out_drain(double drain_s);

/* In a new worker: close every pipe (the supervisor's ends) and free. */
void ame_out_forget(void);

/* Write all of p to fd, waiting if fd is non-blocking and full.  Return
** -1 (and give up) on any other error. */
int ame_write_all(int fd, const char *p, size_t n);

#endif /* AME_CMD_OUTPUT_H */
