/*
** examples/c/parse_num.h — the servers' parsing of numeric arguments
** (a port, a worker count, a timeout): a whole decimal number in a range,
** nothing else, where atoi() would take "abc" as 0 and "8080x" as 8080.
*/
#ifndef EXAMPLES_PARSE_NUM_H
#define EXAMPLES_PARSE_NUM_H

#include <errno.h>
#include <stdlib.h>

/* Parse s, a whole decimal number from 0 to max, into *out.  Return 0,
** or -1 if s is not one (a sign, other characters, or too large). */
static inline int parse_num(const char *s, unsigned long max,
                            unsigned long *out) {
  if (*s < '0' || *s > '9') return -1; /* strtoul takes "-1" */
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

#endif
