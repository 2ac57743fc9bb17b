/*
** tests/reactor/header_c11.c — ame/reactor.h compiles in plain C11, with
** none of the POSIX or GNU features the rest of the tree turns on (meson
** builds this file with _GNU_SOURCE undefined; -Werror makes any warning
** the header gives a build failure).  Nothing here runs.
*/
#include <ame/reactor.h>

int ame_test_header_c11(ame_reactor_t *r, ame_resolve_cb cb);
int ame_test_header_c11(ame_reactor_t *r, ame_resolve_cb cb) {
  return ame_resolve(r, "localhost", NULL, NULL, cb, NULL);
}
