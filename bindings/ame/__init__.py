"""
ame: a multi-core event-loop reactor whose callbacks are transactions.

This package holds the Python side of ame: L{ame.reactor} (a Twisted
reactor on ame's C reactor) and L{ame._ame} (the extension under it).

In a source tree the extension is built into C{build/bindings/ame/}, next
to no other Python file; C{extend_path} below lets C{ame._ame} be found
there when both C{bindings} and C{build/bindings} are on C{sys.path}.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
