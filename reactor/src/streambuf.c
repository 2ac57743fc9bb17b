/*
** reactor/src/streambuf.c — input buffers and output queues of the
** streams that work on a raw socket (streambuf.h): the reactor's and the
** Python binding's.  Plain memory management and one writev loop; the
** callers decide who may touch a buffer when.
*/
#include "streambuf.h"
#include "sockio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define IBUF_MIN 512         /* first allocation of an input buffer */
#define CHUNK_MIN 4096       /* smallest output chunk allocated */
#define FLUSH_IOV 64         /* chunks per writev */

/* ------------------------------------------------------------------------
** Input buffer.
*/

/* Make room for n more bytes at the end: slide the data to the front if
** that is enough, else grow (doubling).  Return 0 or -ENOMEM. */
static int ibuf_room(ame__ibuf_t *b, size_t n) {
  if (b->off + b->len + n <= b->cap) return 0;
  if (b->len + n <= b->cap && b->off >= b->len) {
    /* Consumed space at the front is at least what is left: slide it. */
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
    return 0;
  }
  size_t nc = b->cap ? b->cap : IBUF_MIN;
  while (nc < b->len + n) {
    if (nc > ((size_t)-1) / 2) return -ENOMEM;
    nc *= 2;
  }
  if (b->off == 0) {
    char *p = realloc(b->p, nc);
    if (p == NULL) return -ENOMEM;
    b->p = p;
  } else {
    char *p = malloc(nc);
    if (p == NULL) return -ENOMEM;
    if (b->len) memcpy(p, b->p + b->off, b->len);
    free(b->p);
    b->p = p;
    b->off = 0;
  }
  b->cap = nc;
  return 0;
}

int ame__ibuf_append(ame__ibuf_t *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (ibuf_room(b, n) != 0) return -ENOMEM;
  memcpy(b->p + b->off + b->len, p, n);
  b->len += n;
  return 0;
}

void ame__ibuf_consume(ame__ibuf_t *b, size_t n) {
  if (n >= b->len) {
    b->off = b->len = 0;
    return;
  }
  b->off += n;
  b->len -= n;
}

int ame__ibuf_putback(ame__ibuf_t *b, ame__ibuf_t *front) {
  if (b->len == 0) {
    free(b->p);
    *b = *front;
  } else if (ame__ibuf_append(front, ame__ibuf_data(b), b->len) == 0) {
    free(b->p);
    *b = *front;
  } else {
    free(front->p);
    front->p = NULL;
    front->off = front->len = front->cap = 0;
    return -ENOMEM;
  }
  front->p = NULL;
  front->off = front->len = front->cap = 0;
  return 0;
}

void ame__ibuf_free(ame__ibuf_t *b) {
  free(b->p);
  b->p = NULL;
  b->off = b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------
** Output queue.
*/

int ame__oq_append(ame__oqueue_t *q, const void *p, size_t n) {
  if (n == 0) return 0;
  struct ame__chunk *t = q->tail;
  size_t fit = t ? t->cap - t->len : 0;
  if (fit >= n) { /* the common case: a small write into the last chunk */
    memcpy(t->data + t->len, p, n);
    t->len += n;
    q->bytes += n;
    return 0;
  }
  /* Fill the last chunk, the rest into a new one (one allocation). */
  size_t rest = n - fit;
  size_t cap = rest < CHUNK_MIN ? CHUNK_MIN : rest;
  struct ame__chunk *c = malloc(sizeof *c + cap);
  if (c == NULL) return -ENOMEM;
  if (fit) {
    memcpy(t->data + t->len, p, fit);
    t->len += fit;
  }
  c->next = NULL;
  c->off = 0;
  c->len = rest;
  c->cap = cap;
  memcpy(c->data, (const char *)p + fit, rest);
  if (t)
    t->next = c;
  else
    q->head = c;
  q->tail = c;
  q->bytes += n;
  return 0;
}

void ame__oq_splice(ame__oqueue_t *dst, ame__oqueue_t *src) {
  if (src->head == NULL) return;
  if (dst->tail)
    dst->tail->next = src->head;
  else
    dst->head = src->head;
  dst->tail = src->tail;
  dst->bytes += src->bytes;
  src->head = src->tail = NULL;
  src->bytes = 0;
}

void ame__oq_consume(ame__oqueue_t *q, size_t n) {
  q->bytes -= n;
  /* Free the chunks taken whole; advance into the first one that was not. */
  while (q->head) {
    struct ame__chunk *c = q->head;
    size_t in = c->len - c->off;
    if (n < in) {
      c->off += n;
      break;
    }
    n -= in;
    q->head = c->next;
    if (q->head == NULL) q->tail = NULL;
    free(c);
  }
}

int ame__oq_flush(ame__oqueue_t *q, int fd, size_t *sent) {
  size_t total = 0;
  int rc = 0;
  while (q->head) {
    struct iovec iov[FLUSH_IOV];
    int n = 0;
    size_t offered = 0;
    for (struct ame__chunk *c = q->head; c && n < FLUSH_IOV; c = c->next) {
      if (c->len == c->off) continue;
      iov[n].iov_base = c->data + c->off;
      iov[n].iov_len = c->len - c->off;
      offered += iov[n].iov_len;
      n++;
    }
    if (n == 0) break;
    ssize_t r = n == 1 ? ame__sock_send(fd, iov[0].iov_base, iov[0].iov_len)
                       : ame__sock_sendv(fd, iov, n);
    if (r < 0) {
      rc = (int)r;
      break;
    }
    total += (size_t)r;
    ame__oq_consume(q, (size_t)r);
    if ((size_t)r < offered) { /* the kernel took less: it is full */
      rc = -EAGAIN;
      break;
    }
  }
  if (sent) *sent = total;
  return rc;
}

void ame__oq_clear(ame__oqueue_t *q) {
  struct ame__chunk *c = q->head;
  while (c) {
    struct ame__chunk *next = c->next;
    free(c);
    c = next;
  }
  q->head = q->tail = NULL;
  q->bytes = 0;
}
