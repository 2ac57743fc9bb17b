/*
** cmd/run/rate.c — requests/s between heartbeats (rate.h).
*/
#include "rate.h"

float ame_rate_sample(ame_rate_t *r, uint64_t count, double at, double now) {
  if (at <= 0 || r->at <= 0 || count < r->count) {
    /* No beat yet, the first one, or a count that went back (a process's
    ** last tick raced its reaping): start again from this one. */
    r->count = count;
    r->at = at;
    r->last = 0;
    return 0;
  }
  if (at > r->at) {
    r->last = (float)((double)(count - r->count) / (at - r->at));
    r->count = count;
    r->at = at;
    return r->last;
  }
  return now - r->at <= AME_RATE_STALE_S ? r->last : 0;
}
