/*
** cmd/run/metrics.h — `ame run --metrics HOST:PORT`: the supervisor serves
** its workers' counters as Prometheus text (/metrics), as JSON
** (/data.json) and as a live HTML page (/) that plots them (metrics.c,
** metrics_page.c; docs/multicore.md).
**
** The server is part of the supervisor's poll loop (one thread, no
** Python): small non-blocking HTTP/1.0-style exchanges, one request per
** connection.  The figures come from the page the workers write
** (page.h) and from the supervisor's own records (sup_internal.h), sampled
** once a second (ame_metrics_sample), so serving them costs the workers
** nothing.
*/
#ifndef AME_CMD_METRICS_H
#define AME_CMD_METRICS_H

#include <poll.h>
#include <stddef.h>

/* Bind and listen on "HOST:PORT" ("[V6]:PORT" too; HOST may be empty for
** every address).  Return the fd, or -1 with why in err. */
int ame_metrics_listen(const char *hostport, char *err, size_t errsize);

/* The supervisor's loop: how many fds to poll, fill them, handle them. */
size_t ame_metrics_count(void);
void ame_metrics_pollfds(struct pollfd *pfds);
void ame_metrics_handle(const struct pollfd *pfds, size_t n, double now);

/* Once a second: read every worker's CPU time and RSS (/proc), and add a
** sample of each worker's requests/s and busy fraction to its history. */
void ame_metrics_sample(double now);

/* Close the listener and every connection (the supervisor ends, or in a
** new worker). */
void ame_metrics_forget(void);

/* The live page (metrics_page.c). */
extern const char ame_metrics_html[];

#endif /* AME_CMD_METRICS_H */
