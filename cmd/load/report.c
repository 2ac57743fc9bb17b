/*
** cmd/load/report.c — the results of `ame load`: the workers' results
** merged, then printed as text or, with --json, as one JSON object
** (docs/load.md shows both).
**
** How data travels.  After the reactor has stopped, nothing writes the
** workers' results (ld_stats_t, one per worker) any more: ld_report()
** adds them up into one (counters, status codes, histograms) and prints
** it on stdout, with the run's settings from ld_run_t.  A run that ended
** for want of a server (every first connect failed, or, with https://,
** every first handshake) prints no report but one line on stderr saying
** why, as does a run that got no response at all (after its report).
** Latencies are kept in nanoseconds: the text shows them readably
** (fmt_ns), the JSON in microseconds.
*/
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const err_names[LD_ERR__COUNT] = {
    "connect", "read", "write", "timeout", "parse", "tls"};

/* A latency in ns, readably ("812.4us", "3.20ms", "1.50s"). */
static const char *fmt_ns(char *buf, size_t n, uint64_t ns) {
  if (ns < 1000)
    snprintf(buf, n, "%lluns", (unsigned long long)ns);
  else if (ns < 1000000)
    snprintf(buf, n, "%.1fus", (double)ns / 1e3);
  else if (ns < 1000000000)
    snprintf(buf, n, "%.2fms", (double)ns / 1e6);
  else
    snprintf(buf, n, "%.2fs", (double)ns / 1e9);
  return buf;
}

static const char *fmt_bytes(char *buf, size_t n, double b) {
  if (b < 1024)
    snprintf(buf, n, "%.0f B", b);
  else if (b < 1024 * 1024)
    snprintf(buf, n, "%.1f KiB", b / 1024);
  else if (b < 1024.0 * 1024 * 1024)
    snprintf(buf, n, "%.2f MiB", b / (1024 * 1024));
  else
    snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

/* A setting as a JSON number with the fewest digits that read back as v
** (%.17g always does), so that a program reading the JSON gets the value
** the run used. */
static void json_exact(FILE *f, double v) {
  char buf[32];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  fputs(buf, f);
}

static const struct {
  const char *name; /* JSON key and label */
  double p;
} percentiles[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p99.9", 99.9}};

static void report_text(const ld_run_t *ld, const ld_stats_t *t,
                        double elapsed) {
  char b1[32], b2[32];
  const hist_t *h = &t->hist;
  printf("ame load %s%s%s: %s, %u connection%s, %u thread%s",
         strcmp(ld->method, "GET") ? ld->method : "",
         strcmp(ld->method, "GET") ? " " : "", ld->url,
         fmt_ns(b1, sizeof b1, ld->duration_ns), ld->nconns,
         ld->nconns == 1 ? "" : "s", ld->nworkers,
         ld->nworkers == 1 ? "" : "s");
  if (ld->rate > 0) printf(", %.6g req/s scheduled", ld->rate);
  if (ld->has_body) {
    char b3[32];
    printf(", %s body", fmt_bytes(b3, sizeof b3, (double)ld->body_len));
  }
  printf("\n  requests  %llu in %.2fs: %.2f req/s, %s read (%s/s)\n",
         (unsigned long long)t->requests, elapsed,
         elapsed > 0 ? (double)t->requests / elapsed : 0.0,
         fmt_bytes(b1, sizeof b1, (double)t->bytes),
         fmt_bytes(b2, sizeof b2,
                   elapsed > 0 ? (double)t->bytes / elapsed : 0.0));
  printf("  latency  ");
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++)
    printf(" %s %s", percentiles[i].name,
           fmt_ns(b1, sizeof b1, hist_percentile(h, percentiles[i].p)));
  printf("  max %s\n", fmt_ns(b1, sizeof b1, h->max));
  printf("            min %s  mean %s  (from %s)\n",
         fmt_ns(b1, sizeof b1, h->count ? h->min : 0),
         fmt_ns(b2, sizeof b2, (uint64_t)hist_mean(h)),
         ld->rate > 0 ? "each request's due time" : "the write of each "
                                                     "request");
  printf("  status   ");
  int any = 0;
  for (unsigned code = 0; code < LD_NSTATUS; code++) {
    if (t->status[code] == 0) continue;
    printf(" %u: %llu", code, (unsigned long long)t->status[code]);
    any = 1;
  }
  if (t->status_other) {
    printf(" other: %llu", (unsigned long long)t->status_other);
    any = 1;
  }
  printf("%s\n  errors   ", any ? "" : " none");
  for (int k = 0; k < LD_ERR__COUNT; k++)
    printf(" %s %llu", err_names[k], (unsigned long long)t->errors[k]);
  printf("\n");
  if (t->abandoned)
    printf("  %llu requests still unanswered at the end were dropped\n",
           (unsigned long long)t->abandoned);
}

static void report_json(const ld_run_t *ld, const ld_stats_t *t,
                        double elapsed) {
  const hist_t *h = &t->hist;
  printf("{\"url\": ");
  json_string(stdout, ld->url);
  printf(", \"method\": ");
  json_string(stdout, ld->method);
  printf(", \"body_bytes\": %zu", ld->body_len);
  printf(", \"address\": ");
  json_string(stdout, ld->addr);
  printf(", \"port\": %d, \"connections\": %u, \"threads\": %u, "
         "\"duration_s\": ",
         ld->port, ld->nconns, ld->nworkers);
  json_exact(stdout, (double)ld->duration_ns / 1e9);
  printf(", \"timeout_s\": ");
  json_exact(stdout, (double)ld->timeout_ns / 1e9);
  printf(", \"rate\": ");
  if (ld->rate > 0)
    json_exact(stdout, ld->rate);
  else
    printf("null");
  printf(", ");
  printf("\"elapsed_s\": %.6f, \"requests\": %llu, \"requests_per_s\": %.3f, "
         "\"bytes\": %llu, \"bytes_per_s\": %.1f,\n",
         elapsed, (unsigned long long)t->requests,
         elapsed > 0 ? (double)t->requests / elapsed : 0.0,
         (unsigned long long)t->bytes,
         elapsed > 0 ? (double)t->bytes / elapsed : 0.0);
  printf(" \"latency_us\": {\"count\": %llu, \"min\": %.3f, \"mean\": %.3f",
         (unsigned long long)h->count, h->count ? (double)h->min / 1e3 : 0.0,
         hist_mean(h) / 1e3);
  for (size_t i = 0; i < sizeof percentiles / sizeof percentiles[0]; i++)
    printf(", \"%s\": %.3f", percentiles[i].name,
           (double)hist_percentile(h, percentiles[i].p) / 1e3);
  printf(", \"max\": %.3f, \"from\": \"%s\"},\n", (double)h->max / 1e3,
         ld->rate > 0 ? "due" : "write");
  printf(" \"status\": {");
  const char *sep = "";
  for (unsigned code = 0; code < LD_NSTATUS; code++) {
    if (t->status[code] == 0) continue;
    printf("%s\"%u\": %llu", sep, code, (unsigned long long)t->status[code]);
    sep = ", ";
  }
  if (t->status_other)
    printf("%s\"other\": %llu", sep, (unsigned long long)t->status_other);
  printf("},\n \"errors\": {");
  uint64_t total = 0;
  for (int k = 0; k < LD_ERR__COUNT; k++) {
    printf("\"%s\": %llu, ", err_names[k], (unsigned long long)t->errors[k]);
    total += t->errors[k];
  }
  printf("\"total\": %llu}, \"abandoned\": %llu,\n \"requests_per_thread\": [",
         (unsigned long long)total, (unsigned long long)t->abandoned);
  for (unsigned w = 0; w < ld->nworkers; w++)
    printf("%s%llu", w ? ", " : "", (unsigned long long)ld->ws[w].requests);
  printf("]}\n");
}

int ld_report(const ld_run_t *ld) {
  /* Merge the workers' results. */
  ld_stats_t *t = aligned_alloc(_Alignof(ld_stats_t), sizeof *t);
  if (t == NULL || (memset(t, 0, sizeof *t),
                    hist_init(&t->hist, LD_HIST_HIGHEST_NS) != 0)) {
    fprintf(stderr, "ame load: out of memory\n");
    free(t);
    return 1;
  }
  for (unsigned w = 0; w < ld->nworkers; w++) {
    const ld_stats_t *s = &ld->ws[w];
    t->requests += s->requests;
    t->bytes += s->bytes;
    t->abandoned += s->abandoned;
    t->status_other += s->status_other;
    for (int k = 0; k < LD_ERR__COUNT; k++) t->errors[k] += s->errors[k];
    for (unsigned code = 0; code < LD_NSTATUS; code++)
      t->status[code] += s->status[code];
    hist_merge(&t->hist, &s->hist);
  }
  double elapsed = (double)(ld->end_ns - ld->start_ns) / 1e9;
  int rc = 0;
  int v6 = strchr(ld->addr, ':') != NULL;
  if (ld->g.fatal_error) {
    fprintf(stderr, "ame load: cannot connect to %s%s%s:%d: %s\n",
            v6 ? "[" : "", ld->addr, v6 ? "]" : "", ld->port,
            strerror((int)ld->g.fatal_error));
    rc = 1;
  } else if (LD_LOAD_SC(&ld->tls_fatal)) {
    fprintf(stderr, "ame load: no TLS handshake with %s%s%s:%d succeeded: "
            "%s\n", v6 ? "[" : "", ld->addr, v6 ? "]" : "", ld->port,
            ld->tls_error);
    rc = 1;
  } else {
    if (ld->json)
      report_json(ld, t, elapsed);
    else
      report_text(ld, t, elapsed);
    fflush(stdout);
    if (t->requests == 0) {
      uint64_t errs = 0;
      for (int k = 0; k < LD_ERR__COUNT; k++) errs += t->errors[k];
      fprintf(stderr, "ame load: no response from %s (%llu socket errors)\n",
              ld->url, (unsigned long long)errs);
      rc = 1;
    }
  }
  hist_free(&t->hist);
  free(t);
  return rc;
}
