/*
** examples/c/stop_signals.h — the servers' graceful stop: SIGINT or
** SIGTERM stops the reactor (ame_reactor_stop: each worker finishes the
** callback it runs, then ame_reactor_run() returns).
*/
#ifndef EXAMPLES_STOP_SIGNALS_H
#define EXAMPLES_STOP_SIGNALS_H

#include <ame/reactor.h>

#include <signal.h>
#include <stdio.h>

static int stop_signal_cb(ame_tx_t *tx, ame_signal_t *sig, int signum) {
  (void)tx;
  (void)signum;
  ame_reactor_stop(ame_handle_data(sig));
  return 0;
}

/* Stop r on SIGINT and on SIGTERM.  Return 0, or say why not on stderr
** (prog: the server's name) and return a negative errno-style code: a
** server that cannot be stopped gracefully does not start. */
static inline int stop_on_signals(ame_reactor_t *r, const char *prog) {
  int rc = ame_signal_start(r, SIGINT, stop_signal_cb, r, NULL);
  if (rc == 0) rc = ame_signal_start(r, SIGTERM, stop_signal_cb, r, NULL);
  if (rc != 0)
    fprintf(stderr, "%s: cannot catch SIGINT and SIGTERM: %s\n", prog,
            ame_strerror(rc));
  return rc;
}

#endif
