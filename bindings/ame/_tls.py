"""
TLS in C for AMEReactor's TCP transports.

C{listenSSL}, C{connectSSL} and the C{ssl:} endpoints wrap the program's
factory in L{TLSFactory}, Twisted's L{tls.TLSMemoryBIOFactory}; once an
AMEReactor exists, every TLSMemoryBIOFactory (C{wrapClientTLS}, the C{tls:}
endpoint, twisted.web's C{Agent}) builds L{TLSProtocol}s too (L{adopt}).
A L{TLSProtocol} is Twisted's L{tls.TLSMemoryBIOProtocol} with one
change: when the connection's transport is a C stream (an attached
L{ame.reactor.Server} or L{ame.reactor.Client}) and its pyOpenSSL
C{Connection} needs no Python during a handshake, the C worker runs the
handshake and the record layer on that very C{Connection}'s SSL object,
without the GIL (bindings/ame/tls.c).  The protocol gets plaintext from C
as over TCP, C{write()} queues plaintext in C, and everything else --
C{getPeerCertificate}, C{getHandle}, C{negotiatedProtocol}, producers,
C{loseConnection} with close_notify, C{abortConnection}, the
C{SSL.Error} in C{connectionLost} -- keeps Twisted's meaning.

The worker and the Python thread share that SSL object: each of them
calls OpenSSL on it holding its lock (C{getHandle()} returns a
L{LockedConnection}, and the protocol's own calls go through it too).

Otherwise the connection is Twisted's own L{tls.TLSMemoryBIOProtocol}, as
on EPollReactor: pyOpenSSL on a memory BIO in Python.  The reactor counts
both (C{ameStats()}: C{tls_c}, C{tls_python}); docs/twisted.md says when
each applies.
"""

import errno
import functools
import gc
import types

from OpenSSL import SSL
from zope.interface import directlyProvides, providedBy

from twisted.internet import _newtls, _sslverify, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.protocols import tls
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import log
from twisted.python.failure import Failure

from ame import _ame

try:
    from cryptography.hazmat.bindings._openssl import ffi as _ffi
    from cryptography.hazmat.bindings._openssl import lib as _lib

    _METHOD = int(_ffi.cast("uintptr_t", _lib.TLS_method()))
    _SAME_LIBSSL = _ame.tls_library(_METHOD)
except Exception:  # no cryptography bindings, or another layout
    _ffi = _lib = None
    _METHOD = 0
    _SAME_LIBSSL = False

# Connections whose TLS was C's and Twisted's, over every AMEReactor of the
# process (each reactor's own: ameStats()["tls_c"], ["tls_python"]).
TOTALS = {"c": 0, "python": 0}

# pyOpenSSL Context attributes holding callbacks that OpenSSL calls during
# a handshake: Python, which the worker must not wait for.
_HANDSHAKE_CALLBACKS = (
    "_info_callback",
    "_keylog_callback",
    "_tlsext_servername_callback",
    "_ocsp_callback",
    "_cookie_generate_helper",
    "_cookie_verify_helper",
)


# ALPN lists seen, in wire format (a server's list is the same for each
# connection).
_WIRE = {}


def _wire(protocols):
    """
    ALPN's wire format: each protocol prefixed with its length.
    """
    names = tuple(protocols)
    try:
        wire = _WIRE.get(names)
    except TypeError:  # an unhashable name, refused below
        wire = None
    if wire is not None:
        return wire
    out = []
    for p in names:
        if not isinstance(p, bytes) or not 0 < len(p) < 256:
            raise ValueError("bad ALPN protocol name %r" % (p,))
        out.append(bytes((len(p),)) + p)
    wire = b"".join(out)
    if len(_WIRE) < 64:
        _WIRE[names] = wire
    return wire


def _whyPython(conn, transport, client, protocols):
    """
    Why C{conn}'s TLS must stay Twisted's own (a short reason), or L{None}
    if the C worker can run it.
    """
    if not _SAME_LIBSSL:
        return "libssl"
    if not isinstance(conn, SSL.Connection):
        return "connection"  # a creator's own object: Twisted's TLS drives it
    if not getattr(transport, "_ameFast", False):
        return "transport"
    if getattr(conn, "_socket", True) is not None:
        return "socket"
    ctx = conn.get_context()
    for name in _HANDSHAKE_CALLBACKS:
        if getattr(ctx, name, None) is None:
            continue
        if name == "_info_callback" and client and _hostnameChecker(ctx):
            continue  # TLSProtocol checks the name after the handshake
        return name
    # A client's verify callback runs under VERIFY_NONE too (OpenSSL
    # verifies the server's chain whatever the mode); a server's only when
    # it asks for the client's certificate.
    if (
        getattr(conn, "_verify_callback", None) is not None
        and (client or _lib.SSL_get_verify_mode(conn._ssl) != SSL.VERIFY_NONE)
        and not _plainVerify(conn)
    ):
        return "verify_callback"
    if (
        not client
        and getattr(ctx, "_alpn_select_callback", None) is not None
        and protocols is None
    ):
        return "alpn_callback"
    return None


def _pythonOf(callback):
    """
    The Python function behind a cffi callback that pyOpenSSL made (it
    wraps the program's function with functools.wraps), or L{None}.
    """
    if callback is None:
        return None
    for ref in gc.get_referents(callback):
        if isinstance(ref, tuple):
            for x in ref:
                if isinstance(x, types.FunctionType):
                    return getattr(x, "__wrapped__", x)
    return None


# _plainVerify's verdicts by verify callback (a cffi object, hashed by
# identity; a context's connections share its callback).
_PLAIN_VERIFY = {}


# The code of the verify callback Twisted's CertificateOptions installs
# (it returns OpenSSL's own verdict, preverify_ok).
_TWISTED_VERIFY = frozenset(
    c for c in _sslverify.OpenSSLCertificateOptions._makeContext.__code__
    .co_consts if isinstance(c, types.CodeType) and c.co_name == "_verifyCallback"
)


def _plainVerify(conn):
    """
    Whether C{conn}'s verify callback is the one Twisted's
    C{CertificateOptions} installs (also under C{optionsForClientTLS}),
    which returns OpenSSL's own verdict: then C verifies without it (no
    Python per certificate).
    """
    callback = getattr(conn, "_verify_callback", None)
    plain = _PLAIN_VERIFY.get(callback)
    if plain is None:
        fn = _pythonOf(callback)
        plain = getattr(fn, "__code__", None) in _TWISTED_VERIFY
        if len(_PLAIN_VERIFY) < 256:
            _PLAIN_VERIFY[callback] = plain
    return plain


def _hostnameChecker(ctx):
    """
    The L{_sslverify.ClientTLSOptions} whose info callback (SNI, then the
    check of the server's name once the handshake is done) is C{ctx}'s
    only one, or L{None}.
    """
    fn = _pythonOf(getattr(ctx, "_info_callback", None))
    for cell in getattr(fn, "__closure__", None) or ():
        bound = cell.cell_contents
        if (
            getattr(bound, "__func__", None)
            is _sslverify.ClientTLSOptions._identityVerifyingInfoCallback
        ):
            return bound.__self__
    return None


def _failure(err):
    """
    The L{Failure} Twisted's TLS would give C{connectionLost} for the
    error the worker recorded (L{_ame.Stream._ameTLSInfo}).
    """
    kind = err[0]
    if kind == "ssl":
        return Failure(SSL.Error(err[1]))
    if kind == "syscall":
        return Failure(SSL.SysCallError(err[1], errno.errorcode.get(err[1])))
    # SysCallError(-1, "Unexpected EOF"): TLSMemoryBIOProtocol makes it
    # ConnectionLost.
    return Failure(main.CONNECTION_LOST)


class TLSProtocol(tls.TLSMemoryBIOProtocol):
    """
    L{tls.TLSMemoryBIOProtocol} whose TLS is the C worker's when
    L{_createConnection} could hand it over (C{_ameC}); Twisted's own
    otherwise, method for method.
    """

    _ameC = False
    _ameHostname = None  # ClientTLSOptions whose name check is ours

    def makeConnection(self, transport):
        # TLSMemoryBIOProtocol.makeConnection, with the connection made by
        # _createConnection (for any TLSMemoryBIOFactory).
        self._ameTransport = transport
        try:
            self._tlsConnection = _createConnection(self.factory, self)
        finally:
            del self._ameTransport
        self._appSendBuffer = []
        # Twisted calls directlyProvides(self, i) for each interface i of
        # the transport; each call replaces the last, leaving only the
        # last one.  The same in one call (nine fewer per connection);
        # none where ProtocolWrapper.makeConnection below replaces it
        # with all of them before anything can look.
        if not self._connectWrapped:
            last = _lastInterface(providedBy(transport))
            if last is not None:
                directlyProvides(self, last)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()
        if self._ameC:
            # Writes go straight to C, which drops them once close_notify
            # is asked for (what write() below does after loseConnection
            # without a producer).
            self.write = transport.write
            self.writeSequence = transport.writeSequence

    # Called from C once the worker completed the handshake, before any
    # data: what _checkHandshakeStatus does when do_handshake() succeeds.
    # Not after abortConnection(), which may come between the two (Twisted's
    # TLS reads nothing more after it, so its handshake never completes).
    def _ameHandshakeDone(self):
        self._handshakeDone = True
        if self._aborted:
            return
        if self._ameHostname is not None:
            # What was written waits in C until the name passes (as in
            # Twisted's TLS, whose check runs inside do_handshake): a
            # failure aborts, and it is dropped.
            self._ameCheckHostname(self._ameHostname)
            if not self._aborted:
                self.transport._ameTLSRelease()
        if self.wrappedProtocol is not None and IHandshakeListener.providedBy(
            self.wrappedProtocol
        ):
            self.wrappedProtocol.handshakeCompleted()

    # Called by the stream when its input ended with the peer's
    # close_notify, after the plaintext before it: what
    # TLSMemoryBIOProtocol._flushReceiveBIO does on ZeroReturnError.  Our
    # close_notify follows what the protocol wrote in reply, and the
    # connection closes once both are sent.
    def _ameCloseNotify(self):
        self._shutdownTLS()
        self._lostTLSConnection = True
        self.transport.loseConnection()

    def _ameCheckHostname(self, options):
        # What ClientTLSOptions' info callback does once the handshake is
        # done (its errors handled as _tolerateErrors handles them).
        try:
            if options._hostnameIsDnsName:
                _sslverify.verifyHostname(
                    self._tlsConnection, options._hostnameASCII)
            else:
                _sslverify.verifyIPAddress(
                    self._tlsConnection, options._hostnameASCII)
        except _sslverify.VerificationError:
            self.failVerification(Failure())
        except BaseException:
            f = Failure()
            log.err(f, "Error during info_callback")
            self.failVerification(f)

    def _checkHandshakeStatus(self):
        if self._ameC:
            return  # the worker runs the handshake
        tls.TLSMemoryBIOProtocol._checkHandshakeStatus(self)

    def dataReceived(self, data):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol.dataReceived(self, data)
        # Plaintext, after the handshake (C), to the protocol's
        # dataReceived as it is now: as Twisted's TLS, which looks it up
        # per record, so that a protocol may rebind it or be swapped
        # (wrappedProtocol) for the next bytes.
        if not self._aborted:
            self.wrappedProtocol.dataReceived(data)

    def write(self, data):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol.write(self, data)
        if isinstance(data, str):
            raise TypeError("Must write bytes to a TLS transport, not str.")
        if self.disconnecting and self._producer is None:
            return
        self.transport.write(data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def loseConnection(self):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol.loseConnection(self)
        if self.disconnecting or not self.connected:
            return
        # As Twisted: before the handshake, with nothing written, abort
        # (OpenSSL would wait for the handshake forever).
        if not self._handshakeDone and not self.transport._ameQueued():
            self.abortConnection()
        self.disconnecting = True
        if self._producer is None:
            self._shutdownTLS()

    def _shutdownTLS(self):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol._shutdownTLS(self)
        # close_notify after what was written; as Twisted, the connection
        # closes when the peer answers with its own (or closes).
        self.transport._ameTLSShutdown()

    def abortConnection(self):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol.abortConnection(self)
        self._aborted = True
        self.disconnecting = True
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if not self._ameC:
            return tls.TLSMemoryBIOProtocol.connectionLost(self, reason)
        if not self._lostTLSConnection:
            self._lostTLSConnection = True
            info = getattr(self.transport, "_ameTLSInfo", None)
            err = info()[1] if info is not None else None
            if err is not None and self._reason is None:
                self._reason = _failure(err)
            elif self._aborted and self._reason is None:
                # What Twisted's TLS reads after an abort (bio_shutdown,
                # then recv): an end of file without close_notify, which
                # it reports as ConnectionLost, not the transport's
                # ConnectionAborted.
                self._reason = Failure(main.CONNECTION_LOST)
        reason = self._reason or reason
        self._reason = None
        self.connected = False
        ProtocolWrapper.connectionLost(self, reason)
        self._tlsConnection = None
        # No cycle left for the garbage collector: ProtocolWrapper let the
        # protocol go; so does the producer, which the transport stopped
        # and let go (Twisted's TLS keeps it, and its membrane holds the
        # protocol, which holds us).
        self._producer = None

    # Before the handshake, the SSL object is the worker's.
    def getPeerCertificate(self):
        if self._ameC and not self._handshakeDone:
            return None
        return tls.TLSMemoryBIOProtocol.getPeerCertificate(self)

    @property
    def negotiatedProtocol(self):
        if self._ameC and not self._handshakeDone:
            return None
        if _NPN:
            return tls.TLSMemoryBIOProtocol.negotiatedProtocol.fget(self)
        # Twisted's, less the NPN it asks a pyOpenSSL without it for (and
        # catches the AttributeError) each time ALPN chose nothing.
        try:
            name = self._tlsConnection.get_alpn_proto_negotiated()
        except (NotImplementedError, AttributeError):
            return None
        return None if name in (b"", None) else name

    def __conform__(self, interface):
        # What ProtocolWrapper.__getattr__ finds, the transport's
        # __conform__ where it has one, without the AttributeError it
        # raises where it has not (twice per connection for twisted.web's
        # channel, which adapts its transport to IPushProducer).
        conform = getattr(self.transport, "__conform__", None)
        return None if conform is None else conform(interface)


# Whether pyOpenSSL has NPN (gone since its 20.0).
_NPN = hasattr(SSL.Connection, "get_next_proto_negotiated")


# A declaration's last interface, by declaration: (its bases when seen,
# the interface).  Walking a transport class's declaration costs about
# 10 us; a declaration whose bases changed since (classImplements) is
# walked again.
_LAST_INTERFACE = {}


def _lastInterface(spec):
    """
    The last interface C{iter(spec)} yields (what Twisted's loop of
    C{directlyProvides} leaves), or L{None}.
    """
    seen = _LAST_INTERFACE.get(spec)
    if seen is not None and seen[0] is spec.__bases__:
        return seen[1]
    last = None
    for last in spec:
        pass
    if len(_LAST_INTERFACE) < 256:  # classes' declarations, not instances'
        _LAST_INTERFACE[spec] = (spec.__bases__, last)
    return last


class LockedConnection:
    """
    The pyOpenSSL C{Connection} of a connection whose TLS runs in C, as
    C{getHandle()} returns it and as L{TLSProtocol} calls it itself
    (C{getPeerCertificate}, C{negotiatedProtocol}, the server name's
    check): each method call holds the SSL object's lock, which the C
    worker holds around its own OpenSSL calls on it, so that none runs
    while the worker reads or writes records (a TLS 1.3 session ticket
    that the worker reads replaces the connection's session and frees the
    old one).  Other attributes are the C{Connection}'s own, and
    C{isinstance} sees a C{Connection}.
    """

    __slots__ = ("_ameConnection", "_ameSSL")

    def __init__(self, connection):
        object.__setattr__(self, "_ameConnection", connection)
        object.__setattr__(
            self, "_ameSSL", int(_ffi.cast("uintptr_t", connection._ssl)))

    @property
    def __class__(self):
        return type(self._ameConnection)

    def __getattr__(self, name):
        value = getattr(self._ameConnection, name)
        if isinstance(value, types.MethodType):
            return functools.partial(_ame.tls_locked, self._ameSSL, value)
        return value

    def __setattr__(self, name, value):
        setattr(self._ameConnection, name, value)

    def __delattr__(self, name):
        delattr(self._ameConnection, name)

    def __repr__(self):
        return "<LockedConnection %r>" % (self._ameConnection,)


def _createConnection(factory, tlsProtocol):
    """
    What L{tls.TLSMemoryBIOFactory._createConnection} does for C{factory}
    (any TLSMemoryBIOFactory), then, where L{_whyPython} finds nothing
    against it, hand the connection to the C worker (C{tlsProtocol._ameC})
    and return it as a L{LockedConnection}.
    """
    client = factory._creatorInterface is IOpenSSLClientConnectionCreator
    creator = factory._connectionCreator
    if client:
        conn = creator.clientConnectionForTLS(tlsProtocol)
    else:
        conn = creator.serverConnectionForTLS(tlsProtocol)
    protocols = None
    if IProtocolNegotiationFactory.providedBy(factory.wrappedFactory):
        protocols = list(factory.wrappedFactory.acceptableProtocols())
    else:
        options = getattr(creator, "_oldStyleContextFactory", creator)
        if getattr(options, "_acceptableProtocols", None):
            protocols = list(options._acceptableProtocols)
    transport = getattr(tlsProtocol, "_ameTransport", None)
    why = _whyPython(conn, transport, client, protocols)
    # ALPN in C wherever OpenSSL is ours: a server's choice then needs no
    # Python, whichever side drives the connection.
    negotiated = False
    if (protocols and _SAME_LIBSSL and isinstance(conn, SSL.Connection)
            and (why is None or not client)):
        try:
            _negotiation(conn, client, protocols)
            negotiated = True
        except (ValueError, RuntimeError):
            why = why or "alpn"
    if not negotiated and IProtocolNegotiationFactory.providedBy(
        factory.wrappedFactory
    ):
        factory._applyProtocolNegotiation(conn)
    if client:
        conn.set_connect_state()
    else:
        conn.set_accept_state()
    checker = (_hostnameChecker(conn.get_context())
               if client and why is None else None)
    if why is None:
        try:
            if checker is not None and checker._hostnameIsDnsName:
                # What the info callback does at the handshake's start.
                conn.set_tlsext_host_name(checker._hostnameBytes)
            transport._ameStartTLS(
                conn, int(_ffi.cast("uintptr_t", conn._ssl)), _METHOD,
                _plainVerify(conn), checker is not None, tlsProtocol,
            )
        except (ValueError, RuntimeError, OSError):
            why = "start"
    if why is None:
        tlsProtocol._ameC = True
        tlsProtocol._ameHostname = checker
    reactor = getattr(factory, "_ameReactor", None) or getattr(
        transport, "reactor", None)
    if reactor is not None:
        count(reactor, why is None)
    return conn if why is not None else LockedConnection(conn)


def _negotiation(conn, client, protocols):
    """
    ALPN without Python: a client offers its list on the connection; a
    server picks in C (tls.c) from the same list, in the same order of
    preference as Twisted's callback.
    """
    if client:
        conn.set_alpn_protos(protocols)
        return
    ctx = conn.get_context()
    first = not getattr(ctx, "_ameALPN", False)
    _ame.tls_alpn(int(_ffi.cast("uintptr_t", conn._ssl)), _wire(protocols),
                  first)
    if first:
        ctx._ameALPN = True
        # pyOpenSSL's own callback no longer runs on this context.
        ctx._alpn_select_helper = None
        ctx._alpn_select_callback = None


class TLSFactory(tls.TLSMemoryBIOFactory):
    """
    L{tls.TLSMemoryBIOFactory} for C{listenSSL} and C{connectSSL}: its
    connections' TLS runs in C where it can (L{TLSProtocol}), counted on
    C{reactor}.
    """

    protocol = TLSProtocol

    def __init__(self, contextFactory, isClient, wrappedFactory, reactor):
        tls.TLSMemoryBIOFactory.__init__(
            self, contextFactory, isClient, wrappedFactory
        )
        self._ameReactor = reactor


class _Bypass(_newtls._BypassTLS):
    """
    The transport of the L{TLSProtocol} that L{startTLS} makes: Twisted's
    L{_newtls._BypassTLS} over the connection, except that while the
    protocol's TLS is C's, C{write} hands plaintext to the C stream, which
    encrypts it (the bytes Twisted's TLS would write here are records).
    """

    def __init__(self, connection, protocol):
        _newtls._BypassTLS.__init__(self, FileDescriptor, connection)
        self._ameProtocol = protocol

    def write(self, data):
        if self._ameProtocol._ameC:
            return _ame.Stream.write(self._connection, data)
        return _newtls._BypassTLS.write(self, data)

    def writeSequence(self, iovec):
        if self._ameProtocol._ameC:
            return _ame.Stream.writeSequence(self._connection, iovec)
        return _newtls._BypassTLS.writeSequence(self, iovec)

    def registerProducer(self, producer, streaming):
        _newtls._BypassTLS.registerProducer(self, producer, streaming)
        self._connection._ameWatchDrain()


def startTLS(transport, contextFactory, normal):
    """
    C{transport.startTLS} on an AMEReactor C stream: what Twisted's
    L{_newtls.startTLS} does, with a L{TLSProtocol} (so the handshake and
    the records run in C where L{_whyPython} allows, counted as for
    C{listenSSL}) over a L{_Bypass}.  What was written before leaves as
    plaintext first (L{_ame.Stream._ameStartTLS}).
    """
    if normal:
        client = transport._tlsClientDefault
    else:
        client = not transport._tlsClientDefault
    producer, streaming = None, None
    if transport.producer is not None:
        producer, streaming = transport.producer, transport.streamingProducer
        transport.unregisterProducer()
    factory = TLSFactory(contextFactory, client, None, transport.reactor)
    protocol = TLSProtocol(factory, transport.protocol, False)
    transport.protocol = protocol
    transport.getHandle = protocol.getHandle
    transport.getPeerCertificate = protocol.getPeerCertificate
    directlyProvides(transport, ISSLTransport)
    transport.TLS = True
    protocol.makeConnection(_Bypass(transport, protocol))
    if producer:
        transport.registerProducer(producer, streaming)


def adopt():
    """
    Make every L{tls.TLSMemoryBIOFactory} of the process build
    L{TLSProtocol}s, so that TLS made outside C{listenSSL}/C{connectSSL}
    (C{wrapClientTLS}: the C{tls:} endpoint, twisted.web's C{Agent}; a
    factory made by hand) runs in C too on an AMEReactor's C streams.  On
    any other transport a L{TLSProtocol} is Twisted's own TLS, unchanged.
    Called when an AMEReactor is made.
    """
    tls.TLSMemoryBIOFactory.protocol = TLSProtocol


def count(reactor, inC):
    """
    Count a TLS connection of C{reactor}: C's (C{inC}) or Twisted's.
    """
    name = "_ameTLSC" if inC else "_ameTLSPython"
    setattr(reactor, name, getattr(reactor, name, 0) + 1)
    TOTALS["c" if inC else "python"] += 1


__all__ = ["LockedConnection", "TLSFactory", "TLSProtocol", "TOTALS", "adopt",
           "count", "startTLS"]
