/*
** tests/cmd/test_rate.c — the supervisor's requests/s (cmd/run/rate.h),
** against a simulated worker: requests served at a known rate, counts
** published at heartbeats whose times the test chooses, sampled once a
** second as the supervisor does.
**
**   test-rate    run every case; exit 0 if all pass
*/
#include "rate.h"
#include "task.h"

#include <math.h>

/* A worker serving rps requests/s from time 0: its count as of time t. */
static uint64_t served(double rps, double t) {
  return t <= 0 ? 0 : (uint64_t)floor(rps * t);
}

/* The latest of n beat times at or before now, or 0. */
static double latest_beat(const double *beats, unsigned n, double now) {
  double at = 0;
  for (unsigned k = 0; k < n; k++)
    if (beats[k] <= now && beats[k] > at) at = beats[k];
  return at;
}

/* Beats a second apart whose phase against the sampling clock wobbles:
** every other one comes just after the sample that would have seen it, so
** every other sampling second holds no beat and the next holds two.  Each
** sample from the second on reads the worker's rate. */
static void test_aliasing(void) {
  double beats[40];
  for (unsigned k = 0; k < 40; k++)
    beats[k] = k + 0.5 + (k % 2 ? 0.02 : -0.02);
  ame_rate_t r = {0};
  unsigned empty = 0;
  double prev_at = 0;
  for (unsigned j = 1; j < 38; j++) {
    double now = j + 0.5;
    double at = latest_beat(beats, 40, now);
    empty += at == prev_at;
    prev_at = at;
    float v = ame_rate_sample(&r, served(100, at), at, now);
    if (j >= 3) {
      ASSERT_GE(v, 98.0);
      ASSERT_LE(v, 102.0);
    }
  }
  ASSERT_GE(empty, 15); /* the case holds what it says it holds */
}

/* Beats four times a second (a short --timeout): the same rate. */
static void test_fast_beats(void) {
  ame_rate_t r = {0};
  for (unsigned j = 1; j < 20; j++) {
    double now = j + 0.1;
    double at = floor(now * 4) / 4;
    float v = ame_rate_sample(&r, served(250, at), at, now);
    if (j >= 2) ASSERT_DOUBLE_EQ(v, 250.0);
  }
}

/* The load stops at t = 10 while the worker keeps beating: the rate
** reads 0 from the second beat after it on, not the old figure. */
static void test_load_stops(void) {
  ame_rate_t r = {0};
  for (unsigned j = 1; j < 20; j++) {
    double now = j + 0.5, at = j + 0.25;
    float v = ame_rate_sample(&r, served(100, at < 10 ? at : 10), at, now);
    if (j >= 2 && j < 10) ASSERT_DOUBLE_EQ(v, 100.0);
    if (j >= 11) ASSERT_DOUBLE_EQ(v, 0.0);
  }
}

/* The worker stops beating at t = 10.25 (stuck): the last rate stands
** for AME_RATE_STALE_S, then the rate reads 0. */
static void test_stuck(void) {
  ame_rate_t r = {0};
  for (unsigned j = 1; j < 20; j++) {
    double now = j + 0.5, at = j <= 10 ? j + 0.25 : 10.25;
    float v = ame_rate_sample(&r, served(100, at), at, now);
    if (j >= 2 && now - at <= AME_RATE_STALE_S) ASSERT_DOUBLE_EQ(v, 100.0);
    if (now - at > AME_RATE_STALE_S) ASSERT_DOUBLE_EQ(v, 0.0);
  }
}

/* No beat yet reads 0; so does the first beat (one point is no rate); a
** count that goes back starts again from there. */
static void test_start_and_reset(void) {
  ame_rate_t r = {0};
  ASSERT_DOUBLE_EQ(ame_rate_sample(&r, 0, 0, 1.0), 0.0);
  ASSERT_DOUBLE_EQ(ame_rate_sample(&r, 50, 1.5, 2.0), 0.0);
  ASSERT_DOUBLE_EQ(ame_rate_sample(&r, 150, 2.5, 3.0), 100.0);
  ASSERT_DOUBLE_EQ(ame_rate_sample(&r, 20, 3.5, 4.0), 0.0);
  ASSERT_DOUBLE_EQ(ame_rate_sample(&r, 80, 4.5, 5.0), 60.0);
}

int main(void) {
  test_aliasing();
  test_fast_beats();
  test_load_stops();
  test_stuck();
  test_start_and_reset();
  printf("ok: requests/s between heartbeats\n");
  return 0;
}
