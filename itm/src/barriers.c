/*
** itm/src/barriers.c — the ABI's loads and stores (_ITM_R*, _ITM_W* and
** their RaR/RaW/RfW/WaR/WaW variants), undo logging (_ITM_L*), and the
** transactional memcpy, memmove and memset, on ame's word-based STM.
**
** ame's granule is the aligned 64-bit word.  An aligned 8-byte access is
** one word load or store, an aligned 4-byte one ame's 32-bit access;
** anything else (bytes, 16-bit values, long double, complex and vector
** types, unaligned data) goes word by word: a load reads each word it
** touches through the STM and takes its bytes, a store buffers exactly
** its bytes of each word (ame__store_masked).  The other bytes of a word
** are never written, so a byte store does not lose a neighbour's
** concurrent store: the two conflict on the word's orec, and the later
** commit writes back only its own bytes.  The variants (read after read,
** after write, for write; write after read, after write) are hints the
** STM does not need: each is the plain barrier.
**
** The calling thread's own stack is written directly, under a claim of
** its orec and with undo logging above the transaction's frames (itm.h):
** the compiler may read with plain loads a local it wrote through a
** barrier, which only write-through makes consistent.  Stores to the
** block the transaction allocated last are plain (itm_captured()).  Loads
** of either go through the STM, which reads memory for any word it has
** not buffered.
*/
#include "itm.h"

#include <string.h>

#define ALIGNED(p, n) (((uintptr_t)(p) & ((n)-1)) == 0)

void ame_itm__load_bytes(ame_tx_t *tx, void *dst, const void *src,
                         size_t n) {
  unsigned char *d = dst;
  uintptr_t a = (uintptr_t)src;
  while (n > 0) {
    uintptr_t w = a & ~(uintptr_t)7;
    size_t off = a - w, k = 8 - off < n ? 8 - off : n;
    uintptr_t v = ame__load_w(tx, (const uintptr_t *)w);
    memcpy(d, (unsigned char *)&v + off, k);
    d += k;
    a += k;
    n -= k;
  }
}

void ame_itm__store_bytes(ame_tx_t *tx, void *dst, const void *src,
                          size_t n) {
  const unsigned char *s = src;
  uintptr_t a = (uintptr_t)dst;
  while (n > 0) {
    uintptr_t w = a & ~(uintptr_t)7;
    size_t off = a - w, k = 8 - off < n ? 8 - off : n;
    uintptr_t v = 0;
    memcpy((unsigned char *)&v + off, s, k);
    if (k == 8) {
      ame_store_word_tx(tx, (uintptr_t *)w, v);
    } else {
      uintptr_t mask = (((uintptr_t)1 << (8 * k)) - 1) << (8 * off);
      ame__store_masked(tx, (uintptr_t *)w, v, mask);
    }
    s += k;
    a += k;
    n -= k;
  }
}

/* _ITM_L*: undo-log data the thread owns (ame_tx_save). */
static void log_bytes(const char *fn, void *p, size_t n) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx(fn);
  if (itm_on_stack(t, p)) {
    ame_itm__stack_log(t, p, n);
    return;
  }
  if (ame_tx_save(tx, p, n) != 0) ame_itm__fatal("%s: out of memory", fn);
}

/* ------------------------------------------------------------------------
** Typed barriers.  GEN_BARRIERS(T, type, LOAD, STORE) defines the seven
** functions of the ABI for _ITM_TYPE_T from a load and a store body.
*/

typedef uint8_t itm_U1;
typedef uint16_t itm_U2;
typedef uint32_t itm_U4;
typedef uint64_t itm_U8;
typedef float itm_F;
typedef double itm_D;
typedef long double itm_E;
typedef float _Complex itm_CF;
typedef double _Complex itm_CD;
typedef long double _Complex itm_CE;
typedef int itm_M64 __attribute__((vector_size(8), may_alias));
typedef float itm_M128 __attribute__((vector_size(16), may_alias));
typedef float itm_M256 __attribute__((vector_size(32), may_alias));

/* The barriers' fast paths are leaf functions with no stack frame: what
** needs memory for a value (unaligned and stack accesses) is out of line
** (NOINLINE), and the engine's slow paths are tail calls.  The loads take
** the thread's descriptor from ame_itm__self.ld, never NULL: on a thread
** outside any transaction it is ame_itm__nobody, whose locked orec sends
** the load to its slow path, where the misuse is reported. */
#define NOINLINE __attribute__((noinline))

/* The load barriers' descriptor, checked (for the paths that do not go
** through an orec first). */
static inline ame_tx_t *ld_tx(ame_tx_t *tx, const char *fn) {
  if (ITM_UNLIKELY(tx == (ame_tx_t *)&ame_itm__nobody))
    ame_itm__fatal("%s called outside a transaction", fn);
  return tx;
}

#define GEN_R(T, ATTR, NAME)                                                \
  ITM_EXPORT ATTR itm_##T _ITM_##NAME##T(const itm_##T *p) {                \
    return load_##T(ame_itm__self.ld, p, "_ITM_" #NAME #T);                 \
  }
#define GEN_W(T, ATTR, NAME)                                                \
  ITM_EXPORT ATTR void _ITM_##NAME##T(itm_##T *p, itm_##T v) {              \
    struct itm_thread *t = &ame_itm__self;                                  \
    if (itm_captured(t, p, sizeof *p)) {                                    \
      memcpy(p, &v, sizeof v); /* the vector types may be under-aligned */ \
      return;                                                               \
    }                                                                       \
    if (ITM_UNLIKELY(itm_on_stack(t, p))) {                                 \
      stack_##T(t, p, v);                                                   \
      return;                                                               \
    }                                                                       \
    store_##T(itm_tx("_ITM_" #NAME #T), p, v);                              \
  }
#define GEN_L(T, ATTR)                                                      \
  ITM_EXPORT ATTR void _ITM_L##T(const itm_##T *p) {                        \
    log_bytes("_ITM_L" #T, (void *)p, sizeof *p);                           \
  }
/* A store to the thread's own stack: logged, then written. */
#define GEN_STACK(T, ATTR)                                                  \
  static NOINLINE ATTR void stack_##T(struct itm_thread *t, itm_##T *p,     \
                                      itm_##T v) {                          \
    ame_itm__stack_log(t, p, sizeof *p);                                    \
    memcpy(p, &v, sizeof v);                                                \
  }
#define GEN_BARRIERS(T, ATTR)                                               \
  GEN_STACK(T, ATTR)                                                        \
  GEN_R(T, ATTR, R)                                                         \
  GEN_R(T, ATTR, RaR)                                                       \
  GEN_R(T, ATTR, RaW)                                                       \
  GEN_R(T, ATTR, RfW)                                                       \
  GEN_W(T, ATTR, W)                                                         \
  GEN_W(T, ATTR, WaR)                                                       \
  GEN_W(T, ATTR, WaW)                                                       \
  GEN_L(T, ATTR)

/* The generic access: the bytes of the value, word by word. */
#define GEN_GENERIC(T, ATTR, SIZE)                                          \
  static inline ATTR itm_##T load_##T(ame_tx_t *tx, const itm_##T *p,       \
                                      const char *fn) {                     \
    itm_##T v;                                                              \
    memset(&v, 0, sizeof v);                                                \
    ame_itm__load_bytes(ld_tx(tx, fn), &v, p, SIZE);                        \
    return v;                                                               \
  }                                                                         \
  static inline ATTR void store_##T(ame_tx_t *tx, itm_##T *p, itm_##T v) {  \
    ame_itm__store_bytes(tx, p, &v, SIZE);                                  \
  }

/* Unaligned 8- and 4-byte accesses, as their bits (a load's address
** first, where the barrier received it). */
static NOINLINE uint64_t load_bytes8(const void *p, ame_tx_t *tx,
                                     const char *fn) {
  uint64_t v;
  ame_itm__load_bytes(ld_tx(tx, fn), &v, p, 8);
  return v;
}
static NOINLINE void store_bytes8(ame_tx_t *tx, void *p, uint64_t v) {
  ame_itm__store_bytes(tx, p, &v, 8);
}
static NOINLINE uint32_t load_bytes4(const void *p, ame_tx_t *tx,
                                     const char *fn) {
  uint32_t v;
  ame_itm__load_bytes(ld_tx(tx, fn), &v, p, 4);
  return v;
}
static NOINLINE void store_bytes4(ame_tx_t *tx, void *p, uint32_t v) {
  ame_itm__store_bytes(tx, p, &v, 4);
}

/* The slow paths of the aligned loads below (the address first, where
** the barrier received it). */
static NOINLINE uintptr_t load_slow(const uintptr_t *a, ame_tx_t *tx,
                                    const char *fn) {
  return ame__load_slow(ld_tx(tx, fn), a);
}
static NOINLINE uint32_t load_slow_u32(const uint32_t *a, ame_tx_t *tx,
                                       const char *fn) {
  return ame_load_u32_tx(ld_tx(tx, fn), a);
}

/* An aligned word load: ame__load_w (stm_inline.h) with the slow path
** above. */
static inline uintptr_t load_w(ame_tx_t *tx, const uintptr_t *a,
                               const char *fn) {
  struct ame__txhot *h = (struct ame__txhot *)tx;
  uintptr_t *o = ame__orec_of(h, (uintptr_t)a);
  uintptr_t l = __atomic_load_n(o, __ATOMIC_ACQUIRE);
  if (ITM_LIKELY(!(l & 1) && l <= h->snapshot)) {
    uintptr_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
    if (ITM_LIKELY(__atomic_load_n(o, __ATOMIC_RELAXED) == l)) {
      if (ITM_UNLIKELY(ame__log_read(h, (uintptr_t)a, l) != 0))
        return load_slow(a, tx, fn);
      return v;
    }
  }
  return load_slow(a, tx, fn);
}

/* An aligned 32-bit load: the same on the containing word's orec, reading
** only the 4 bytes (they may be all there is), and logging the word as
** ame_load_u32_tx does. */
static inline uint32_t load_u32(ame_tx_t *tx, const uint32_t *a,
                                const char *fn) {
  struct ame__txhot *h = (struct ame__txhot *)tx;
  uintptr_t w = (uintptr_t)a & ~(uintptr_t)7;
  uintptr_t *o = ame__orec_of(h, w);
  uintptr_t l = __atomic_load_n(o, __ATOMIC_ACQUIRE);
  if (ITM_LIKELY(!(l & 1) && l <= h->snapshot)) {
    uint32_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
    if (ITM_LIKELY(__atomic_load_n(o, __ATOMIC_RELAXED) == l)) {
      if (ITM_UNLIKELY(ame__log_read(h, w, l) != 0))
        return load_slow_u32(a, tx, fn);
      return v;
    }
  }
  return load_slow_u32(a, tx, fn);
}

/* 8-byte values: one word when aligned. */
#define GEN_WORD(T)                                                         \
  static inline itm_##T load_##T(ame_tx_t *tx, const itm_##T *p,            \
                                const char *fn) {                           \
    uint64_t w;                                                             \
    itm_##T v;                                                              \
    if (ITM_LIKELY(ALIGNED(p, 8)))                                          \
      w = load_w(tx, (const uintptr_t *)(const void *)p, fn);               \
    else                                                                    \
      w = load_bytes8(p, tx, fn);                                           \
    memcpy(&v, &w, 8);                                                      \
    return v;                                                               \
  }                                                                         \
  static inline void store_##T(ame_tx_t *tx, itm_##T *p, itm_##T v) {       \
    uint64_t w;                                                             \
    memcpy(&w, &v, 8);                                                      \
    if (ITM_LIKELY(ALIGNED(p, 8)))                                          \
      ame_store_word_tx(tx, (uintptr_t *)(void *)p, w);                     \
    else                                                                    \
      store_bytes8(tx, p, w);                                               \
  }

/* 4-byte values: ame's 32-bit access when aligned. */
#define GEN_HALF(T)                                                         \
  static inline itm_##T load_##T(ame_tx_t *tx, const itm_##T *p,            \
                                const char *fn) {                           \
    uint32_t w;                                                             \
    itm_##T v;                                                              \
    if (ITM_LIKELY(ALIGNED(p, 4)))                                          \
      w = load_u32(tx, (const uint32_t *)(const void *)p, fn);              \
    else                                                                    \
      w = load_bytes4(p, tx, fn);                                           \
    memcpy(&v, &w, 4);                                                      \
    return v;                                                               \
  }                                                                         \
  static inline void store_##T(ame_tx_t *tx, itm_##T *p, itm_##T v) {       \
    uint32_t w;                                                             \
    memcpy(&w, &v, 4);                                                      \
    if (ITM_LIKELY(ALIGNED(p, 4)))                                          \
      ame_store_u32_tx(tx, (uint32_t *)(void *)p, w);                       \
    else                                                                    \
      store_bytes4(tx, p, w);                                               \
  }

GEN_GENERIC(U1, , 1)
GEN_GENERIC(U2, , 2)
GEN_HALF(U4)
GEN_WORD(U8)
GEN_HALF(F)
GEN_WORD(D)
GEN_WORD(M64)
GEN_WORD(CF)
GEN_GENERIC(CD, , 16)
GEN_GENERIC(M128, , 16)
#define AVX __attribute__((target("avx")))
GEN_GENERIC(M256, AVX, 32)

/* long double: x87's 80 bits (10 bytes) of its 16; a store writes those
** 10 bytes, as the processor's own store does. */
static inline itm_E load_E(ame_tx_t *tx, const itm_E *p, const char *fn) {
  itm_E v = 0;
  ame_itm__load_bytes(ld_tx(tx, fn), &v, p, 10);
  return v;
}
static inline void store_E(ame_tx_t *tx, itm_E *p, itm_E v) {
  ame_itm__store_bytes(tx, p, &v, 10);
}
static inline itm_CE load_CE(ame_tx_t *tx, const itm_CE *p,
                             const char *fn) {
  itm_CE v = 0;
  tx = ld_tx(tx, fn);
  ame_itm__load_bytes(tx, &v, p, 10);
  ame_itm__load_bytes(tx, (char *)&v + 16, (const char *)p + 16, 10);
  return v;
}
static inline void store_CE(ame_tx_t *tx, itm_CE *p, itm_CE v) {
  ame_itm__store_bytes(tx, p, &v, 10);
  ame_itm__store_bytes(tx, (char *)p + 16, (char *)&v + 16, 10);
}

GEN_BARRIERS(U1, )
GEN_BARRIERS(U2, )
GEN_BARRIERS(U4, )
GEN_BARRIERS(U8, )
GEN_BARRIERS(F, )
GEN_BARRIERS(D, )
GEN_BARRIERS(E, )
GEN_BARRIERS(CF, )
GEN_BARRIERS(CD, )
GEN_BARRIERS(CE, )
GEN_BARRIERS(M64, )
GEN_BARRIERS(M128, )
GEN_BARRIERS(M256, AVX)

ITM_EXPORT void _ITM_LB(const void *p, size_t n) {
  log_bytes("_ITM_LB", (void *)p, n);
}

/* ------------------------------------------------------------------------
** memcpy, memmove, memset.  Rn/Wn: that side is not shared (plain
** access); Rt/Wt (and their aR/aW hints): through the STM.  Copies go
** through a buffer in chunks; memmove picks the direction so that no
** chunk reads what an earlier one wrote.
*/

#define CHUNK 256

static void copy(void *dst, const void *src, size_t n, int rt, int wt,
                 int backward) {
  unsigned char buf[CHUNK];
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_memcpy/_ITM_memmove");
  /* The transaction's own frames (below keep_sp) are nobody else's: read
  ** plainly.  Above them the stack may be written by another thread
  ** through a pointer (itm.h): read through the STM, as the loads do. */
  if (rt && itm_on_stack(t, src) && (uintptr_t)src + n <= t->keep_sp)
    rt = 0;
  if (wt && itm_captured(t, dst, n)) {
    wt = 0;
  } else if (wt && itm_on_stack(t, dst)) {
    ame_itm__stack_log(t, dst, n);
    wt = 0;
  }
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < CHUNK ? n - done : CHUNK;
    size_t at = backward ? n - done - k : done;
    const unsigned char *s = (const unsigned char *)src + at;
    unsigned char *d = (unsigned char *)dst + at;
    if (rt)
      ame_itm__load_bytes(tx, buf, s, k);
    else
      memcpy(buf, s, k);
    if (wt)
      ame_itm__store_bytes(tx, d, buf, k);
    else
      memcpy(d, buf, k);
    done += k;
  }
}

#define GEN_COPY(NAME, RT, WT)                                              \
  ITM_EXPORT void _ITM_memcpy##NAME(void *d, const void *s, size_t n) {     \
    copy(d, s, n, RT, WT, 0);                                               \
  }                                                                         \
  ITM_EXPORT void _ITM_memmove##NAME(void *d, const void *s, size_t n) {    \
    copy(d, s, n, RT, WT, (uintptr_t)d > (uintptr_t)s);                     \
  }

GEN_COPY(RnWt, 0, 1)
GEN_COPY(RnWtaR, 0, 1)
GEN_COPY(RnWtaW, 0, 1)
GEN_COPY(RtWn, 1, 0)
GEN_COPY(RtWt, 1, 1)
GEN_COPY(RtWtaR, 1, 1)
GEN_COPY(RtWtaW, 1, 1)
GEN_COPY(RtaRWn, 1, 0)
GEN_COPY(RtaRWt, 1, 1)
GEN_COPY(RtaRWtaR, 1, 1)
GEN_COPY(RtaRWtaW, 1, 1)
GEN_COPY(RtaWWn, 1, 0)
GEN_COPY(RtaWWt, 1, 1)
GEN_COPY(RtaWWtaR, 1, 1)
GEN_COPY(RtaWWtaW, 1, 1)

static void set(void *dst, int c, size_t n) {
  unsigned char buf[CHUNK];
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_memset");
  if (itm_captured(t, dst, n) || itm_on_stack(t, dst)) {
    if (!itm_captured(t, dst, n)) ame_itm__stack_log(t, dst, n);
    memset(dst, c, n);
    return;
  }
  memset(buf, c, n < CHUNK ? n : CHUNK);
  for (size_t done = 0; done < n;) {
    size_t k = n - done < CHUNK ? n - done : CHUNK;
    ame_itm__store_bytes(tx, (unsigned char *)dst + done, buf, k);
    done += k;
  }
}

ITM_EXPORT void _ITM_memsetW(void *d, int c, size_t n) { set(d, c, n); }
ITM_EXPORT void _ITM_memsetWaR(void *d, int c, size_t n) { set(d, c, n); }
ITM_EXPORT void _ITM_memsetWaW(void *d, int c, size_t n) { set(d, c, n); }
