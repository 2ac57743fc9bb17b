/*
** reactor/src/streambuf.h — the buffering of a byte stream on a raw
** socket, one module for both kinds of streams ame has: the reactor's
** (ame_stream_t, stream.c) and the Python binding's TCP transports
** (bindings/ame/transport.c).  Both watch the fd with a uv_poll and do
** their own reads and writes through sockio.h; what they keep between
** readiness events is one of these:
**
**   ame__ibuf_t     an input buffer: bytes read and not yet consumed.  It
**                   grows at the end, is consumed from the front, and can
**                   be taken whole (its memory handed over, no copy) and
**                   put back in front of what came in meanwhile.
**   ame__oqueue_t   an output queue: a list of chunks, appended to by
**                   copying (small writes fill the last chunk), flushed
**                   with writev until it is empty or the kernel's buffer
**                   is full, and spliced whole from one queue to another
**                   (the binding's writes cross from the Python thread to
**                   the worker that way).  Its byte count is what the
**                   watermarks compare.
**
** Neither does any locking nor knows which thread it is on: a buffer
** belongs to whoever its user says (the stream's worker; the binding's
** lock).  Internal: not in ame/reactor.h, hidden in libame-reactor; the
** binding links the static library.
**
** Error convention (as sockio.h): a negative errno; "would block" is
** -EAGAIN.
*/
#ifndef AME_STREAMBUF_H
#define AME_STREAMBUF_H

#include <stddef.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------
** Input buffer.  The bytes held are p[off, off + len); cap is p's size.
** All zero is an empty buffer.
*/
typedef struct ame__ibuf {
  char *p;                   /* malloc'd, or NULL */
  size_t off;                /* consumed bytes before the data */
  size_t len;                /* bytes held */
  size_t cap;                /* size of p */
} ame__ibuf_t;

static inline const char *ame__ibuf_data(const ame__ibuf_t *b) {
  return b->p + b->off;
}

/* Append n bytes of p.  Return 0, or -ENOMEM (b unchanged). */
int ame__ibuf_append(ame__ibuf_t *b, const void *p, size_t n);

/* Drop the first n (<= len) bytes. */
void ame__ibuf_consume(ame__ibuf_t *b, size_t n);

/* Move everything b holds (its memory) to *out, which must be empty;
** b is left empty. */
static inline void ame__ibuf_take(ame__ibuf_t *b, ame__ibuf_t *out) {
  *out = *b;
  b->p = NULL;
  b->off = b->len = b->cap = 0;
}

/* Put front (taken from b earlier, not consumed) back in front of what b
** holds now; front is left empty.  Return 0, or -ENOMEM: then front's
** bytes are lost (freed) and b is unchanged. */
int ame__ibuf_putback(ame__ibuf_t *b, ame__ibuf_t *front);

/* Free b's memory; b is left empty. */
void ame__ibuf_free(ame__ibuf_t *b);

/* ------------------------------------------------------------------------
** Output queue.  All zero is an empty queue.
*/
struct ame__chunk {
  struct ame__chunk *next;
  size_t off;                /* bytes already sent */
  size_t len;                /* bytes written into data */
  size_t cap;                /* size of data */
  char data[];
};

typedef struct ame__oqueue {
  struct ame__chunk *head, *tail;
  size_t bytes;              /* queued and not yet sent */
} ame__oqueue_t;

/* Append a copy of n bytes of p.  Return 0, or -ENOMEM (q unchanged). */
int ame__oq_append(ame__oqueue_t *q, const void *p, size_t n);

/* Move every chunk of src to the end of dst (no copy); src is left
** empty. */
void ame__oq_splice(ame__oqueue_t *dst, ame__oqueue_t *src);

/* Send what q holds on socket fd (writev, without blocking or SIGPIPE),
** until it is empty or the kernel takes no more; the chunks sent are
** freed.  *sent (may be NULL) gets the bytes sent by this call.  Return
** 0 once q is empty, -EAGAIN if bytes are left (wait for POLLOUT), or
** another -errno: the socket failed (q keeps what was not sent). */
int ame__oq_flush(ame__oqueue_t *q, int fd, size_t *sent);

/* Drop the first n bytes queued (n at most q->bytes): chunks taken whole
** are freed. */
void ame__oq_consume(ame__oqueue_t *q, size_t n);

/* Drop everything queued; q is left empty. */
void ame__oq_clear(ame__oqueue_t *q);

#endif /* AME_STREAMBUF_H */
