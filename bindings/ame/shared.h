/*
** bindings/ame/shared.h — what the rest of the extension needs from
** shared.c (ame.shared: transactional objects in the shared heap, and
** ame.atomic).  Internal to the extension.
*/
#ifndef AMEPY_SHARED_H
#define AMEPY_SHARED_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Module exec: add the shared-object types and functions to module m.
** Return 0, or -1 with an exception set. */
int amepy_shared_init(PyObject *m);

/* Nonzero while the calling thread runs inside ame.atomic (GIL held). */
int amepy_shared_in_atomic(void);

/* The deferral hook for reactor calls made inside ame.atomic: if the
** calling thread is inside one, queue obj.name(arg) to run once the
** transaction commits (never for an attempt that aborts; a list arg is
** copied) and return 1; outside, return 0 and do nothing.  Return -1 with
** an exception set if it could not be queued.  GIL held. */
int amepy_shared_defer_method(PyObject *obj, const char *name, PyObject *arg);

/* Call obj.name(*args, **kwnames) (a vectorcall's arguments): how
** callLater (timers.c) hands itself to reactor.py inside ame.atomic. */
PyObject *amepy_shared_call_method(PyObject *obj, const char *name,
                                   PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames);

#endif
