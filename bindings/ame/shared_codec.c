/*
** bindings/ame/shared_codec.c — how ame.shared stores Python values: the
** codec (below, the format), and the private byte buffers the values are
** encoded into and copied out to.  Encoding and decoding run with the GIL;
** the buffers' functions need nothing of Python, so that transaction
** bodies (shared.c) may grow a buffer with the GIL released.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "shared_codec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *int_to_bytes, *int_from_bytes, *int_bit_length;
static PyObject *str_little, *str_signed_kw;

/* ------------------------------------------------------------------------
** Private byte buffers.
*/

/* Make room for n more bytes.  Return 0 or -1 (out of memory; nothing
** set: callers may not hold the GIL). */
int amepy_buf_room(struct amepy_buf *b, size_t n) {
  if (n <= b->cap - b->len) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n) {
    if (cap > SIZE_MAX / 2) return -1;
    cap *= 2;
  }
  char *p = realloc(b->p, cap);
  if (p == NULL) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

void amepy_buf_free(struct amepy_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------
** The codec.  A value is one tag byte and what the tag says follows:
**
**   0x00 None   0x01 False   0x02 True
**   0x03 int in [-2^63, 2^63): its zigzag form as a varint
**   0x04 other int: varint n, then n bytes, two's complement, little-endian
**   0x05 float: 8 bytes, IEEE 754 binary64, little-endian
**   0x06 str: varint n, then n bytes of UTF-8 (lone surrogates kept, as
**        Python's "surrogatepass" does)
**   0x07 bytes: varint n, then the n bytes
**   0x08 tuple, 0x09 list: varint n, then n values
**   0x0a dict: varint n, then n (key, value) pairs
**
** Varints are LEB128 (7 bits a byte, low first, high bit: more follows).
** Keys (a shared dict's, and a dict value's) are the hashable subset:
** None, bool, int, float, str, bytes and tuples of those; a key is looked
** up by its encoded bytes, so 1, 1.0 and True are three different keys.
** Subclasses of these types are stored as the base type.  Nesting is
** limited to MAX_DEPTH levels (which also refuses a list that contains
** itself).
*/

enum { C_NONE = 0, C_FALSE, C_TRUE, C_INT, C_BIGINT, C_FLOAT, C_STR,
       C_BYTES, C_TUPLE, C_LIST, C_DICT };
_Static_assert(C_INT == AMEPY_C_INT, "shared.c's dict.add knows the int tag");
#define MAX_DEPTH 100

static int put_byte(struct amepy_buf *b, unsigned char c) {
  if (amepy_buf_room(b, 1) < 0) return -1;
  b->p[b->len++] = (char)c;
  return 0;
}

static int put_varint(struct amepy_buf *b, uint64_t v) {
  if (amepy_buf_room(b, 10) < 0) return -1;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    b->p[b->len++] = (char)(c | (v ? 0x80 : 0));
  } while (v);
  return 0;
}

int amepy_buf_put(struct amepy_buf *b, const void *p, size_t n) {
  if (amepy_buf_room(b, n) < 0) return -1;
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* A tag, a varint length n and n bytes (one reservation: the common
** case, a str key, stays short). */
static int put_tagged(struct amepy_buf *b, unsigned char tag, const void *p,
                      size_t n) {
  if (n > SIZE_MAX - 11 || amepy_buf_room(b, 11 + n) < 0) return -1;
  unsigned char *o = (unsigned char *)b->p + b->len;
  *o++ = tag;
  uint64_t v = n;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    *o++ = c | (v ? 0x80 : 0);
  } while (v);
  if (n) memcpy(o, p, n);
  b->len = (size_t)(o + n - (unsigned char *)b->p);
  return 0;
}

static int unstorable(PyObject *o, int key) {
  if (key)
    PyErr_Format(PyExc_TypeError,
                 "ame.shared: a key must be str, bytes, int, float, bool, "
                 "None or a tuple of those, not %.200s",
                 Py_TYPE(o)->tp_name);
  else
    PyErr_Format(PyExc_TypeError,
                 "ame.shared: cannot store a %.200s (values are str, bytes, "
                 "int, float, bool, None, and tuples, lists and dicts of "
                 "them)",
                 Py_TYPE(o)->tp_name);
  return -1;
}

static int encode_bigint(struct amepy_buf *b, PyObject *o) {
  PyObject *bits = PyObject_CallOneArg(int_bit_length, o);
  if (bits == NULL) return -1;
  Py_ssize_t nbits = PyLong_AsSsize_t(bits);
  Py_DECREF(bits);
  if (nbits < 0) return -1;
  PyObject *n = PyLong_FromSsize_t(nbits / 8 + 1); /* room for the sign */
  if (n == NULL) return -1;
  PyObject *args[4] = {o, n, str_little, Py_True};
  PyObject *bytes = PyObject_Vectorcall(int_to_bytes, args, 3, str_signed_kw);
  Py_DECREF(n);
  if (bytes == NULL) return -1;
  int rc = put_tagged(b, C_BIGINT, PyBytes_AS_STRING(bytes),
                      (size_t)PyBytes_GET_SIZE(bytes));
  Py_DECREF(bytes);
  if (rc < 0) PyErr_NoMemory();
  return rc;
}

/* Append o's encoding to b.  Return 0, or -1 with TypeError (not
** storable) or MemoryError set.  Runs no Python code of the caller's. */
static int encode(struct amepy_buf *b, PyObject *o, int depth, int key) {
  if (depth > MAX_DEPTH) {
    PyErr_Format(PyExc_TypeError,
                 "ame.shared: value nested more than %d levels deep (or "
                 "containing itself)",
                 MAX_DEPTH);
    return -1;
  }
  int rc;
  if (PyUnicode_CheckExact(o) && PyUnicode_IS_READY(o) &&
      PyUnicode_IS_ASCII(o)) {
    /* The common key: its characters are its UTF-8. */
    return put_tagged(b, C_STR, PyUnicode_DATA(o),
                      (size_t)PyUnicode_GET_LENGTH(o)) < 0
               ? (PyErr_NoMemory(), -1)
               : 0;
  }
  if (o == Py_None) {
    rc = put_byte(b, C_NONE);
  } else if (o == Py_False || o == Py_True) {
    rc = put_byte(b, o == Py_True ? C_TRUE : C_FALSE);
  } else if (PyLong_Check(o)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) return encode_bigint(b, o);
    if (v == -1 && PyErr_Occurred()) return -1;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    rc = put_byte(b, C_INT) < 0 ? -1 : put_varint(b, z);
  } else if (PyFloat_Check(o)) {
    char f[8];
    if (PyFloat_Pack8(PyFloat_AS_DOUBLE(o), f, 1) < 0) return -1;
    rc = put_byte(b, C_FLOAT) < 0 ? -1 : amepy_buf_put(b, f, 8);
  } else if (PyUnicode_Check(o)) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s != NULL) {
      rc = put_tagged(b, C_STR, s, (size_t)n);
    } else {
      /* Lone surrogates: keep them, as surrogatepass does. */
      PyErr_Clear();
      PyObject *e = PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass");
      if (e == NULL) return -1;
      rc = put_tagged(b, C_STR, PyBytes_AS_STRING(e),
                      (size_t)PyBytes_GET_SIZE(e));
      Py_DECREF(e);
    }
  } else if (PyBytes_Check(o)) {
    rc = put_tagged(b, C_BYTES, PyBytes_AS_STRING(o),
                    (size_t)PyBytes_GET_SIZE(o));
  } else if (PyTuple_Check(o) || (!key && PyList_Check(o))) {
    int tuple = PyTuple_Check(o);
    Py_ssize_t n = tuple ? PyTuple_GET_SIZE(o) : PyList_GET_SIZE(o);
    if (put_byte(b, tuple ? C_TUPLE : C_LIST) < 0 ||
        put_varint(b, (uint64_t)n) < 0)
      return PyErr_NoMemory(), -1;
    /* Encoding runs no Python code, so a list cannot change under us. */
    for (Py_ssize_t i = 0; i < n; i++) {
      PyObject *item = tuple ? PyTuple_GET_ITEM(o, i) : PyList_GET_ITEM(o, i);
      if (encode(b, item, depth + 1, key) < 0) return -1;
    }
    return 0;
  } else if (!key && PyDict_Check(o)) {
    if (put_byte(b, C_DICT) < 0 ||
        put_varint(b, (uint64_t)PyDict_GET_SIZE(o)) < 0)
      return PyErr_NoMemory(), -1;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) {
      if (encode(b, k, depth + 1, 1) < 0 || encode(b, v, depth + 1, 0) < 0)
        return -1;
    }
    return 0;
  } else {
    return unstorable(o, key);
  }
  if (rc < 0) PyErr_NoMemory();
  return rc;
}

int amepy_encode(struct amepy_buf *b, PyObject *o, int key) {
  return encode(b, o, 0, key);
}

struct rd {
  const unsigned char *p, *end;
};

static PyObject *corrupt(void) {
  PyErr_SetString(PyExc_ValueError,
                  "ame.shared: a value in the shared heap is corrupt (not "
                  "written by this version of ame.shared?)");
  return NULL;
}

static int get_varint(struct rd *r, uint64_t *out) {
  uint64_t v = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return -1;
    unsigned char c = *r->p++;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

/* Read a length that must fit what is left. */
static int get_len(struct rd *r, size_t *out) {
  uint64_t n;
  if (get_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
  *out = (size_t)n;
  return 0;
}

static PyObject *decode(struct rd *r, int depth) {
  if (r->p >= r->end || depth > MAX_DEPTH) return corrupt();
  unsigned tag = *r->p++;
  size_t n;
  uint64_t u;
  switch (tag) {
  case C_NONE:
    Py_RETURN_NONE;
  case C_FALSE:
    Py_RETURN_FALSE;
  case C_TRUE:
    Py_RETURN_TRUE;
  case C_INT:
    if (get_varint(r, &u) < 0) return corrupt();
    return PyLong_FromLongLong((long long)(u >> 1) ^ -(long long)(u & 1));
  case C_BIGINT: {
    if (get_len(r, &n) < 0) return corrupt();
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)r->p,
                                                (Py_ssize_t)n);
    if (bytes == NULL) return NULL;
    r->p += n;
    PyObject *args[3] = {bytes, str_little, Py_True};
    PyObject *v = PyObject_Vectorcall(int_from_bytes, args, 2, str_signed_kw);
    Py_DECREF(bytes);
    return v;
  }
  case C_FLOAT: {
    if (r->end - r->p < 8) return corrupt();
    double d = PyFloat_Unpack8((const char *)r->p, 1);
    r->p += 8;
    return PyFloat_FromDouble(d);
  }
  case C_STR:
  case C_BYTES: {
    if (get_len(r, &n) < 0) return corrupt();
    const char *s = (const char *)r->p;
    r->p += n;
    return tag == C_STR
               ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "surrogatepass")
               : PyBytes_FromStringAndSize(s, (Py_ssize_t)n);
  }
  case C_TUPLE:
  case C_LIST: {
    /* Each item takes at least one byte: a count larger is corrupt. */
    if (get_len(r, &n) < 0) return corrupt();
    PyObject *o = tag == C_TUPLE ? PyTuple_New((Py_ssize_t)n)
                                 : PyList_New((Py_ssize_t)n);
    if (o == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
      PyObject *item = decode(r, depth + 1);
      if (item == NULL) {
        Py_DECREF(o);
        return NULL;
      }
      if (tag == C_TUPLE)
        PyTuple_SET_ITEM(o, (Py_ssize_t)i, item);
      else
        PyList_SET_ITEM(o, (Py_ssize_t)i, item);
    }
    return o;
  }
  case C_DICT: {
    if (get_len(r, &n) < 0) return corrupt();
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
      PyObject *k = decode(r, depth + 1);
      PyObject *v = k ? decode(r, depth + 1) : NULL;
      int rc = v ? PyDict_SetItem(d, k, v) : -1;
      Py_XDECREF(k);
      Py_XDECREF(v);
      if (rc < 0) {
        Py_DECREF(d);
        return NULL;
      }
    }
    return d;
  }
  default:
    return corrupt();
  }
}

PyObject *amepy_decode(const char *p, size_t n) {
  struct rd r = {(const unsigned char *)p, (const unsigned char *)p + n};
  PyObject *o = decode(&r, 0);
  if (o && r.p != r.end) {
    Py_DECREF(o);
    return corrupt();
  }
  return o;
}

int amepy_codec_init(void) {
  if (int_to_bytes) return 0;
  PyObject *t = (PyObject *)&PyLong_Type;
  int_to_bytes = PyObject_GetAttrString(t, "to_bytes");
  int_from_bytes = PyObject_GetAttrString(t, "from_bytes");
  int_bit_length = PyObject_GetAttrString(t, "bit_length");
  str_little = PyUnicode_InternFromString("little");
  str_signed_kw = Py_BuildValue("(s)", "signed");
  if (!int_to_bytes || !int_from_bytes || !int_bit_length || !str_little ||
      !str_signed_kw) {
    Py_CLEAR(int_to_bytes);
    return -1;
  }
  return 0;
}
