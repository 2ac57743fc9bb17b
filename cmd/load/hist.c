/*
** cmd/load/hist.c — the log-linear latency histogram (see hist.h).
**
** Bucket index of v:
**   v < 256:  v itself (one bucket per value);
**   v >= 256: with e = floor(log2 v) (8 or more) and the top eight bits of
**             v, sub = v >> (e - 7) (128..255),
**             256 + (e - 8) * 128 + (sub - 128).
** Bucket i >= 256 therefore covers [sub << (e-7), ((sub+1) << (e-7)) - 1],
** a width of 2^(e-7) <= v / 128.
*/
#include "hist.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUB (1u << HIST_SUB_BITS) /* 128 buckets per power of two */
#define LINEAR (2u * SUB)         /* values below this are exact */

static unsigned log2_floor(uint64_t v) {
  return 63u - (unsigned)__builtin_clzll(v);
}

static size_t index_of(uint64_t v) {
  if (v < LINEAR) return (size_t)v;
  unsigned e = log2_floor(v);
  uint64_t sub = v >> (e - HIST_SUB_BITS);
  return LINEAR + (size_t)(e - HIST_SUB_BITS - 1) * SUB + (size_t)(sub - SUB);
}

uint64_t hist_bucket_low(size_t i) {
  if (i < LINEAR) return i;
  size_t j = i - LINEAR;
  unsigned e = (unsigned)(j / SUB) + HIST_SUB_BITS + 1;
  uint64_t sub = SUB + j % SUB;
  return sub << (e - HIST_SUB_BITS);
}

uint64_t hist_bucket_high(size_t i) {
  if (i < LINEAR) return i;
  size_t j = i - LINEAR;
  unsigned e = (unsigned)(j / SUB) + HIST_SUB_BITS + 1;
  uint64_t sub = SUB + j % SUB;
  return ((sub + 1) << (e - HIST_SUB_BITS)) - 1;
}

int hist_init(hist_t *h, uint64_t highest) {
  memset(h, 0, sizeof *h);
  if (highest < 1 || highest > (UINT64_MAX >> 1)) return -EINVAL;
  h->highest = highest;
  h->nbuckets = index_of(highest) + 1;
  h->counts = calloc(h->nbuckets, sizeof *h->counts);
  if (h->counts == NULL) return -ENOMEM;
  h->min = UINT64_MAX;
  return 0;
}

void hist_free(hist_t *h) {
  free(h->counts);
  h->counts = NULL;
  h->nbuckets = 0;
}

void hist_reset(hist_t *h) {
  memset(h->counts, 0, h->nbuckets * sizeof *h->counts);
  h->count = h->sum = h->max = h->saturated = 0;
  h->min = UINT64_MAX;
}

size_t hist_index(const hist_t *h, uint64_t v) {
  return v > h->highest ? h->nbuckets - 1 : index_of(v);
}

void hist_record(hist_t *h, uint64_t v) {
  h->counts[hist_index(h, v)]++;
  if (v > h->highest) h->saturated++;
  h->count++;
  h->sum += v;
  if (v < h->min) h->min = v;
  if (v > h->max) h->max = v;
}

int hist_merge(hist_t *dst, const hist_t *src) {
  if (dst->nbuckets != src->nbuckets || dst->highest != src->highest)
    return -EINVAL;
  for (size_t i = 0; i < src->nbuckets; i++) dst->counts[i] += src->counts[i];
  dst->count += src->count;
  dst->sum += src->sum;
  dst->saturated += src->saturated;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
  return 0;
}

uint64_t hist_percentile(const hist_t *h, double p) {
  if (h->count == 0) return 0;
  if (p <= 0) return h->min;
  if (p >= 100) return h->max;
  /* The rank of the value asked for, 1-based: ceil(p% of count). */
  double exact = p / 100.0 * (double)h->count;
  uint64_t rank = (uint64_t)ceil(exact - 1e-9);
  if (rank < 1) rank = 1;
  if (rank > h->count) rank = h->count;
  uint64_t seen = 0;
  for (size_t i = 0; i < h->nbuckets; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = hist_bucket_high(i);
      if (v > h->max) v = h->max;
      if (v < h->min) v = h->min;
      return v;
    }
  }
  return h->max; /* not reached: the counts add up to count */
}

double hist_mean(const hist_t *h) {
  return h->count ? (double)h->sum / (double)h->count : 0.0;
}

/* ------------------------------------------------------------------------
** Self-test (`ame load --selftest-hist`).
*/

static int failures;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "hist selftest: %s:%d: %s: ", __FILE__, __LINE__,      \
              #cond);                                                        \
      fprintf(stderr, __VA_ARGS__);                                          \
      fputc('\n', stderr);                                                   \
      failures++;                                                            \
    }                                                                        \
  } while (0)

/* got must be exact or above it by at most 1/128 (and always within 1%). */
static void check_close(const char *what, uint64_t got, uint64_t exact) {
  double rel = exact ? ((double)got - (double)exact) / (double)exact : 0.0;
  CHECK(got >= exact && rel <= 1.0 / SUB && rel < 0.01,
        "%s: got %llu, exact %llu (relative error %.5f)", what,
        (unsigned long long)got, (unsigned long long)exact, rel);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The exact percentile of sorted values, by the same rank rule. */
static uint64_t exact_percentile(const uint64_t *sorted, size_t n, double p) {
  if (p <= 0) return sorted[0];
  if (p >= 100) return sorted[n - 1];
  uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)n - 1e-9);
  if (rank < 1) rank = 1;
  return sorted[rank - 1];
}

static uint64_t lcg_state = 0x2545F4914F6CDD1Dull;
static uint64_t lcg(void) {
  lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
  return lcg_state >> 11;
}

int hist_selftest(void) {
  static const double ps[] = {0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
  const uint64_t highest = 60ull * 1000 * 1000 * 1000; /* 60 s in ns */
  hist_t h, a, b;
  failures = 0;
  lcg_state = 0x2545F4914F6CDD1Dull;

  /* Buckets tile the range: each value lies in its bucket, buckets are
  ** contiguous, and no bucket is wider than 1/128 of its lowest value. */
  CHECK(hist_init(&h, highest) == 0, "init");
  CHECK(h.nbuckets == 3808, "nbuckets %zu", h.nbuckets); /* 30 KiB */
  for (size_t i = 1; i < h.nbuckets; i++) {
    uint64_t lo = hist_bucket_low(i), hi = hist_bucket_high(i);
    CHECK(lo == hist_bucket_high(i - 1) + 1, "bucket %zu not contiguous", i);
    CHECK(hi >= lo && (hi - lo + 1) * SUB <= (lo > LINEAR ? lo : LINEAR),
          "bucket %zu [%llu, %llu] too wide", i, (unsigned long long)lo,
          (unsigned long long)hi);
    CHECK(index_of(lo) == i && index_of(hi) == i, "bucket %zu index", i);
  }
  CHECK(hist_percentile(&h, 50) == 0, "empty histogram");

  /* Small values are exact. */
  for (uint64_t v = 1; v <= 100; v++) hist_record(&h, v);
  CHECK(hist_percentile(&h, 50) == 50, "p50 of 1..100: %llu",
        (unsigned long long)hist_percentile(&h, 50));
  CHECK(hist_percentile(&h, 99) == 99, "p99 of 1..100");
  CHECK(hist_percentile(&h, 0) == 1 && hist_percentile(&h, 100) == 100,
        "min/max of 1..100");
  CHECK(hist_mean(&h) == 50.5, "mean of 1..100: %f", hist_mean(&h));

  /* 1..1,000,000 (one value each): p50 = 500,000 etc. within 1/128, and
  ** the same after splitting into two histograms and merging. */
  hist_reset(&h);
  CHECK(hist_init(&a, highest) == 0 && hist_init(&b, highest) == 0, "init");
  for (uint64_t v = 1; v <= 1000000; v++) {
    hist_record(&h, v);
    hist_record(v % 3 ? &a : &b, v);
  }
  CHECK(hist_merge(&a, &b) == 0, "merge");
  static const struct {
    double p;
    uint64_t v;
  } uni[] = {{50, 500000},   {90, 900000},     {99, 990000},
             {99.9, 999000}, {99.99, 999900}, {100, 1000000}};
  for (size_t k = 0; k < sizeof uni / sizeof uni[0]; k++) {
    char what[64];
    snprintf(what, sizeof what, "uniform p%g", uni[k].p);
    check_close(what, hist_percentile(&h, uni[k].p), uni[k].v);
    snprintf(what, sizeof what, "merged p%g", uni[k].p);
    check_close(what, hist_percentile(&a, uni[k].p), uni[k].v);
  }
  CHECK(a.count == 1000000 && a.min == 1 && a.max == 1000000, "merged sums");
  CHECK(hist_mean(&a) == 500000.5, "merged mean %f", hist_mean(&a));

  /* A skewed distribution (microseconds to seconds, log-uniform) against
  ** the exact percentiles of the sorted values. */
  enum { N = 200000 };
  uint64_t *vals = malloc(N * sizeof *vals);
  CHECK(vals != NULL, "malloc");
  if (vals) {
    hist_reset(&h);
    for (size_t i = 0; i < N; i++) {
      double u = (double)(lcg() % 1000000) / 1000000.0;
      vals[i] = (uint64_t)(1000.0 * pow(10.0, 6.0 * u)); /* 1 us .. 1 s */
      hist_record(&h, vals[i]);
    }
    qsort(vals, N, sizeof *vals, cmp_u64);
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
      char what[64];
      snprintf(what, sizeof what, "log-uniform p%g", ps[k]);
      check_close(what, hist_percentile(&h, ps[k]),
                  exact_percentile(vals, N, ps[k]));
    }
    free(vals);
  }

  /* Percentiles never decrease. */
  uint64_t prev = 0;
  for (double p = 0; p <= 100; p += 0.5) {
    uint64_t v = hist_percentile(&h, p);
    CHECK(v >= prev, "p%g = %llu < %llu", p, (unsigned long long)v,
          (unsigned long long)prev);
    prev = v;
  }

  /* One repeated value: every percentile is that value (clamped). */
  hist_reset(&h);
  for (int i = 0; i < 1000; i++) hist_record(&h, 123456789);
  CHECK(hist_percentile(&h, 50) == 123456789 &&
            hist_percentile(&h, 99.9) == 123456789,
        "constant: p50 %llu", (unsigned long long)hist_percentile(&h, 50));

  /* Values over the range land in the top bucket; max stays exact. */
  hist_t s;
  CHECK(hist_init(&s, 1000) == 0, "init small");
  hist_record(&s, 10);
  hist_record(&s, 5000);
  CHECK(s.saturated == 1 && s.max == 5000 && hist_percentile(&s, 100) == 5000,
        "saturation");
  CHECK(hist_percentile(&s, 50) == 10, "saturation p50");
  CHECK(hist_merge(&h, &s) == -EINVAL, "merge of different ranges");
  hist_free(&s);
  CHECK(hist_init(&s, 0) == -EINVAL, "init 0");

  hist_free(&h);
  hist_free(&a);
  hist_free(&b);
  return failures;
}
