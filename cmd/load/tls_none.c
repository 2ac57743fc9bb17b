/*
** cmd/load/tls_none.c — the TLS seam of internal.h in a build without
** OpenSSL: https:// is refused on the command line (options.c reads
** ld_tls_unsupported()), so a run never has ld_run.tls set and none of the
** per-stream functions is called; they fail if one ever is.
*/
#include "internal.h"

#include <errno.h>
#include <stdio.h>

const char *ld_tls_unsupported(void) {
  return "https is not supported by this build (no OpenSSL)";
}

int ld_tls_setup(const ld_run_t *ld) {
  (void)ld;
  fprintf(stderr, "ame load: %s\n", ld_tls_unsupported());
  return -1;
}

void ld_tls_free(void) {}

int ld_tls_open(ame_tx_t *tx, ld_conn_t *c) {
  (void)tx, (void)c;
  return -EPROTONOSUPPORT;
}

int ld_tls_data(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                const char *data, size_t len) {
  (void)tx, (void)c, (void)s, (void)data, (void)len;
  return -EPROTONOSUPPORT;
}

int ld_tls_write_request(ld_conn_t *c, ame_stream_t *s) {
  (void)c, (void)s;
  return -EPROTONOSUPPORT;
}

int ld_tls_release(ame_tx_t *tx, struct ld_tls *t) {
  (void)tx, (void)t;
  return 0;
}

int ld_tls_lost(struct ld_tls *t, int timed_out) {
  (void)t, (void)timed_out;
  return 0;
}
