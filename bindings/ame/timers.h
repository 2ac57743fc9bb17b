/*
** bindings/ame/timers.h — reactor.callLater and DelayedCall in C
** (timers.c).  Internal to the extension.
*/
#ifndef AME_TIMERS_H
#define AME_TIMERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Module exec: add _ame.DelayedCallBase, _ame.Timers and, where Twisted is
** importable, _ame.DelayedCall (the Python-level class callLater makes) to
** module m.  Return 0, or -1 with an exception set. */
int ame__timers_init(PyObject *m);

#endif
