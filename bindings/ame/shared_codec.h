/*
** bindings/ame/shared_codec.h — ame.shared's codec and private byte
** buffers (shared_codec.c; the format is described there and in
** ame/shared.py).  Internal to the extension.
*/
#ifndef AMEPY_SHARED_CODEC_H
#define AMEPY_SHARED_CODEC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>

/* A growable private byte buffer. */
struct amepy_buf {
  char *p;
  size_t len, cap;
};

/* Make room for n more bytes; append n bytes.  Return 0, or -1 if memory
** ran out (no exception set: no GIL needed). */
int amepy_buf_room(struct amepy_buf *b, size_t n);
int amepy_buf_put(struct amepy_buf *b, const void *p, size_t n);
void amepy_buf_free(struct amepy_buf *b);

/* Module exec (GIL): what the codec needs of Python.  Return 0 or -1. */
int amepy_codec_init(void);

/* Append o's encoding to b (key: o must be a key, the hashable subset).
** Return 0, or -1 with TypeError (not storable) or MemoryError set.  Runs
** no Python code of the caller's. */
int amepy_encode(struct amepy_buf *b, PyObject *o, int key);

/* The tag of an int of 64 bits (then its zigzag form as a varint): the
** form dict.add reads and writes without Python (shared.c). */
#define AMEPY_C_INT 0x03

/* Decode exactly one value from [p, p+n).  Return a new reference, or NULL
** with ValueError (not a value) or MemoryError set. */
PyObject *amepy_decode(const char *p, size_t n);

#endif
