/*
** examples/c/echo.c — the smallest ame server: every byte a client sends
** comes back to it.  A transactional counter counts the bytes echoed over
** all connections and workers; SIGINT or SIGTERM stops the server
** gracefully and prints the count and the reactor's report.
**
**   build/examples/c/echo [PORT] [WORKERS]     (default 7000, one per core)
*/
#include "parse_num.h"
#include "stop_signals.h"

#include <ame/reactor.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static uintptr_t echoed; /* bytes echoed: shared, transactional */

static int on_data(ame_tx_t *tx, ame_stream_t *s, const char *data,
                   size_t len) {
  ame_store_word_tx(tx, &echoed, ame_load_word_tx(tx, &echoed) + len);
  return ame_stream_write(s, data, len);
}

static const ame_stream_cbs_t echo_cbs = {.on_data = on_data};

int main(int argc, char **argv) {
  unsigned long port = 7000, workers = 0;
  if (argc > 3 || (argc > 1 && parse_num(argv[1], 65535, &port) != 0) ||
      (argc > 2 && parse_num(argv[2], UINT_MAX, &workers) != 0)) {
    fprintf(stderr, "usage: echo [PORT] [WORKERS]\n");
    return 2;
  }
  ame_reactor_config_t cfg = {.workers = (unsigned)workers};
  ame_reactor_t *r;
  int rc = ame_reactor_new(&r, &cfg);
  if (rc != 0) {
    fprintf(stderr, "echo: %s\n", ame_strerror(rc));
    return 1;
  }
  ame_listener_t *l;
  rc = ame_tcp_listen(r, "0.0.0.0", (int)port, 0, 0, &echo_cbs, NULL, &l);
  if (rc != 0) {
    fprintf(stderr, "echo: cannot listen on port %lu: %s\n", port,
            ame_strerror(rc));
    ame_reactor_free(r);
    return 1;
  }
  if (stop_on_signals(r, "echo") != 0) {
    ame_reactor_free(r);
    return 1;
  }
  printf("echo: listening on port %d with %u workers\n",
         ame_listener_port(l), ame_reactor_workers(r));
  fflush(stdout);
  ame_reactor_run(r);
  printf("echo: %lu bytes echoed\n", (unsigned long)echoed);
  ame_reactor_report(r, stdout);
  ame_reactor_free(r);
  return 0;
}
