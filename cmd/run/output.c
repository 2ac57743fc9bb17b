/*
** cmd/run/output.c — the workers' output, copied line by line with the
** prefix "[wN] " (output.h).
*/
#include "output.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536 /* one read() of a worker's pipe */

struct stream {
  int fd;      /* read end of one worker process's stdout or stderr pipe */
  int out;     /* where its lines go: 1 or 2 */
  unsigned id; /* the worker id, for the prefix */
  char *buf;   /* the unterminated line so far */
  size_t len, cap;
};

static struct stream *S;  /* open pipes, any order */
static size_t ns, scap;
static char *obuf;        /* output assembled by pump() */
static size_t ocap;

int ame_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        poll(&pfd, 1, 1000);
        continue;
      }
      return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

int ame_out_reserve(size_t n) {
  if (ns + 2 * n <= scap) return 0;
  size_t cap = scap ? scap : 16;
  while (cap < ns + 2 * n) cap *= 2;
  struct stream *s = realloc(S, cap * sizeof *s);
  if (s == NULL) return -ENOMEM;
  S = s;
  scap = cap;
  return 0;
}

void ame_out_add(int fd, int out, unsigned id) {
  if (ame_out_reserve(1) < 0) { /* cannot happen: reserved before fork */
    close(fd);
    return;
  }
  S[ns++] = (struct stream){.fd = fd, .out = out, .id = id};
}

size_t ame_out_count(void) { return ns; }

void ame_out_pollfds(struct pollfd *pfds) {
  for (size_t k = 0; k < ns; k++)
    pfds[k] = (struct pollfd){.fd = S[k].fd, .events = POLLIN};
}

/* Make room for n more bytes at obuf + used.  Return -1 if malloc fails. */
static int obuf_reserve(size_t used, size_t n) {
  if (used + n <= ocap) return 0;
  size_t cap = ocap ? ocap : 4096;
  while (cap < used + n) cap *= 2;
  char *p = realloc(obuf, cap);
  if (p == NULL) return -1;
  obuf = p;
  ocap = cap;
  return 0;
}

/* Append "[wN] " + p[0..n) + "\n" to obuf at *used (the data carries its
** own "\n" unless add_nl). */
static void obuf_line(size_t *used, unsigned id, const char *p, size_t n,
                      int add_nl) {
  char prefix[24];
  int pn = snprintf(prefix, sizeof prefix, "[w%u] ", id);
  if (obuf_reserve(*used, (size_t)pn + n + 1) < 0) return; /* dropped */
  memcpy(obuf + *used, prefix, (size_t)pn);
  memcpy(obuf + *used + pn, p, n);
  *used += (size_t)pn + n;
  if (add_nl) obuf[(*used)++] = '\n';
}

/* Keep p[0..n) as (the start of) s's unterminated line; cut it into a line
** of its own once it reaches AME_OUT_LINE_MAX. */
static void stream_keep(struct stream *s, size_t *used, const char *p,
                        size_t n) {
  while (n > 0) {
    size_t room = AME_OUT_LINE_MAX - s->len;
    size_t take = n < room ? n : room;
    if (s->cap < s->len + take) {
      size_t cap = s->cap ? s->cap : 256;
      while (cap < s->len + take) cap *= 2;
      char *b = realloc(s->buf, cap);
      if (b == NULL) return; /* dropped */
      s->buf = b;
      s->cap = cap;
    }
    memcpy(s->buf + s->len, p, take);
    s->len += take;
    p += take;
    n -= take;
    if (s->len == AME_OUT_LINE_MAX) {
      obuf_line(used, s->id, s->buf, s->len, 1);
      s->len = 0;
    }
  }
}

/* Read what stream s has and copy its complete lines out.  Return 0 at
** end of file (the rest of the line is copied out too), 1 otherwise. */
static int pump(struct stream *s) {
  char chunk[READ_CHUNK];
  ssize_t n = read(s->fd, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
  size_t used = 0;
  if (n <= 0) { /* end of file, or an error: the same */
    if (s->len) obuf_line(&used, s->id, s->buf, s->len, 1);
    s->len = 0;
    ame_write_all(s->out, obuf, used);
    return 0;
  }
  const char *p = chunk, *end = chunk + n;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) {
      stream_keep(s, &used, p, (size_t)(end - p));
      break;
    }
    if (s->len) { /* finish the line begun in an earlier read */
      stream_keep(s, &used, p, (size_t)(nl + 1 - p));
      if (s->len) obuf_line(&used, s->id, s->buf, s->len, 0);
      s->len = 0;
    } else {
      obuf_line(&used, s->id, p, (size_t)(nl + 1 - p), 0);
    }
    p = nl + 1;
  }
  if (used) ame_write_all(s->out, obuf, used);
  return 1;
}

static void stream_close(size_t k) {
  close(S[k].fd);
  free(S[k].buf);
  S[k] = S[--ns];
}

void ame_out_pump(const struct pollfd *pfds, size_t n) {
  /* Backwards: stream_close() moves the last stream into k.  Streams
  ** added since pfds was filled are past n and untouched. */
  for (size_t k = n; k-- > 0;)
    if (pfds[k].revents && !pump(&S[k])) stream_close(k);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ame_out_drain(double drain_s) {
  double until = now_s() + drain_s;
  struct pollfd *pfds = ns ? malloc(ns * sizeof *pfds) : NULL;
  while (ns > 0 && pfds) {
    double left = until - now_s();
    if (left <= 0) break;
    size_t n = ns;
    ame_out_pollfds(pfds);
    if (poll(pfds, n, (int)(left * 1000) + 1) <= 0) continue;
    ame_out_pump(pfds, n);
  }
  free(pfds);
  while (ns > 0) {
    struct stream *s = &S[ns - 1];
    size_t used = 0;
    if (s->len) obuf_line(&used, s->id, s->buf, s->len, 1);
    ame_write_all(s->out, obuf, used);
    stream_close(ns - 1);
  }
  free(S);
  free(obuf);
  S = NULL;
  obuf = NULL;
  scap = ocap = 0;
}

void ame_out_forget(void) {
  for (size_t k = 0; k < ns; k++) {
    close(S[k].fd);
    free(S[k].buf);
  }
  free(S);
  free(obuf);
  S = NULL;
  obuf = NULL;
  ns = scap = ocap = 0;
}
