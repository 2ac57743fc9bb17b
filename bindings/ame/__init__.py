"""
ame: a multi-core event-loop reactor whose callbacks are transactions.

This package holds the Python side of ame: L{ame.reactor} (a Twisted
reactor on ame's C reactor), L{ame.shared} (named objects shared by worker
processes, and C{ame.atomic}, transactions over them) and L{ame._ame} (the
extension under them).

In a source tree the extension is built into C{build/bindings/ame/}, next
to no other Python file; C{extend_path} below lets C{ame._ame} be found
there when both C{bindings} and C{build/bindings} are on C{sys.path}.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)


def __getattr__(name):
    # ame.atomic and ame.atomically are ame.shared's, imported on first use
    # (importing ame must not load the extension).
    if name in ("atomic", "atomically"):
        from ame import shared

        return getattr(shared, name)
    raise AttributeError("module 'ame' has no attribute %r" % (name,))
