"""
Twisted plugin dropin: makes C{--reactor=ame} work for twistd and trial
and lists ame in C{twistd --help-reactors}.

This directory must not contain an C{__init__.py}: Twisted finds
C{twisted/plugins} directories on every C{sys.path} entry.
"""

from twisted.application.reactors import Reactor

ame = Reactor(
    "ame",
    "ame.reactor",
    "ame: libuv loops on worker threads, callbacks as STM transactions.",
)
