/*
** cmd/run/rate.h — a worker's requests/s, as the supervisor draws it on the
** metrics page and exports it (ame_worker_requests_per_second).
**
** A worker publishes its request count at each heartbeat (page.h: every
** --timeout/4, at most a second apart), and the supervisor samples the
** counts once a second.  The
** count it reads changes only at a beat, so the change over a sampling
** interval is not a rate: with both clocks ticking once a second and
** drifting against each other, an interval holds no beat (0 req/s under
** full load) and the next holds two (twice the rate).  The rate is taken
** between beats instead: the count's change over the time between the two
** beats that published the counts, so the phase of the two clocks drops
** out.  A sample that finds no newer beat repeats the last rate, and once
** no beat has come for AME_RATE_STALE_S the rate is 0 (a worker that does
** not beat serves nothing: it is stuck or gone).
**
** No state beyond the struct; the supervisor's thread only.
*/
#ifndef AME_CMD_RATE_H
#define AME_CMD_RATE_H

#include <stdint.h>

/* Seconds without a newer beat after which the rate reads 0: beats come at
** most a second apart (page.h), so two seconds is a missed beat and then
** some. */
#define AME_RATE_STALE_S 2.0

typedef struct ame_rate {
  uint64_t count;  /* the count at the last beat taken */
  double at;       /* that beat's time (CLOCK_MONOTONIC s); 0: none yet */
  float last;      /* the last rate taken between two beats */
} ame_rate_t;

/* A sample at now: count is the slot's requests served as of the beat at
** time `at` (CLOCK_MONOTONIC seconds, as now; 0 when none of its processes
** has beaten yet).  Return the requests/s to show for this sample.  *r
** starts zeroed. */
float ame_rate_sample(ame_rate_t *r, uint64_t count, double at, double now);

#endif /* AME_CMD_RATE_H */
