/*
** bindings/ame/timers.c — reactor.callLater and DelayedCall in C: the C
** half of AMEReactor's IReactorTime, with exactly the behaviour of
** Twisted 22.4's ReactorBase.callLater and base.DelayedCall.
**
** twisted.web calls callLater and DelayedCall.cancel once per request
** (TimeoutMixin.setTimeout) and DelayedCall.reset several times; in
** Twisted these are Python: a DelayedCall.__init__ setting ten attributes,
** two bound methods, a list append, and for cancel a call back into the
** reactor (_cancelCallLater).  Here they are C, and the data stays where
** Twisted's own Python code (runUntilCurrent, timeout, getDelayedCalls,
** _insertNewDelayedCalls, _moveCallLaterSooner, which stay Python) finds
** it.  Three types:
**
**   _ame.DelayedCallBase  A DelayedCall's fields as C slots behind data
**             descriptors (time, func, args, kw, resetter, canceller,
**             seconds, cancelled, called, delayed_time: readable, writable
**             and deletable as Twisted's instance attributes, holding the
**             very objects Twisted's code would store), an instance
**             __dict__ (creator, _repr, anything else) and weak
**             references; getTime, cancel, reset, delay, activate_delay,
**             active, < and <= in C, and __getstate__ / __setstate__, so
**             that copy.copy and copy.deepcopy work as on Twisted's
**             (whose fields are in its instance __dict__).
**   _ame.DelayedCall  class DelayedCall(DelayedCallBase,
**             twisted.internet.base.DelayedCall), made at module exec
**             when Twisted is importable: it is a base.DelayedCall for
**             isinstance, IDelayedCall.providedBy, and class attributes
**             (DelayedCall.debug, _repr), and its repr/str are Twisted's
**             own __repr__, which reads the C fields.
**   _ame.Timers  The first base of AMEReactor: callLater and
**             _cancelCallLater in C, and _newTimedCalls and _cancellations
**             as C fields behind data descriptors, so that ReactorBase's
**             code (self._newTimedCalls = [], self._cancellations -= 1)
**             works unchanged.
**
** What is looked up on every call, as Twisted does: reactor.seconds (tests
** replace it on the instance), reactor._cancelCallLater and
** _moveCallLaterSooner (bound when callLater runs, as in Twisted),
** DelayedCall.debug, and a DelayedCall's own fields.  Differences, none
** of which Twisted or its tests look at: callLater calls reactor.seconds
** once and stores that same object as the DelayedCall's `seconds` (Twisted
** looks it up twice); the C fields are not in the instance's __dict__;
** with debug on, the creator stack is the same frames as Twisted's (the
** C calls have no frames, so fewer are dropped from format_stack()).
**
** The module's Twisted objects and interned strings are process-wide
** statics, like transport.c's: one interpreter per process.
*/
#include "shared.h"
#include "timers.h"

#include <float.h>
#include <stddef.h>
#include <structmember.h>

typedef struct {
  PyObject_HEAD
  PyObject *time;         /* when to call, as seconds() counts */
  PyObject *func;         /* the callable (NULL once cancelled) */
  PyObject *args;         /* its positional arguments (NULL once cancelled) */
  PyObject *kw;           /* its keyword arguments (NULL once cancelled) */
  PyObject *resetter;     /* called with self when time moves sooner */
  PyObject *canceller;    /* called with self on cancel() */
  PyObject *seconds;      /* the clock: a no-argument callable */
  PyObject *cancelled;    /* 0, or 1 once cancelled */
  PyObject *called;       /* 0, or 1 once runUntilCurrent called it */
  PyObject *delayed_time; /* how much later than time it is due */
  PyObject *dict;         /* instance __dict__ */
  PyObject *weakreflist;
} DCObject;

typedef struct {
  PyObject_HEAD
  PyObject *new_calls;     /* _newTimedCalls: calls not yet on the heap */
  PyObject *cancellations; /* _cancellations: cancelled calls still on the
                              heap or in new_calls */
} TimersObject;

static PyTypeObject *dc_base_type; /* _ame.DelayedCallBase */
static PyObject *dc_class;         /* _ame.DelayedCall, or NULL */
static PyObject *tw_base;          /* module twisted.internet.base */
static PyObject *tw_dc_class;      /* twisted.internet.base.DelayedCall */
static PyObject *runtime_seconds;  /* DelayedCall's default seconds */
static PyObject *exc_cancelled;    /* twisted.internet.error.AlreadyCancelled */
static PyObject *exc_called;       /* twisted.internet.error.AlreadyCalled */
static PyObject *int_zero, *int_one, *float_zero, *str_empty;
static PyObject *str_seconds, *str_cancel_cl, *str_move_cl, *str_debug;
static PyObject *str_repr, *str_creator, *str_format_stack, *str_time;
static PyObject *str_activate_delay, *str_append, *str_delay, *str_callable;
static int assertions; /* Python runs assert statements (not -O) */

/* ------------------------------------------------------------------------
** Helpers.
*/

/* Return v, or NULL with AttributeError (v is an unset field `name` of
** obj), as reading a missing instance attribute does. */
static PyObject *field(PyObject *obj, PyObject *v, const char *name) {
  if (v == NULL)
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                 Py_TYPE(obj)->tp_name, name);
  return v;
}

/* Return the truth of field v of obj (1 or 0), or -1 with an exception. */
static int truth(PyObject *obj, PyObject *v, const char *name) {
  if (field(obj, v, name) == NULL) return -1;
  return PyObject_IsTrue(v);
}

/* a + b, a - b, a < b: exact floats in C (what float_add and friends would
** compute), anything else through the number protocol. */
static PyObject *add(PyObject *a, PyObject *b) {
  if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b))
    return PyFloat_FromDouble(PyFloat_AS_DOUBLE(a) + PyFloat_AS_DOUBLE(b));
  return PyNumber_Add(a, b);
}

static PyObject *sub(PyObject *a, PyObject *b) {
  if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b))
    return PyFloat_FromDouble(PyFloat_AS_DOUBLE(a) - PyFloat_AS_DOUBLE(b));
  return PyNumber_Subtract(a, b);
}

static int less(PyObject *a, PyObject *b) {
  if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b))
    return PyFloat_AS_DOUBLE(a) < PyFloat_AS_DOUBLE(b);
  return PyObject_RichCompareBool(a, b, Py_LT);
}

/* Call f(arg) and drop the result.  Return 0, or -1 with an exception. */
static int call1(PyObject *f, PyObject *arg) {
  Py_INCREF(f); /* f is a field: the call may replace it */
  PyObject *r = PyObject_CallOneArg(f, arg);
  Py_DECREF(f);
  if (r == NULL) return -1;
  Py_DECREF(r);
  return 0;
}

/* Set self.creator = format_stack()[:len - drop] if self.debug (what
** DelayedCall.__init__ does; drop counts the frames Twisted's slice drops
** that this C caller has not pushed).  Return 0, or -1 with an exception. */
static int maybe_creator(PyObject *self, Py_ssize_t drop) {
  PyObject *d = PyObject_GetAttr(self, str_debug);
  if (d == NULL) return -1;
  int on = PyObject_IsTrue(d);
  Py_DECREF(d);
  if (on <= 0) return on;
  if (tw_base == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "twisted.internet.base is missing");
    return -1;
  }
  PyObject *stack = PyObject_CallMethodNoArgs(tw_base, str_format_stack);
  if (stack == NULL) return -1;
  Py_ssize_t n = PySequence_Size(stack);
  PyObject *creator =
      n < 0 ? NULL : PySequence_GetSlice(stack, 0, n > drop ? n - drop : 0);
  Py_DECREF(stack);
  if (creator == NULL) return -1;
  int rc = PyObject_SetAttr(self, str_creator, creator);
  Py_DECREF(creator);
  return rc;
}

/* ------------------------------------------------------------------------
** DelayedCallBase.
*/

/* Raise AlreadyCancelled or AlreadyCalled, as cancel/reset/delay do, and
** return -1; or return 0 if the call is pending. */
static int check_pending(DCObject *self) {
  int c = truth((PyObject *)self, self->cancelled, "cancelled");
  if (c != 0) {
    if (c > 0) PyErr_SetNone(exc_cancelled);
    return -1;
  }
  c = truth((PyObject *)self, self->called, "called");
  if (c != 0) {
    if (c > 0) PyErr_SetNone(exc_called);
    return -1;
  }
  return 0;
}

static int DC_init(DCObject *self, PyObject *args, PyObject *kwds) {
  static char *kwlist[] = {"time",   "func",  "args",    "kw",
                           "cancel", "reset", "seconds", NULL};
  PyObject *time, *func, *a, *kw, *cancel, *reset;
  PyObject *seconds = runtime_seconds;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|O:DelayedCall", kwlist,
                                   &time, &func, &a, &kw, &cancel, &reset,
                                   &seconds))
    return -1;
  if (seconds == NULL) {
    PyErr_SetString(PyExc_TypeError, "DelayedCall: seconds is required "
                                     "(Twisted is not importable)");
    return -1;
  }
  Py_XSETREF(self->time, Py_NewRef(time));
  Py_XSETREF(self->func, Py_NewRef(func));
  Py_XSETREF(self->args, Py_NewRef(a));
  Py_XSETREF(self->kw, Py_NewRef(kw));
  Py_XSETREF(self->resetter, Py_NewRef(reset));
  Py_XSETREF(self->canceller, Py_NewRef(cancel));
  Py_XSETREF(self->seconds, Py_NewRef(seconds));
  Py_XSETREF(self->cancelled, Py_NewRef(int_zero));
  Py_XSETREF(self->called, Py_NewRef(int_zero));
  Py_XSETREF(self->delayed_time, Py_NewRef(float_zero));
  /* Twisted drops two frames: __init__'s and its caller's (callLater). */
  return maybe_creator((PyObject *)self, 1);
}

static PyObject *DC_getTime(DCObject *self, PyObject *unused) {
  (void)unused;
  PyObject *s = (PyObject *)self;
  if (field(s, self->time, "time") == NULL ||
      field(s, self->delayed_time, "delayed_time") == NULL)
    return NULL;
  return add(self->time, self->delayed_time);
}

static PyObject *DC_cancel(DCObject *self, PyObject *unused) {
  (void)unused;
  PyObject *s = (PyObject *)self;
  if (check_pending(self) < 0) return NULL;
  if (field(s, self->canceller, "canceller") == NULL ||
      call1(self->canceller, s) < 0)
    return NULL;
  Py_XSETREF(self->cancelled, Py_NewRef(int_one));
  PyObject *d = PyObject_GetAttr(s, str_debug);
  if (d == NULL) return NULL;
  int on = PyObject_IsTrue(d);
  Py_DECREF(d);
  if (on < 0) return NULL;
  if (on) {
    PyObject *r = PyObject_Repr(s);
    if (r == NULL) return NULL;
    int rc = PyObject_SetAttr(s, str_repr, r);
    Py_DECREF(r);
    if (rc < 0) return NULL;
  }
  /* del self.func, self.args, self.kw */
  if (field(s, self->func, "func") == NULL) return NULL;
  Py_CLEAR(self->func);
  if (field(s, self->args, "args") == NULL) return NULL;
  Py_CLEAR(self->args);
  if (field(s, self->kw, "kw") == NULL) return NULL;
  Py_CLEAR(self->kw);
  Py_RETURN_NONE;
}

static PyObject *DC_reset(DCObject *self, PyObject *secondsFromNow) {
  PyObject *s = (PyObject *)self;
  if (check_pending(self) < 0) return NULL;
  if (field(s, self->seconds, "seconds") == NULL) return NULL;
  Py_INCREF(self->seconds);
  PyObject *now = PyObject_CallNoArgs(self->seconds);
  Py_DECREF(self->seconds);
  if (now == NULL) return NULL;
  PyObject *newTime = add(now, secondsFromNow);
  Py_DECREF(now);
  if (newTime == NULL) return NULL;
  if (field(s, self->time, "time") == NULL) goto fail;
  int lt = less(newTime, self->time);
  if (lt < 0) goto fail;
  if (lt) {
    Py_XSETREF(self->delayed_time, Py_NewRef(float_zero));
    Py_XSETREF(self->time, newTime);
    if (field(s, self->resetter, "resetter") == NULL ||
        call1(self->resetter, s) < 0)
      return NULL;
  } else {
    PyObject *dt = sub(newTime, self->time);
    Py_DECREF(newTime);
    if (dt == NULL) return NULL;
    Py_XSETREF(self->delayed_time, dt);
  }
  Py_RETURN_NONE;
fail:
  Py_DECREF(newTime);
  return NULL;
}

static PyObject *DC_delay(DCObject *self, PyObject *secondsLater) {
  PyObject *s = (PyObject *)self;
  if (check_pending(self) < 0) return NULL;
  if (field(s, self->delayed_time, "delayed_time") == NULL) return NULL;
  PyObject *dt = PyNumber_InPlaceAdd(self->delayed_time, secondsLater);
  if (dt == NULL) return NULL;
  Py_XSETREF(self->delayed_time, dt);
  if (field(s, self->delayed_time, "delayed_time") == NULL) return NULL;
  int lt = less(self->delayed_time, float_zero);
  if (lt < 0) return NULL;
  if (lt) {
    PyObject *r = PyObject_CallMethodNoArgs(s, str_activate_delay);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    if (field(s, self->resetter, "resetter") == NULL ||
        call1(self->resetter, s) < 0)
      return NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *DC_activate_delay(DCObject *self, PyObject *unused) {
  (void)unused;
  PyObject *s = (PyObject *)self;
  if (field(s, self->time, "time") == NULL ||
      field(s, self->delayed_time, "delayed_time") == NULL)
    return NULL;
  PyObject *t = PyNumber_InPlaceAdd(self->time, self->delayed_time);
  if (t == NULL) return NULL;
  Py_XSETREF(self->time, t);
  Py_XSETREF(self->delayed_time, Py_NewRef(float_zero));
  Py_RETURN_NONE;
}

static PyObject *DC_active(DCObject *self, PyObject *unused) {
  (void)unused;
  /* not (self.cancelled or self.called) */
  int c = truth((PyObject *)self, self->cancelled, "cancelled");
  if (c == 0) c = truth((PyObject *)self, self->called, "called");
  if (c < 0) return NULL;
  return PyBool_FromLong(!c);
}

/* The fields in Twisted's order, for __getstate__. */
static const char *const dc_names[] = {
    "time",    "func",      "args",   "kw",          "resetter",
    "canceller", "seconds", "cancelled", "called", "delayed_time"};

/* copy.copy, copy.deepcopy (and pickle, where the fields pickle): the state
** is what a Twisted DelayedCall's instance __dict__ holds, every field that
** is set and then the instance's own __dict__.  Without it, object's
** default refuses a type with C fields ("cannot pickle"). */
static PyObject *DC_getstate(DCObject *self, PyObject *unused) {
  (void)unused;
  PyObject *const vals[] = {self->time,      self->func,   self->args,
                            self->kw,        self->resetter,
                            self->canceller, self->seconds,
                            self->cancelled, self->called,
                            self->delayed_time};
  PyObject *state = PyDict_New();
  if (state == NULL) return NULL;
  for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
    if (vals[i] && PyDict_SetItemString(state, dc_names[i], vals[i]) < 0)
      goto fail;
  if (self->dict && PyDict_Update(state, self->dict) < 0) goto fail;
  return state;
fail:
  Py_DECREF(state);
  return NULL;
}

/* Set each name of state (a dict) as an attribute: the fields through
** their descriptors, anything else in the instance __dict__. */
static PyObject *DC_setstate(DCObject *self, PyObject *state) {
  if (!PyDict_Check(state)) {
    PyErr_SetString(PyExc_TypeError,
                    "DelayedCall.__setstate__ wants a dict");
    return NULL;
  }
  PyObject *k, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(state, &pos, &k, &v))
    if (PyObject_SetAttr((PyObject *)self, k, v) < 0) return NULL;
  Py_RETURN_NONE;
}

/* < and <= compare `time` (not delayed_time) with another DelayedCall's;
** anything else is NotImplemented, as in Twisted. */
static PyObject *DC_richcompare(PyObject *a, PyObject *b, int op) {
  if (op != Py_LT && op != Py_LE) Py_RETURN_NOTIMPLEMENTED;
  PyObject *bt;
  if (PyObject_TypeCheck(b, dc_base_type)) {
    bt = field(b, ((DCObject *)b)->time, "time");
    Py_XINCREF(bt);
  } else {
    int is = tw_dc_class ? PyObject_IsInstance(b, tw_dc_class) : 0;
    if (is < 0) return NULL;
    if (!is) Py_RETURN_NOTIMPLEMENTED;
    bt = PyObject_GetAttr(b, str_time);
  }
  if (bt == NULL) return NULL;
  PyObject *at = field(a, ((DCObject *)a)->time, "time");
  PyObject *r = NULL;
  if (at != NULL) {
    if (PyFloat_CheckExact(at) && PyFloat_CheckExact(bt)) {
      double x = PyFloat_AS_DOUBLE(at), y = PyFloat_AS_DOUBLE(bt);
      r = PyBool_FromLong(op == Py_LT ? x < y : x <= y);
    } else {
      Py_INCREF(at);
      r = PyObject_RichCompare(at, bt, op);
      Py_DECREF(at);
    }
  }
  Py_DECREF(bt);
  return r;
}

/* Hashable by identity, as Twisted's (defining < drops the inherited hash
** otherwise). */
static Py_hash_t DC_hash(PyObject *self) {
  return PyBaseObject_Type.tp_hash(self);
}

static int DC_traverse(DCObject *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->time);
  Py_VISIT(self->func);
  Py_VISIT(self->args);
  Py_VISIT(self->kw);
  Py_VISIT(self->resetter);
  Py_VISIT(self->canceller);
  Py_VISIT(self->seconds);
  Py_VISIT(self->cancelled);
  Py_VISIT(self->called);
  Py_VISIT(self->delayed_time);
  Py_VISIT(self->dict);
  return 0;
}

static int DC_clear(DCObject *self) {
  Py_CLEAR(self->time);
  Py_CLEAR(self->func);
  Py_CLEAR(self->args);
  Py_CLEAR(self->kw);
  Py_CLEAR(self->resetter);
  Py_CLEAR(self->canceller);
  Py_CLEAR(self->seconds);
  Py_CLEAR(self->cancelled);
  Py_CLEAR(self->called);
  Py_CLEAR(self->delayed_time);
  Py_CLEAR(self->dict);
  return 0;
}

static void DC_dealloc(DCObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)self);
  DC_clear(self);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

#define DC_FIELD(name, doc) \
  {#name, T_OBJECT_EX, offsetof(DCObject, name), 0, doc}

static PyMemberDef DC_members[] = {
    DC_FIELD(time, "Seconds (as seconds() counts) at which to call func."),
    DC_FIELD(func, "The callable (deleted by cancel())."),
    DC_FIELD(args, "Its positional arguments (deleted by cancel())."),
    DC_FIELD(kw, "Its keyword arguments (deleted by cancel())."),
    DC_FIELD(resetter, "Called with the call when it moves sooner."),
    DC_FIELD(canceller, "Called with the call by cancel()."),
    DC_FIELD(seconds, "The clock: a callable returning the time."),
    DC_FIELD(cancelled, "1 once cancelled, else 0."),
    DC_FIELD(called, "1 once called, else 0."),
    DC_FIELD(delayed_time, "How much later than time the call is due."),
    {"__dictoffset__", T_PYSSIZET, offsetof(DCObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(DCObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef DC_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef DC_methods[] = {
    {"getTime", (PyCFunction)DC_getTime, METH_NOARGS,
     "Return the time at which this call will fire."},
    {"cancel", (PyCFunction)DC_cancel, METH_NOARGS,
     "Unschedule this call (AlreadyCancelled, AlreadyCalled)."},
    {"reset", (PyCFunction)DC_reset, METH_O,
     "reset(secondsFromNow): reschedule this call for a different time."},
    {"delay", (PyCFunction)DC_delay, METH_O,
     "delay(secondsLater): reschedule this call for a later time."},
    {"activate_delay", (PyCFunction)DC_activate_delay, METH_NOARGS,
     "Add delayed_time to time."},
    {"active", (PyCFunction)DC_active, METH_NOARGS,
     "Whether this call is still pending."},
    {"__getstate__", (PyCFunction)DC_getstate, METH_NOARGS,
     "The fields and the instance __dict__, as one dict (copy, pickle)."},
    {"__setstate__", (PyCFunction)DC_setstate, METH_O,
     "Set the fields and attributes __getstate__ gave."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(DC_doc,
"DelayedCallBase(time, func, args, kw, cancel, reset, seconds=runtime.seconds)\n"
"--\n\n"
"The C half of ame's DelayedCall: twisted.internet.base.DelayedCall's\n"
"fields and methods in C.  See bindings/ame/timers.c.");

static PyType_Slot DC_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, DC_init},
    {Py_tp_dealloc, DC_dealloc},
    {Py_tp_traverse, DC_traverse},
    {Py_tp_clear, DC_clear},
    {Py_tp_hash, DC_hash},
    {Py_tp_richcompare, DC_richcompare},
    {Py_tp_methods, DC_methods},
    {Py_tp_members, DC_members},
    {Py_tp_getset, DC_getset},
    {Py_tp_doc, (void *)DC_doc},
    {0, NULL},
};

static PyType_Spec DC_spec = {
    .name = "ame._ame.DelayedCallBase",
    .basicsize = sizeof(DCObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = DC_slots,
};

/* ------------------------------------------------------------------------
** Timers: AMEReactor's callLater.
*/

/* callLater(delay, callable, *args, **kw): what ReactorBase.callLater
** does.  Return the new DelayedCall, or NULL with an exception set. */
static PyObject *Timers_callLater(TimersObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames) {
  PyObject *s = (PyObject *)self;
  /* Inside ame.atomic: the reactor's stand-in, scheduled at commit
  ** (reactor.py, shared.c). */
  if (amepy_shared_in_atomic())
    return amepy_shared_call_method(s, "_ameAtomicCallLater", args, nargs,
                                    kwnames);
  PyObject *delay = nargs > 0 ? args[0] : NULL;
  PyObject *callable = nargs > 1 ? args[1] : NULL;
  PyObject *kw = PyDict_New(), *pos = NULL, *seconds = NULL, *t = NULL;
  PyObject *cancel = NULL, *reset = NULL;
  DCObject *dc = NULL;
  if (kw == NULL) return NULL;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; i++) {
    PyObject *name = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
    PyObject **param = NULL;
    if (PyUnicode_Compare(name, str_delay) == 0)
      param = &delay;
    else if (PyUnicode_Compare(name, str_callable) == 0)
      param = &callable;
    if (param == NULL) {
      if (PyDict_SetItem(kw, name, v) < 0) goto fail;
    } else if (*param != NULL) {
      PyErr_Format(PyExc_TypeError,
                   "callLater() got multiple values for argument '%U'", name);
      goto fail;
    } else {
      *param = v;
    }
  }
  if (delay == NULL || callable == NULL) {
    PyErr_Format(PyExc_TypeError,
                 "callLater() missing required positional argument '%s'",
                 delay == NULL ? "delay" : "callable");
    goto fail;
  }
  if (assertions) {
    PyObject *what = NULL;
    const char *why = NULL;
    if (!PyCallable_Check(callable)) {
      what = callable;
      why = "is not callable";
    } else {
      int ge = PyObject_RichCompareBool(delay, int_zero, Py_GE);
      if (ge < 0) goto fail;
      if (!ge) {
        what = delay;
        why = "is not greater than or equal to 0 seconds";
      }
    }
    if (what != NULL) {
      PyObject *str = PyObject_Format(what, str_empty);
      if (str != NULL)
        PyErr_Format(PyExc_AssertionError, "%U %s", str, why);
      Py_XDECREF(str);
      goto fail;
    }
  }
  pos = nargs > 2 ? PyTuple_New(nargs - 2) : PyTuple_New(0);
  if (pos == NULL) goto fail;
  for (Py_ssize_t i = 2; i < nargs; i++)
    PyTuple_SET_ITEM(pos, i - 2, Py_NewRef(args[i]));
  seconds = PyObject_GetAttr(s, str_seconds);
  if (seconds == NULL) goto fail;
  PyObject *now = PyObject_CallNoArgs(seconds);
  if (now == NULL) goto fail;
  t = add(now, delay);
  Py_DECREF(now);
  if (t == NULL) goto fail;
  cancel = PyObject_GetAttr(s, str_cancel_cl);
  if (cancel == NULL) goto fail;
  reset = PyObject_GetAttr(s, str_move_cl);
  if (reset == NULL) goto fail;
  if (dc_class == NULL) {
    PyErr_SetString(PyExc_RuntimeError,
                    "ame._ame.DelayedCall is missing (Twisted not importable)");
    goto fail;
  }
  dc = (DCObject *)((PyTypeObject *)dc_class)
           ->tp_alloc((PyTypeObject *)dc_class, 0);
  if (dc == NULL) goto fail;
  dc->time = t;
  dc->func = Py_NewRef(callable);
  dc->args = pos;
  dc->kw = kw;
  dc->resetter = reset;
  dc->canceller = cancel;
  dc->seconds = seconds;
  dc->cancelled = Py_NewRef(int_zero);
  dc->called = Py_NewRef(int_zero);
  dc->delayed_time = Py_NewRef(float_zero);
  t = pos = kw = reset = cancel = seconds = NULL; /* dc's now */
  if (maybe_creator((PyObject *)dc, 0) < 0) goto fail;
  if (field(s, self->new_calls, "_newTimedCalls") == NULL) goto fail;
  if (PyList_CheckExact(self->new_calls)) {
    if (PyList_Append(self->new_calls, (PyObject *)dc) < 0) goto fail;
  } else {
    PyObject *r = PyObject_CallMethodOneArg(self->new_calls, str_append,
                                            (PyObject *)dc);
    if (r == NULL) goto fail;
    Py_DECREF(r);
  }
  return (PyObject *)dc;
fail:
  Py_XDECREF(dc);
  Py_XDECREF(t);
  Py_XDECREF(pos);
  Py_XDECREF(kw);
  Py_XDECREF(reset);
  Py_XDECREF(cancel);
  Py_XDECREF(seconds);
  return NULL;
}

/* _cancelCallLater(call): self._cancellations += 1. */
static PyObject *Timers_cancelCallLater(TimersObject *self, PyObject *call) {
  (void)call;
  if (field((PyObject *)self, self->cancellations, "_cancellations") == NULL)
    return NULL;
  PyObject *n = PyNumber_InPlaceAdd(self->cancellations, int_one);
  if (n == NULL) return NULL;
  Py_XSETREF(self->cancellations, n);
  Py_RETURN_NONE;
}

/* Getters and setters of the C fields Twisted's code uses as attributes. */
static PyObject *get_field(PyObject *self, void *closure) {
  PyObject *v = *(PyObject **)((char *)self + (size_t)closure);
  if (v == NULL) {
    PyErr_SetString(PyExc_AttributeError,
                    (size_t)closure == offsetof(TimersObject, new_calls)
                        ? "_newTimedCalls"
                        : "_cancellations");
    return NULL;
  }
  return Py_NewRef(v);
}

static int set_field(PyObject *self, PyObject *v, void *closure) {
  PyObject **p = (PyObject **)((char *)self + (size_t)closure);
  if (v == NULL && *p == NULL) {
    get_field(self, closure); /* AttributeError */
    return -1;
  }
  Py_XSETREF(*p, Py_XNewRef(v));
  return 0;
}

static PyGetSetDef Timers_getset[] = {
    {"_newTimedCalls", get_field, set_field,
     "Delayed calls made since the last runUntilCurrent/timeout.",
     (void *)offsetof(TimersObject, new_calls)},
    {"_cancellations", get_field, set_field,
     "Cancelled calls not yet dropped from the heap.",
     (void *)offsetof(TimersObject, cancellations)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Timers_methods[] = {
    {"callLater", (PyCFunction)(void (*)(void))Timers_callLater,
     METH_FASTCALL | METH_KEYWORDS,
     "callLater(delay, callable, *args, **kw) -> DelayedCall\n\n"
     "See twisted.internet.interfaces.IReactorTime.callLater."},
    {"_cancelCallLater", (PyCFunction)Timers_cancelCallLater, METH_O,
     "A delayed call was cancelled: count it."},
    {NULL, NULL, 0, NULL},
};

static int Timers_traverse(TimersObject *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->new_calls);
  Py_VISIT(self->cancellations);
  return 0;
}

static int Timers_clear(TimersObject *self) {
  Py_CLEAR(self->new_calls);
  Py_CLEAR(self->cancellations);
  return 0;
}

static void Timers_dealloc(TimersObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Timers_clear(self);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

PyDoc_STRVAR(Timers_doc,
"Timers()\n--\n\n"
"The C base of AMEReactor's IReactorTime: callLater and _cancelCallLater\n"
"in C, making ame._ame.DelayedCall objects.  See bindings/ame/timers.c.");

static PyType_Slot Timers_slots[] = {
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Timers_dealloc},
    {Py_tp_traverse, Timers_traverse},
    {Py_tp_clear, Timers_clear},
    {Py_tp_methods, Timers_methods},
    {Py_tp_getset, Timers_getset},
    {Py_tp_doc, (void *)Timers_doc},
    {0, NULL},
};

static PyType_Spec Timers_spec = {
    .name = "ame._ame.Timers",
    .basicsize = sizeof(TimersObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Timers_slots,
};

/* ------------------------------------------------------------------------
** Module exec.
*/

static int intern(PyObject **p, const char *s) {
  if (*p == NULL) *p = PyUnicode_InternFromString(s);
  return *p == NULL ? -1 : 0;
}

/* Import Twisted's objects and make _ame.DelayedCall.  Return 0 (also when
** Twisted is not importable: then there is no _ame.DelayedCall and
** callLater raises), or -1 with an exception set. */
static int init_twisted(PyObject *m) {
  PyObject *base = PyImport_ImportModule("twisted.internet.base");
  if (base == NULL) {
    if (!PyErr_ExceptionMatches(PyExc_ImportError)) return -1;
    PyErr_Clear();
    return 0;
  }
  Py_XSETREF(tw_base, base);
  PyObject *err = PyImport_ImportModule("twisted.internet.error");
  if (err == NULL) return -1;
  Py_XSETREF(exc_cancelled, PyObject_GetAttrString(err, "AlreadyCancelled"));
  Py_XSETREF(exc_called, PyObject_GetAttrString(err, "AlreadyCalled"));
  Py_DECREF(err);
  Py_XSETREF(tw_dc_class, PyObject_GetAttrString(base, "DelayedCall"));
  Py_XSETREF(runtime_seconds, PyObject_GetAttrString(base, "runtimeSeconds"));
  if (exc_cancelled == NULL || exc_called == NULL || tw_dc_class == NULL ||
      runtime_seconds == NULL)
    return -1;
  Py_XSETREF(dc_class,
             PyObject_CallFunction(
                 (PyObject *)&PyType_Type, "s(OO){s:s,s:s}", "DelayedCall",
                 dc_base_type, tw_dc_class, "__module__", "ame._ame",
                 "__doc__",
                 "twisted.internet.base.DelayedCall with its fields and\n"
                 "methods in C (ame._ame.DelayedCallBase): what\n"
                 "AMEReactor.callLater returns."));
  if (dc_class == NULL) return -1;
  return PyModule_AddObjectRef(m, "DelayedCall", dc_class);
}

int ame__timers_init(PyObject *m) {
  if (intern(&str_seconds, "seconds") < 0 ||
      intern(&str_cancel_cl, "_cancelCallLater") < 0 ||
      intern(&str_move_cl, "_moveCallLaterSooner") < 0 ||
      intern(&str_debug, "debug") < 0 || intern(&str_repr, "_repr") < 0 ||
      intern(&str_creator, "creator") < 0 ||
      intern(&str_format_stack, "format_stack") < 0 ||
      intern(&str_time, "time") < 0 ||
      intern(&str_activate_delay, "activate_delay") < 0 ||
      intern(&str_append, "append") < 0 || intern(&str_delay, "delay") < 0 ||
      intern(&str_callable, "callable") < 0 || intern(&str_empty, "") < 0)
    return -1;
  if (int_zero == NULL) int_zero = PyLong_FromLong(0);
  if (int_one == NULL) int_one = PyLong_FromLong(1);
  if (float_zero == NULL) float_zero = PyFloat_FromDouble(0.0);
  if (int_zero == NULL || int_one == NULL || float_zero == NULL) return -1;
  /* assert statements run unless python -O: sys.flags.optimize. */
  PyObject *flags = PySys_GetObject("flags"); /* borrowed */
  PyObject *opt = flags ? PyObject_GetAttrString(flags, "optimize") : NULL;
  if (opt == NULL) return -1;
  long o = PyLong_AsLong(opt);
  Py_DECREF(opt);
  if (o == -1 && PyErr_Occurred()) return -1;
  assertions = o == 0;

  PyTypeObject *t =
      (PyTypeObject *)PyType_FromModuleAndSpec(m, &DC_spec, NULL);
  if (t == NULL) return -1;
  Py_XSETREF(dc_base_type, t);
  if (PyModule_AddType(m, dc_base_type) < 0) return -1;
  t = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Timers_spec, NULL);
  if (t == NULL) return -1;
  int rc = PyModule_AddType(m, t);
  Py_DECREF(t);
  if (rc < 0) return -1;
  return init_twisted(m);
}
