/*
** cmd/load/hist.h — a latency histogram for `ame load`: log-linear
** buckets with a bounded relative error, the idea of Gil Tene's
** HdrHistogram reimplemented from scratch.
**
** Values below 2^HIST_SUB_BITS+1 (256) each have a bucket of their own.
** Above that, each power-of-two range [2^e, 2^(e+1)) is cut into 128
** buckets of equal width 2^(e-7), so a bucket is never wider than 1/128 of
** the values it holds: a percentile read back is at most 0.79% above the
** true value (it reports the bucket's highest value, clamped to the exact
** maximum) and never below it.  Values above the histogram's highest
** trackable value are counted in the top bucket (and in `saturated`).
**
** `ame load` records nanoseconds, so 256 ns and below are exact and a 60 s
** range takes 3,808 buckets (30 KiB) per worker.  The exact minimum,
** maximum, count and sum are kept beside the buckets.
**
** Not thread-safe: each worker records into its own histogram and the
** results are merged at the end.
*/
#ifndef AME_CMD_HIST_H
#define AME_CMD_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 7 /* 2^7 = 128 buckets per power of two */

typedef struct hist {
  /* The first fields are the summary that hist_record() changes besides
  ** one bucket (callers that undo-log a record save [count, saturated]). */
  uint64_t count;     /* values recorded */
  uint64_t sum;       /* their sum (exact; wraps after 2^64) */
  uint64_t min;       /* the smallest (UINT64_MAX when empty) */
  uint64_t max;       /* the largest (exact, even when saturated) */
  uint64_t saturated; /* values above `highest`, counted in the top bucket */
  uint64_t highest;   /* the highest trackable value */
  size_t nbuckets;    /* hist_index(highest) + 1 */
  uint64_t *counts;   /* nbuckets counters */
} hist_t;

/* The size of the summary that hist_record() updates, from `count`. */
#define HIST_SUMMARY_SIZE (5 * sizeof(uint64_t))

/* Make h an empty histogram for values 0..highest (highest >= 1).  Return
** 0, -EINVAL or -ENOMEM. */
int hist_init(hist_t *h, uint64_t highest);

/* Free h's buckets (h itself is the caller's).  h may be zeroed memory. */
void hist_free(hist_t *h);

/* Forget every value recorded. */
void hist_reset(hist_t *h);

/* The bucket that holds v (v above h->highest: the top bucket). */
size_t hist_index(const hist_t *h, uint64_t v);

/* The lowest and highest values of bucket i. */
uint64_t hist_bucket_low(size_t i);
uint64_t hist_bucket_high(size_t i);

/* Record one value. */
void hist_record(hist_t *h, uint64_t v);

/* Add src's values to dst.  Return 0, or -EINVAL if their ranges differ. */
int hist_merge(hist_t *dst, const hist_t *src);

/* The value at percentile p (0..100): the smallest recorded value v such
** that at least p% of the values are <= v, read to the bucket (so at most
** 1/128 above the exact answer), clamped to [min, max].  p <= 0 gives the
** minimum, p >= 100 the maximum; an empty histogram gives 0. */
uint64_t hist_percentile(const hist_t *h, double p);

/* The mean (0 when empty). */
double hist_mean(const hist_t *h);

/* Check the histogram against known inputs; print what fails to stderr.
** Return 0 if every check passed, else the number of failures (this is
** `ame load --selftest-hist`). */
int hist_selftest(void);

#endif /* AME_CMD_HIST_H */
