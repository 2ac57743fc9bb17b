"""
TLS on AMEReactor (listenSSL, connectSSL, wrapClientTLS, startTLS;
bindings/ame/_tls.py and tls.c),
run as a mixin over EPollReactor, AMEReactor with io="thread" and with
io="inline": the same outcome on each, and on AMEReactor the counters say
whether the connection's TLS ran in C (ameStats()["tls_c"]) or fell back to
Twisted's (["tls_python"]).

Peers are Python's ssl module on a thread of their own, so that what is
tested is AMEReactor's server alone; the client tests (connectSSL,
optionsForClientTLS, wrapClientTLS) talk to listenSSL on the same reactor.
Certificates are made with cryptography (Debian's python3-cryptography,
which pyOpenSSL uses) when the tests start.

Run with Debian's python and the extension built::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 -m twisted.trial tests/python/test_tls.py
"""

import datetime
import gc
import os
import socket
import ssl
import tempfile
import threading
import time
import weakref

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from zope.interface import implementer

from twisted.internet import protocol
from twisted.internet import _sslverify
from twisted.internet import ssl as tssl
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ame.reactor import AMEReactor

# ---------------------------------------------------------------------------
# Certificates.

_NOW = datetime.datetime.utcnow()


def _cert(cn, key, issuer=None, issuerKey=None, days=(-1, 30), ca=False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW + datetime.timedelta(days=days[0]))
        .not_valid_after(_NOW + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn)]), False)
    return b.sign(issuerKey or key, hashes.SHA256())


def _pem(cert, key=None):
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()) + out
    return out


def _certificates():
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ame test CA", caKey, ca=True)
    serverKey = ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", serverKey, ca, caKey)
    expired = _cert("localhost", serverKey, ca, caKey, days=(-30, -1))
    clientKey = ec.generate_private_key(ec.SECP256R1())
    client = _cert("ame client", clientKey, ca, caKey)
    return {
        "ca": _pem(ca),
        "server": _pem(server, serverKey),
        "expired": _pem(expired, serverKey),
        "client": _pem(client, clientKey),
    }


CERTS = _certificates()


def _file(data):
    fd, path = tempfile.mkstemp(suffix=".pem")
    os.write(fd, data)
    os.close(fd)
    return path


def _clientContext(verify=False, cert=None, maximum=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        path = _file(CERTS["ca"])
        ctx.load_verify_locations(path)
        os.unlink(path)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        path = _file(cert)
        ctx.load_cert_chain(path)
        os.unlink(path)
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _serverOptions(which="server"):
    return tssl.PrivateCertificate.loadPEM(CERTS[which]).options()


_SLOW = []


def _slowOptions():
    """
    Server options whose handshake step takes a few milliseconds in the
    pool (an RSA-4096 signature); the key is made once.
    """
    if not _SLOW:
        key = rsa.generate_private_key(65537, 4096)
        _SLOW.append(_pem(_cert("localhost", key), key))
    return tssl.PrivateCertificate.loadPEM(_SLOW[0]).options()


# ---------------------------------------------------------------------------
# Protocols.


@implementer(IHandshakeListener)
class _Server(protocol.Protocol):
    """
    Records what happens to it in the factory's C{events}; echoes data in
    upper case; C{quit} closes, C{big} answers with C{factory.big} bytes
    and closes, C{abort} aborts.
    """

    def connectionMade(self):
        self.factory.events.append(("made", self.transport.getPeerCertificate()))

    def handshakeCompleted(self):
        t = self.transport
        peer = t.getPeerCertificate()
        self.factory.events.append((
            "handshake",
            peer.get_subject().CN if peer is not None else None,
            t.negotiatedProtocol,
            isinstance(t.getHandle(), SSL.Connection),
            t.getHandle().get_servername(),
        ))

    def dataReceived(self, data):
        self.factory.events.append(("data", data))
        if data == b"big":
            self.transport.write(b"b" * self.factory.big)
            self.transport.loseConnection()
            return
        if data == b"abort":
            self.transport.write(b"dropped")
            self.transport.abortConnection()
            return
        self.transport.write(data.upper())
        if data == b"quit":
            self.transport.loseConnection()
            # Dropped: written after loseConnection (no producer).
            self.transport.write(b"LATE")
            self.transport.writeSequence([b"LATER"])

    def connectionLost(self, reason):
        self.factory.events.append(("lost", reason.value))
        self.factory.lost += 1


class _StartTLSServer(_Server):
    """
    A plaintext L{_Server} until C{starttls}: it answers C{GO}, in clear,
    and starts TLS as a server with the factory's C{options} (the same
    call, right after the write); then it is L{_Server} over TLS.
    """

    def connectionMade(self):
        self.factory.events.append(("made", None))

    def handshakeCompleted(self):
        # After startTLS the transport is the TCP one, with the
        # ISSLTransport methods Twisted gives it (not negotiatedProtocol).
        peer = self.transport.getPeerCertificate()
        self.factory.events.append((
            "handshake", peer.get_subject().CN if peer is not None else None,
            isinstance(self.transport.getHandle(), SSL.Connection)))

    def dataReceived(self, data):
        if data == b"starttls":
            self.transport.write(b"GO")
            self.transport.startTLS(self.factory.options)
            self.factory.events.append(
                ("ssl", ISSLTransport.providedBy(self.transport)))
            return
        _Server.dataReceived(self, data)


class _BytesLikeServer(_StartTLSServer):
    """
    A L{_StartTLSServer} that answers C{kinds} with writes of bytes-like
    objects that are not bytes (taken by Twisted's TLS), then a str (refused
    with TypeError, recorded), then closes.
    """

    def connectionMade(self):
        self.factory.events.append(("made", None))

    def dataReceived(self, data):
        if data != b"kinds":
            return _StartTLSServer.dataReceived(self, data)
        self.transport.write(bytearray(b"A"))
        self.transport.write(memoryview(b"xBx")[1:2])
        self.transport.writeSequence([bytearray(b"C"), b"D"])
        try:
            self.transport.write("E")
        except TypeError as e:
            self.factory.events.append(("refused", str(e)))
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class _ALPNFactory(protocol.Factory):
    def acceptableProtocols(self):
        return [b"h2", b"http/1.1"]


def _factory(cls=protocol.Factory):
    f = cls.forProtocol(_Server)
    f.events = []
    f.lost = 0
    f.big = 0
    return f


def _keepingFactory():
    """
    A L{_factory} whose L{_Server}s are kept, in the order made: (the
    factory, that list).
    """
    servers = []

    class Server(_Server):
        def connectionMade(self):
            servers.append(self)
            _Server.connectionMade(self)

    f = _factory()
    f.protocol = Server
    return f, servers


def _threads(*names):
    """
    This process's threads named one of names that have not begun to
    exit: {(thread id, name)}.  (A joined thread can still be listed in
    /proc for a moment after pthread_join returns: the kernel wakes the
    joiner as the thread exits, before it lets the task go.  It has its
    PF_EXITING flag set from the start of its exit.)
    """
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/stat" % tid) as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        # "TID (NAME) STATE PPID PGRP SESSION TTY TPGID FLAGS ..."
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        exiting = fields[0] in ("Z", "X") or int(fields[6]) & 0x4
        if name in names and not exiting:
            out.add((tid, name))
    return out


def _recvAll(s):
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not b:
            break
        out += b
    return out


def _sockets():
    """The process's open sockets (their inodes)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + fd)
        except OSError:  # the listing's own
            continue
        if link.startswith("socket:"):
            out.add(link)
    return out


def _memoryPeer(sock, ctx):
    """
    A client handshake over memory BIOs on sock: (SSLObject, incoming BIO,
    outgoing BIO), so that the test decides which records leave together.
    """
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                sock.sendall(out.read())
            data = sock.recv(65536)
            if not data:
                raise EOFError("closed during the handshake")
            inc.write(data)
    if out.pending:
        sock.sendall(out.read())
    return obj, inc, out


def _readToClose(sock, obj, inc):
    """
    The plaintext that arrives on a memory-BIO client until the TLS or TCP
    end, and how it ended: 'close_notify', 'eof' or the error.
    """
    got = b""
    while True:
        data = sock.recv(65536)
        if data:
            inc.write(data)
        else:
            inc.write_eof()
        while True:
            try:
                b = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                return got, "close_notify"
            except ssl.SSLError as e:
                return got, repr(e)
            if not b:
                return got, "eof"
            got += b
        if not data:
            return got, "eof"


class TLSBehaviourMixin:
    reactorFactory = None
    timeout = 20
    # Whether a server connection's TLS drops session tickets that could
    # never resume (tls.c): only where it runs in C.
    deadTicketsDropped = False

    def buildReactor(self):
        reactor = self.reactorFactory()
        self.addCleanup(self._unbuild, reactor)
        return reactor

    def _unbuild(self, reactor):
        reactor.disconnectAll()
        for c in reactor.getDelayedCalls():
            c.cancel()

    def serve(self, reactor, peer, until=None, crash=False):
        """
        Run the reactor while peer() runs on a thread; stop when it
        returned and until() (if given) is true (crash: end the run with
        crash() instead, so that the reactor can run again).  Return
        peer's result.
        """
        out = {}

        def run():
            try:
                out["result"] = peer()
            except BaseException as e:
                out["error"] = e
            reactor.callFromThread(check)

        def check():
            if until is None or until():
                (reactor.crash if crash else reactor.stop)()
            else:
                reactor.callLater(0.01, check)

        timer = reactor.callLater(self.timeout, reactor.stop)
        reactor.callWhenRunning(threading.Thread(target=run,
                                                 daemon=True).start)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timer.active(), "still running after the timeout")
        timer.cancel()
        if "error" in out:
            raise out["error"]
        return out.get("result")

    def listen(self, reactor, factory, options=None):
        port = reactor.listenSSL(0, factory, options or _serverOptions(),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def quitOnce(self, port, after):
        """
        A peer for serve(): one connection that says "quit" and reads the
        answer to its end; then the result of after().
        """
        def peer():
            s = self.connect(port, _clientContext())
            s.sendall(b"quit")
            self.assertEqual(_recvAll(s), b"QUIT")
            s.close()
            return after()
        return peer

    def connect(self, port, ctx=None):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        return (ctx or _clientContext()).wrap_socket(
            s, server_hostname="localhost")

    def assertTLS(self, reactor, c, python=0):
        """
        On AMEReactor: c connections had their TLS in C, python Twisted's.
        """

    def test_echoAndCloseNotify(self):
        """
        Data goes both ways; the server's loseConnection() sends
        close_notify after what it wrote (the peer reads a clean end), what
        it writes after that is dropped, and the server's protocol sees the
        handshake before any data.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            s.sendall(b"hello")
            first = s.recv(100)
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            return first, rest

        first, rest = self.serve(reactor, peer, lambda: f.lost)
        self.assertEqual((first, rest), (b"HELLO", b"QUIT"))
        kinds = [e[0] for e in f.events]
        self.assertEqual(kinds, ["made", "handshake", "data", "data", "lost"])
        self.assertEqual(f.events[0], ("made", None))
        self.assertEqual(f.events[1],
                         ("handshake", None, None, True, b"localhost"))
        self.assertIsInstance(f.events[-1][1], (ConnectionDone,
                                                ConnectionLost))
        self.assertTLS(reactor, 1)

    def test_largeResponseThenClose(self):
        """
        A response far larger than the socket buffers arrives whole before
        close_notify.
        """
        reactor = self.buildReactor()
        f = _factory()
        f.big = 3 * 1024 * 1024 + 17
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            s.sendall(b"big")
            got = b""
            while True:
                b = s.recv(1 << 20)
                if not b:
                    break
                got += b
            s.close()
            return got

        got = self.serve(reactor, peer, lambda: f.lost)
        self.assertEqual(len(got), f.big)
        self.assertTLS(reactor, 1)

    def _closeNotifyWithRequest(self, request, big=0):
        """
        A client sends request and its close_notify in one write, then
        reads: (what it read, how it ended, the server's events).
        """
        reactor = self.buildReactor()
        f = _factory()
        f.big = big
        port = self.listen(reactor, f)

        def peer():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            obj, inc, out = _memoryPeer(s, _clientContext())
            obj.write(request)
            try:
                obj.unwrap()
            except ssl.SSLWantReadError:
                pass  # our close_notify is written; the peer's is awaited
            s.sendall(out.read())
            got = _readToClose(s, obj, inc)
            s.close()
            return got

        got, end = self.serve(reactor, peer, lambda: f.lost)
        self.assertTLS(reactor, 1)
        return got, end, f.events

    def test_requestWithCloseNotify(self):
        """
        A request and the peer's close_notify in one flight: as under
        Twisted, the protocol reads the request, its reply goes out, then
        our close_notify, and the connection ends cleanly.
        """
        got, end, events = self._closeNotifyWithRequest(b"hello")
        self.assertEqual((got, end), (b"HELLO", "close_notify"))
        self.assertEqual([e[0] for e in events][-2:], ["data", "lost"])
        self.assertIsInstance(events[-1][1], ConnectionDone)

    def test_largeReplyToCloseNotify(self):
        """
        The peer's close_notify does not cut short a reply far larger than
        the socket buffers, written (with loseConnection) in answer to the
        request that came with it.
        """
        big = 3 * 1024 * 1024 + 17
        got, end, events = self._closeNotifyWithRequest(b"big", big)
        self.assertEqual((len(got), end), (big, "close_notify"))
        self.assertIsInstance(events[-1][1], ConnectionDone)

    def test_abortReportsConnectionLost(self):
        """
        A server that aborts after the handshake drops what it wrote, and
        its protocol's connectionLost gets ConnectionLost, as under
        Twisted's TLS (which reads an end of file without close_notify
        after the abort), not the transport's ConnectionAborted.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            s.sendall(b"abort")
            got = _recvAll(s)
            s.close()
            return got

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost), b"")
        self.assertEqual([e[0] for e in f.events],
                         ["made", "handshake", "data", "lost"])
        self.assertIs(type(f.events[-1][1]), ConnectionLost)
        self.assertTLS(reactor, 1)

    def test_halfCloseWithoutCloseNotify(self):
        """
        A peer that shuts its sending side down (TCP) without close_notify
        after a request gets no alert back, as under Twisted's TLS (which
        learns of the end only once the transport is lost): it reads a
        plain end, and the server's protocol gets ConnectionLost.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            s.sendall(b"req")
            self.assertEqual(s.recv(3), b"REQ")
            raw = socket.socket(fileno=os.dup(s.fileno()))
            raw.shutdown(socket.SHUT_WR)  # no close_notify
            raw.close()
            try:
                got = s.recv(100)
            except ssl.SSLError as e:
                got = e.reason
            s.close()
            return got

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost), b"")
        self.assertIs(type(f.events[-1][1]), ConnectionLost)
        self.assertTLS(reactor, 1)

    def test_alpn(self):
        """
        A factory's acceptableProtocols are negotiated by the server's
        order of preference.
        """
        reactor = self.buildReactor()
        f = _factory(_ALPNFactory)
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port, _clientContext(alpn=["http/1.1", "h2"]))
            chosen = s.selected_alpn_protocol()
            s.sendall(b"quit")
            _recvAll(s)
            s.close()
            return chosen

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost), "h2")
        self.assertEqual(f.events[1][2], b"h2")
        self.assertTLS(reactor, 1)

    def test_dataReceivedLookedUpPerDelivery(self):
        """
        As Twisted's TLS, the protocol's dataReceived is looked up for
        each delivery: a protocol that rebinds it, then hands the
        connection over to another protocol (the TLS transport's
        wrappedProtocol), gets each later request where it now goes.
        """
        reactor = self.buildReactor()
        got = []

        class Other(protocol.Protocol):
            def dataReceived(self, data):
                got.append(("other", data))
                self.transport.write(b"o")
                self.transport.loseConnection()

            def connectionLost(self, reason):
                got.append(("lost", None))

        class Server(protocol.Protocol):
            def dataReceived(self, data):
                got.append(("first", data))
                self.dataReceived = self.second
                self.transport.write(b"k")

            def second(self, data):
                got.append(("second", data))
                other = Other()
                other.makeConnection(self.transport)
                self.transport.wrappedProtocol = other
                self.transport.write(b"k")

            def connectionLost(self, reason):
                got.append(("lost", None))

        f = protocol.Factory.forProtocol(Server)
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            answers = []
            for req in (b"1", b"2", b"3"):
                s.sendall(req)
                answers.append(s.recv(1))
            s.close()
            return answers

        self.assertEqual(self.serve(reactor, peer,
                                    lambda: ("lost", None) in got),
                         [b"k", b"k", b"o"])
        self.assertEqual(got[:3], [("first", b"1"), ("second", b"2"),
                                   ("other", b"3")])
        self.assertTLS(reactor, 1)

    def test_alpnNoOverlapFails(self):
        """
        A client whose ALPN list has nothing in common with the server's
        fails the handshake, as under Twisted: the server's protocol sees
        no handshake, and an SSL.Error.
        """
        reactor = self.buildReactor()
        f = _factory(_ALPNFactory)
        port = self.listen(reactor, f)

        def peer():
            try:
                s = self.connect(port, _clientContext(alpn=["spdy/3"]))
            except ssl.SSLError:
                return "refused"
            chosen = s.selected_alpn_protocol()
            s.close()
            return chosen

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost),
                         "refused")
        self.assertEqual([e[0] for e in f.events], ["made", "lost"])
        self.assertIsInstance(f.events[-1][1], SSL.Error)
        self.assertTLS(reactor, 1)

    def sessionTickets(self, options):
        """
        Two TLS 1.3 connections to a listenSSL with options, the second
        offering the first's session: (whether the first got a session
        ticket, whether the second resumed).
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, options)
        ctx = _clientContext()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3

        def once(session=None):
            s = ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10),
                server_hostname="localhost", session=session)
            s.sendall(b"quit")  # tickets come before the answer
            _recvAll(s)
            out = (s.session, s.session_reused)
            s.close()
            return out

        def peer():
            first, _ = once()
            _, reused = once(first)
            return first.has_ticket, reused

        out = self.serve(reactor, peer, lambda: f.lost == 2)
        self.assertTLS(reactor, 2)
        return out

    def test_noDeadSessionTickets(self):
        """
        Twisted's default options keep no sessions (enableSessions=False):
        under TLS 1.3 OpenSSL would still send tickets that nothing can
        resume.  Where TLS runs in C none are sent; a client resumes
        nothing either way.
        """
        self.assertEqual(self.sessionTickets(_serverOptions()),
                         (not self.deadTicketsDropped, False))

    def test_sessionTicketsResume(self):
        """
        With a session cache (enableSessions=True), tickets are sent and a
        client resumes with one, on every reactor.
        """
        key = tssl.PrivateCertificate.loadPEM(CERTS["server"])
        options = tssl.CertificateOptions(
            privateKey=key.privateKey.original, certificate=key.original,
            enableSessions=True)
        self.assertEqual(self.sessionTickets(options), (True, True))

    def test_handleWhileTicketsArrive(self):
        """
        A client may call its connection's pyOpenSSL handle (and
        getPeerCertificate) in a loop while TLS 1.3 session tickets
        arrive: where TLS runs in C the worker reads them meanwhile, each
        replacing the connection's session, and every call still answers
        whole (no crash, no error).
        """
        reactor = self.buildReactor()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        n, sent = 3, []

        def serve():
            # Python's ssl as the server: 4000 tickets per connection,
            # written as the handshake ends (about 1 MB).
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            path = _file(CERTS["server"])
            ctx.load_cert_chain(path)
            os.unlink(path)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.num_tickets = 4000
            for _ in range(n):
                s, _ = listener.accept()
                try:
                    s = ctx.wrap_socket(s, server_side=True)
                    sent.append(time.monotonic())
                    _recvAll(s)
                except OSError:
                    pass
                s.close()

        threading.Thread(target=serve, daemon=True).start()
        # The sessions got are let go of once the connections are closed:
        # a Session may be the last holder of a session the worker
        # replaced, and OpenSSL's reference counts, which order its free
        # after the worker's last use, are out of TSan's sight (libssl is
        # not instrumented).
        seen, errors, sessions = [], [], []

        @implementer(IHandshakeListener)
        class Client(protocol.Protocol):
            def handshakeCompleted(self):
                t = self.transport
                h, calls = t.getHandle(), 0
                deadline = time.monotonic() + 0.5
                # Until the server has sent its tickets (or half a second).
                while len(sent) <= self.factory.i and (
                        time.monotonic() < deadline):
                    try:
                        h = t.getHandle()
                        if len(h.get_peer_cert_chain()) != 1:
                            raise AssertionError("chain")
                        if t.getPeerCertificate() is None:
                            raise AssertionError("no certificate")
                    except Exception as e:
                        errors.append(e)
                        break
                    calls += 1
                sessions.append(h.get_session())
                seen.append((calls, isinstance(h, SSL.Connection),
                             sessions[-1] is not None))
                t.loseConnection()

            def connectionLost(self, reason):
                if self.factory.i + 1 < n:
                    connect(self.factory.i + 1)

        def connect(i):
            cf = protocol.ClientFactory.forProtocol(Client)
            cf.i = i
            reactor.connectSSL("127.0.0.1", port, cf,
                               tssl.CertificateOptions())

        connect(0)
        self.runUntil(reactor, lambda: len(seen) == n or errors)
        del sessions[:]
        self.assertEqual(errors, [])
        self.assertEqual(len(seen), n)
        self.assertTrue(all(calls > 0 and handle and session
                            for calls, handle, session in seen), seen)

    def test_garbageThenServing(self):
        """
        Bytes that are not a ClientHello end that connection with an
        SSL.Error; the next client is served.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        def peer():
            g = socket.create_connection(("127.0.0.1", port), timeout=10)
            g.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _recvAll(g)
            g.close()
            s = self.connect(port)
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            return rest

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost == 2),
                         b"QUIT")
        lost = [e[1] for e in f.events if e[0] == "lost"]
        self.assertIsInstance(lost[0], SSL.Error)
        self.assertIn("http request", str(lost[0]))
        self.assertTLS(reactor, 2)

    def test_oldProtocolRefused(self):
        """
        A TLS 1.0-only peer against the default context (which forbids
        it) fails cleanly on both sides; the next client is served.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        def peer():
            try:
                self.connect(port, _clientContext(
                    maximum=ssl.TLSVersion.TLSv1)).close()
                refused = False
            except (ssl.SSLError, OSError):
                refused = True
            s = self.connect(port)
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            return refused, rest

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost == 2),
                         (True, b"QUIT"))
        lost = [e[1] for e in f.events if e[0] == "lost"]
        self.assertIsInstance(lost[0], SSL.Error)
        self.assertTLS(reactor, 2)

    def test_expiredCertificate(self):
        """
        A client that verifies refuses the server's expired certificate:
        the server's protocol gets the alert as an SSL.Error.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, _serverOptions("expired"))

        def peer():
            try:
                self.connect(port, _clientContext(verify=True)).close()
            except ssl.SSLCertVerificationError as e:
                return e.verify_message
            return None

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost),
                         "certificate has expired")
        self.assertIsInstance(f.events[-1][1], SSL.Error)
        self.assertTLS(reactor, 1)

    def test_clientCertificate(self):
        """
        A server that requires client certificates signed by its CA sees
        the client's; a client without one is refused.  (Twisted's own
        verify callback only returns OpenSSL's verdict: C verifies.)
        """
        reactor = self.buildReactor()
        f = _factory()
        ca = tssl.Certificate.loadPEM(CERTS["ca"])
        port = self.listen(reactor, f, tssl.PrivateCertificate.loadPEM(
            CERTS["server"]).options(ca))

        def peer():
            s = self.connect(port, _clientContext(cert=CERTS["client"]))
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            s = self.connect(port)
            try:
                s.sendall(b"quit")
                anonymous = _recvAll(s)
            except (ssl.SSLError, OSError):
                anonymous = b""
            s.close()
            return rest, anonymous

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost == 2),
                         (b"QUIT", b""))
        shakes = [e for e in f.events if e[0] == "handshake"]
        self.assertEqual(shakes[0][1], "ame client")
        lost = [e[1] for e in f.events if e[0] == "lost"]
        self.assertIsInstance(lost[1], SSL.Error)
        self.assertTLS(reactor, 2)

    def test_stalledHandshakeAborted(self):
        """
        A peer that connects and never says hello is ended by the
        program's own timeout (abortConnection before the handshake); the
        reactor keeps serving.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)

        class Timeout(_Server):
            def connectionMade(self):
                _Server.connectionMade(self)
                self.timer = reactor.callLater(0.2, self.transport.abortConnection)

            def handshakeCompleted(self):
                self.timer.cancel()
                _Server.handshakeCompleted(self)

        f.protocol = Timeout

        def peer():
            idle = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.settimeout(5)
            try:
                closed = idle.recv(1) == b""
            except ConnectionResetError:
                closed = True
            idle.close()
            s = self.connect(port)
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            return closed, rest

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost == 2),
                         (True, b"QUIT"))
        self.assertTLS(reactor, 2)

    def closeAndAbortMany(self, n=30):
        """
        Serve n TLS connections one after another, from a peer on a thread.
        The server ends one in three in connectionMade, before the
        handshake (abortConnection; on AMEReactor the handshake may be on
        the pool meanwhile); for the others the peer sends C{close} or
        C{abort}, and the server answers C{bye} and ends it with
        loseConnection or abortConnection.  Return (reactor, what each
        peer saw: C{("eof", data)}, C{("reset", data)} or C{("failed",
        None)} for a handshake that failed, the sockets open before the
        connections that were still open once the reactor let go of them,
        up to 5 s later).
        """
        reactor = self.buildReactor()

        class Closer(protocol.Protocol):
            def connectionMade(self):
                if self.factory.made % 3 == 0:
                    self.transport.abortConnection()
                self.factory.made += 1

            def dataReceived(self, data):
                self.transport.write(b"bye")
                if data == b"abort":
                    self.transport.abortConnection()
                else:
                    self.transport.loseConnection()

        f = protocol.Factory.forProtocol(Closer)
        f.made = 0
        port = self.listen(reactor, f)
        before = _sockets()

        def peer():
            seen = []
            for i in range(n):
                s = None
                try:
                    # The reset of an early abort may even end connect().
                    s = socket.create_connection(("127.0.0.1", port),
                                                 timeout=10)
                    s = _clientContext().wrap_socket(
                        s, server_hostname="localhost")
                except (ssl.SSLError, OSError):
                    seen.append(("failed", None))
                    if s is not None:
                        s.close()
                    continue
                s.sendall(b"abort" if i % 3 == 1 else b"close")
                data = b""
                try:
                    while True:
                        b = s.recv(100)
                        if not b:
                            seen.append(("eof", data))
                            break
                        data += b
                except ConnectionResetError:
                    seen.append(("reset", data))
                except ssl.SSLError as e:
                    seen.append(("ssl", e.reason))
                s.close()
            return seen

        seen = self.serve(reactor, peer)
        deadline = time.monotonic() + 5
        while _sockets() - before and time.monotonic() < deadline:
            reactor.iterate(0.01)
        return reactor, seen, _sockets() - before

    def test_closeAndAbortMany(self):
        """
        loseConnection: the peer reads what was written, then the end
        (close_notify).  abortConnection before the handshake fails the
        peer's handshake; after it, the connection ends (Twisted's TLS
        writes close_notify before the abort, which may or may not get
        there before the reset) with what was written dropped or not, as
        for TCP.  No descriptor stays open.
        """
        reactor, seen, left = self.closeAndAbortMany()
        self.assertEqual(seen[0::3], [("failed", None)] * 10)
        for got in seen[1::3]:
            self.assertIn(got, [("eof", b""), ("reset", b""),
                                ("eof", b"bye"), ("reset", b"bye")])
        self.assertEqual(seen[2::3], [("eof", b"bye")] * 10)
        self.assertEqual(left, set())
        self.assertTLS(reactor, 30)

    def ping(self, connect):
        """
        Serve listenSSL on a new reactor and connect(reactor, port,
        factory) a client to it that writes b"ping" and closes once
        answered.  Return (reactor, the server's factory, what the
        client's protocol saw: data, then the connectionLost reason).
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)
        got = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"ping")

            def dataReceived(self, data):
                got.append(data)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                got.append(reason.value)
                reactor.stop()

        timer = reactor.callLater(self.timeout, reactor.stop)
        d = connect(reactor, port, protocol.ClientFactory.forProtocol(Client))
        if d is not None:  # an endpoint's Deferred
            d.addErrback(got.append)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timer.active())
        timer.cancel()
        return reactor, f, got

    def test_connectSSL(self):
        """
        connectSSL with an old-style context factory (no callbacks) talks
        to listenSSL on the same reactor.
        """
        def connect(reactor, port, factory):
            reactor.connectSSL("127.0.0.1", port, factory,
                               tssl.ClientContextFactory())

        reactor, f, got = self.ping(connect)
        self.assertEqual(got[0], b"PING")
        self.assertIsInstance(got[1], (ConnectionDone, ConnectionLost))
        self.assertTLS(reactor, 2)

    def connectMany(self, reactor, port, client, n, until):
        """
        Make n connectSSL clients with protocol client (each factory's
        C{i}: its number) to port at once, then run the reactor until
        until() is true.
        """
        for i in range(n):
            cf = protocol.ClientFactory.forProtocol(client)
            cf.i = i
            reactor.connectSSL("127.0.0.1", port, cf,
                               tssl.CertificateOptions())
        self.runUntil(reactor, until)

    def runUntil(self, reactor, until):
        """
        Run the reactor until until() is true (checked every 10 ms), and
        fail if self.timeout passes first.
        """
        def check():
            if until():
                reactor.stop()
            else:
                reactor.callLater(0.01, check)

        timer = reactor.callLater(self.timeout, reactor.stop)
        reactor.callLater(0, check)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timer.active(), "still running after the timeout")
        timer.cancel()

    def test_handshakesAtOnce(self):
        """
        Many TLS clients made with connectSSL at once against listenSSL on
        the same reactor: their handshakes overlap (on AMEReactor, both
        sides' steps in the pool together while the worker goes on with
        the other connections), and each client gets back its own bytes
        only, then the end.
        """
        n = 24
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)
        got = {}
        ended = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                got[self.factory.i] = b""
                self.transport.write(b"client %d" % (self.factory.i,))

            def dataReceived(self, data):
                got[self.factory.i] += data
                if got[self.factory.i] == b"CLIENT %d" % (self.factory.i,):
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                ended.append((self.factory.i, type(reason.value)))

        self.connectMany(reactor, port, Client, n, lambda: len(ended) == n)
        self.assertEqual(got, {i: b"CLIENT %d" % (i,) for i in range(n)})
        self.assertEqual(sorted(i for i, _ in ended), list(range(n)))
        for _, why in ended:
            self.assertIn(why, (ConnectionDone, ConnectionLost))
        self.assertEqual(
            sorted(e[1] for e in f.events if e[0] == "data"),
            sorted(b"client %d" % (i,) for i in range(n)))
        self.assertTLS(reactor, 2 * n)

    def test_abortsAmongHandshakes(self):
        """
        Among many TLS clients made at once, every other one aborts in
        connectionMade, while its first handshake step may be in the pool
        (on AMEReactor a client's steps all go there): it ends with
        ConnectionLost (what Twisted's TLS reads after an abort: an end
        of file without close_notify, not the transport's
        ConnectionAborted) and nothing read, its server side ends too,
        the others are served as if alone, and no descriptor stays open.
        """
        n = 24
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f)
        before = _sockets()
        got = {}
        ended = {}

        class Client(protocol.Protocol):
            def connectionMade(self):
                i = self.factory.i
                got[i] = b""
                if i % 4 == 1:
                    self.transport.abortConnection()
                elif i % 4 == 3:  # likelier with a step in the pool
                    reactor.callLater(0, self.transport.abortConnection)
                else:
                    self.transport.write(b"client %d" % (i,))

            def dataReceived(self, data):
                i = self.factory.i
                got[i] += data
                if got[i] == b"CLIENT %d" % (i,):
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                ended[self.factory.i] = type(reason.value)

        self.connectMany(reactor, port, Client, n,
                         lambda: len(ended) == n and f.lost == n)
        self.assertEqual(got, {i: b"" if i % 2 else b"CLIENT %d" % (i,)
                               for i in range(n)})
        for i in range(n):
            if i % 2:
                self.assertEqual(ended[i], ConnectionLost)
            else:
                self.assertIn(ended[i], (ConnectionDone, ConnectionLost))
        self.assertEqual(
            sorted(e[1] for e in f.events if e[0] == "data"),
            sorted(b"client %d" % (i,) for i in range(0, n, 2)))
        deadline = time.monotonic() + 5
        while _sockets() - before and time.monotonic() < deadline:
            reactor.iterate(0.01)
        self.assertEqual(_sockets() - before, set())
        self.assertTLS(reactor, 2 * n)

    def test_bytesLikeWrites(self):
        """
        Over listenSSL and after startTLS, a protocol writes bytearray and
        memoryview data as Twisted's TLS takes them; a str is refused with
        Twisted's TypeError.
        """
        reactor = self.buildReactor()
        f = _factory()
        f.protocol = _BytesLikeServer
        f.options = _serverOptions()
        tls = self.listen(reactor, f)
        tcp = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(tcp.stopListening)

        def peer():
            s = self.connect(tls)
            s.sendall(b"kinds")
            first = _recvAll(s)
            s.close()
            s = socket.create_connection(
                ("127.0.0.1", tcp.getHost().port), timeout=10)
            s.sendall(b"starttls")
            self.assertEqual(s.recv(2), b"GO")
            s = _clientContext().wrap_socket(s, server_hostname="localhost")
            s.sendall(b"kinds")
            second = _recvAll(s)
            s.close()
            return first, second

        got = self.serve(reactor, peer, lambda: f.lost == 2)
        self.assertEqual(got, (b"ABCD", b"ABCD"))
        refused = [e for e in f.events if e[0] == "refused"]
        self.assertEqual(refused, [
            ("refused", "Must write bytes to a TLS transport, not str.")] * 2)
        self.assertTLS(reactor, 2)

    def test_writeDuringRenegotiation(self):
        """
        A client's write while the server's TLS 1.2 renegotiation waits
        for the server's next records is sent once the renegotiation is
        done, as Twisted's TLS keeps it until its next read.
        """
        reactor = self.buildReactor()
        cert = tssl.PrivateCertificate.loadPEM(CERTS["server"])
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(cert.original)
        ctx.use_privatekey(cert.privateKey.original)
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        wrote = threading.Event()
        out = {}

        def server():
            s, _ = listener.accept()
            c = SSL.Connection(ctx, s)
            c.set_accept_state()
            c.do_handshake()
            c.send(b"MARK")
            c.renegotiate()
            c.do_handshake()  # HelloRequest; then wait for the client's write
            wrote.wait(10)
            s.settimeout(10)
            got = b""
            try:
                while len(got) < 5:
                    try:
                        got += c.recv(100)
                    except SSL.WantReadError:
                        continue
            except SSL.Error as e:
                out["error"] = e
            out["got"] = got
            out["renegotiations"] = c.total_renegotiations()
            s.close()

        thread = threading.Thread(target=server, daemon=True)
        thread.start()

        class Client(protocol.Protocol):
            def dataReceived(self, data):
                if data == b"MARK":
                    # After the HelloRequest: the client's answer waits for
                    # the server, which reads again only once told.
                    reactor.callLater(0.2, self.write)

            def write(self):
                self.transport.write(b"hello")
                reactor.callLater(0.2, wrote.set)

            def connectionLost(self, reason):
                reactor.stop()

        timer = reactor.callLater(self.timeout, reactor.stop)
        reactor.connectSSL("127.0.0.1", listener.getsockname()[1],
                           protocol.ClientFactory.forProtocol(Client),
                           tssl.CertificateOptions())
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timer.active())
        timer.cancel()
        thread.join(10)
        self.assertEqual(out.get("got"), b"hello", out)
        self.assertEqual(out["renegotiations"], 1)
        self.assertTLS(reactor, 1)

    def test_clientVerifyCallbackFallsBack(self):
        """
        A client context whose verify callback is the program's own, even
        under VERIFY_NONE (where OpenSSL still verifies the server's chain
        and calls it), keeps Twisted's TLS: the callback runs on the
        reactor's thread.
        """
        threads = []

        class Options:
            def getContext(self):
                ctx = SSL.Context(SSL.TLS_METHOD)

                def verify(conn, cert, errno, depth, ok):
                    threads.append(threading.current_thread())
                    return ok

                ctx.set_verify(SSL.VERIFY_NONE, verify)
                return ctx

        def connect(reactor, port, factory):
            reactor.connectSSL("127.0.0.1", port, factory, Options())

        reactor, f, got = self.ping(connect)
        self.assertEqual(got[0], b"PING")
        self.assertTrue(threads)
        self.assertEqual(set(threads), {threading.current_thread()})
        self.assertTLS(reactor, 1, python=1)

    def _clientTLS(self, hostname):
        """
        ping() over connectSSL with optionsForClientTLS(hostname), trusting
        the test CA.
        """
        ca = tssl.Certificate.loadPEM(CERTS["ca"])

        def connect(reactor, port, factory):
            reactor.connectSSL(
                "127.0.0.1", port, factory,
                tssl.optionsForClientTLS(hostname, trustRoot=ca))

        return self.ping(connect)

    def test_clientTLSOptions(self):
        """
        optionsForClientTLS: the server's certificate is verified against
        the trust root and its name checked; the client sends SNI.
        """
        reactor, f, got = self._clientTLS("localhost")
        self.assertEqual(got[0], b"PING")
        shake = [e for e in f.events if e[0] == "handshake"][0]
        self.assertEqual(shake[4], b"localhost")
        self.assertIsInstance(got[1], (ConnectionDone, ConnectionLost))
        self.assertTLS(reactor, 2)

    def test_clientTLSOptionsWrongName(self):
        """
        A server certificate for another name fails the client's check:
        its protocol gets the VerificationError, and no data.
        """
        reactor, f, got = self._clientTLS("elsewhere.example")
        self.assertEqual(len(got), 1)
        self.assertIsInstance(got[0], _sslverify.VerificationError)
        self.assertTLS(reactor, 2)

    def test_clientTLSOptionsWrongNameSendsNothing(self):
        """
        What the client wrote before its handshake (a request with
        credentials) never reaches a server whose name fails the check,
        nor does close_notify: as Twisted's TLS, which checks the name
        inside the handshake.  The peer is Python's ssl module, which
        reads until the client's abort ends the connection.
        """
        reactor = self.buildReactor()
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        path = _file(CERTS["server"])
        ctx.load_cert_chain(path)
        os.unlink(path)
        lost = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.1\r\n"
                                     b"Authorization: Bearer SECRET\r\n\r\n")
                self.transport.loseConnection()

            def connectionLost(self, reason):
                lost.append(reason.value)

        def peer():
            s, _ = listener.accept()
            s.settimeout(10)
            try:
                s = ctx.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError):  # Twisted's Finished never came
                s.close()
                return b""
            got = _recvAll(s)
            s.close()
            return got

        ca = tssl.Certificate.loadPEM(CERTS["ca"])
        reactor.connectSSL(
            "127.0.0.1", listener.getsockname()[1],
            protocol.ClientFactory.forProtocol(Client),
            tssl.optionsForClientTLS("elsewhere.example", trustRoot=ca))
        self.assertEqual(self.serve(reactor, peer, lambda: lost), b"")
        self.assertIsInstance(lost[0], _sslverify.VerificationError)
        self.assertTLS(reactor, 1)

    def test_wrapClientTLS(self):
        """
        A client endpoint wrapped with wrapClientTLS (what the tls:
        endpoint and twisted.web's Agent use: Twisted's own
        TLSMemoryBIOFactory) talks to listenSSL; on AMEReactor both
        sides' TLS is C's.
        """
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            connectProtocol,
            wrapClientTLS,
        )

        ca = tssl.Certificate.loadPEM(CERTS["ca"])

        def connect(reactor, port, factory):
            endpoint = wrapClientTLS(
                tssl.optionsForClientTLS("localhost", trustRoot=ca),
                TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            return connectProtocol(endpoint, factory.buildProtocol(None))

        reactor, f, got = self.ping(connect)
        self.assertEqual(got[0], b"PING")
        self.assertIsInstance(got[1], (ConnectionDone, ConnectionLost))
        self.assertTLS(reactor, 2)

    def test_pythonCallbackFallsBack(self):
        """
        A context with a Python callback that OpenSSL calls during the
        handshake (here an info callback) keeps Twisted's own TLS, which
        calls it.
        """
        reactor = self.buildReactor()
        f = _factory()
        calls = []
        opts = _serverOptions()
        opts.getContext().set_info_callback(
            lambda conn, where, ret: calls.append(where))
        port = self.listen(reactor, f, opts)

        def peer():
            s = self.connect(port)
            s.sendall(b"quit")
            rest = _recvAll(s)
            s.close()
            return rest

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost), b"QUIT")
        self.assertTrue(calls)
        self.assertTLS(reactor, 0, python=1)


    def _startTLSServer(self, options):
        """
        A peer sends C{starttls} in clear to a L{_StartTLSServer} on
        listenTCP, reads the plaintext C{GO}, then speaks TLS: C{quit}.
        Return (reactor, factory, (what came before TLS, what after)).
        """
        reactor = self.buildReactor()
        f = _factory()
        f.protocol = _StartTLSServer
        f.options = options
        port = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def peer():
            s = socket.create_connection(
                ("127.0.0.1", port.getHost().port), timeout=10)
            s.sendall(b"starttls")
            clear = b""
            while len(clear) < 2:
                b = s.recv(2 - len(clear))
                if not b:
                    break
                clear += b
            t = _clientContext().wrap_socket(s, server_hostname="localhost")
            t.sendall(b"quit")
            rest = _recvAll(t)
            t.close()
            return clear, rest

        return reactor, f, self.serve(reactor, peer, lambda: f.lost)

    def test_startTLS(self):
        """
        startTLS on an established connection: what was written before it
        (in the same callback) leaves in clear first, then the handshake;
        the transport provides ISSLTransport, the protocol's
        handshakeCompleted runs, writes after loseConnection are dropped.
        On AMEReactor the TLS is C's.
        """
        reactor, f, got = self._startTLSServer(_serverOptions())
        self.assertEqual(got, (b"GO", b"QUIT"))
        self.assertIn(("ssl", True), f.events)
        self.assertIn(("handshake", None, True), f.events)
        self.assertTLS(reactor, 1)

    def test_startTLSFallsBack(self):
        """
        startTLS with a context that has a Python handshake callback: the
        connection keeps Twisted's TLS (over the same transport), which
        calls it.
        """
        calls = []
        opts = _serverOptions()
        opts.getContext().set_info_callback(
            lambda conn, where, ret: calls.append(where))
        reactor, f, got = self._startTLSServer(opts)
        self.assertEqual(got, (b"GO", b"QUIT"))
        self.assertTrue(calls)
        self.assertTLS(reactor, 0, python=1)

    def test_startTLSBothEnds(self):
        """
        Both ends on the reactor: a connectTCP client asks for
        C{starttls} and, on C{GO}, starts TLS as a client with
        optionsForClientTLS (the server's name and chain checked); then
        C{ping} gets C{PING}.  On AMEReactor both sides' TLS is C's.
        """
        reactor = self.buildReactor()
        f = _factory()
        f.protocol = _StartTLSServer
        f.options = _serverOptions()
        port = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ca = tssl.Certificate.loadPEM(CERTS["ca"])
        got = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"starttls")

            def dataReceived(self, data):
                got.append(data)
                if data == b"GO":
                    self.transport.startTLS(
                        tssl.optionsForClientTLS("localhost", trustRoot=ca))
                    self.transport.write(b"ping")
                else:
                    got.append(self.transport.getPeerCertificate()
                               .get_subject().CN)
                    self.transport.loseConnection()

            def connectionLost(self, reason):
                got.append(reason.value)
                reactor.callLater(0.05, reactor.stop)

        timer = reactor.callLater(self.timeout, reactor.stop)
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           protocol.ClientFactory.forProtocol(Client))
        reactor.run(installSignalHandlers=False)
        self.assertTrue(timer.active())
        timer.cancel()
        self.assertEqual(got[:3], [b"GO", b"PING", "localhost"])
        self.assertIsInstance(got[3], (ConnectionDone, ConnectionLost))
        self.assertTLS(reactor, 2)


class WireTests(SynchronousTestCase):
    """
    The wire form of an ALPN list, which C is handed (ame._tls._wire,
    kept per list).
    """

    def test_wire(self):
        """
        Each name is prefixed with its length; a list seen before gives
        the same bytes, in a list or a tuple.
        """
        from ame._tls import _wire

        want = b"\x02h2\x08http/1.1"
        self.assertEqual(_wire([b"h2", b"http/1.1"]), want)
        self.assertEqual(_wire((b"h2", b"http/1.1")), want)
        self.assertEqual(_wire([b"h2", b"http/1.1"]), want)

    def test_badNames(self):
        """
        A name that is not bytes of 1 to 255 bytes is refused with
        ValueError (the connection's ALPN then stays Twisted's), also one
        that cannot be hashed.
        """
        from ame._tls import _wire

        for names in (["h2"], [bytearray(b"h2")], [b""], [b"x" * 256],
                      [b"h2", memoryview(b"h2")]):
            self.assertRaises(ValueError, _wire, names)


class EPollTLSTests(TLSBehaviourMixin, SynchronousTestCase):
    reactorFactory = EPollReactor


class AMETLSTests(TLSBehaviourMixin, SynchronousTestCase):
    reactorFactory = staticmethod(lambda: AMEReactor(io="thread"))
    # With a C thread, handshake steps run on the handshake pool.
    pooled = True
    deadTicketsDropped = True

    def assertTLS(self, reactor, c, python=0):
        stats = reactor.ameStats()
        self.assertEqual((stats["tls_c"], stats["tls_python"]), (c, python))
        self.assertEqual(stats["tls_c_open"], 0)
        if c:
            self.assertEqual(stats["tls_c_pool_steps"] > 0, self.pooled,
                             "handshake steps in the pool: %d"
                             % (stats["tls_c_pool_steps"],))


    def test_closeWithoutWaiting(self):
        """
        Closing a connection whose TLS is C's does not wait for the worker
        (which closes the descriptor, and lets go of the SSL object, once
        it is done with them): no barrier per connection.
        """
        reactor, seen, left = self.closeAndAbortMany()
        self.assertEqual(len(seen), 30)
        self.assertEqual(left, set())
        self.assertLess(reactor.ameStats()["watch_barriers"], 10)

    def poolSteps(self, options, ctx, n=3):
        """
        The handshake steps that went to the pool while n clients with
        context ctx each made a TLS connection to a server with options
        and were served.
        """
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, options)

        def peer():
            for _ in range(n):
                s = self.connect(port, ctx)
                s.sendall(b"quit")
                self.assertEqual(_recvAll(s), b"QUIT")
                s.close()

        self.serve(reactor, peer, lambda: f.lost == n)
        self.assertTLS(reactor, n)
        return reactor.ameStats()["tls_c_pool_steps"]

    def test_threadsNamed(self):
        """
        ame's C threads carry names of their own (the reactor's ame-io, the
        handshake pool's ame-tls), so that top -H, perf and /proc show
        their CPU apart from Python's.
        """
        def named():
            return _threads("ame-io", "ame-tls")

        before = named()  # other reactors' threads in this process
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, _serverOptions())

        names = self.serve(reactor, self.quitOnce(
            port, lambda: {name for tid, name in named() - before}),
            lambda: f.lost == 1)
        self.assertTLS(reactor, 1)
        if self.pooled:
            self.assertEqual(names, {"ame-io", "ame-tls"})
        else:  # io="inline": no thread of ame's own
            self.assertEqual(names, set())

    def test_poolEndsWithRun(self):
        """
        When run() returns, the reactor's handshake pool threads have
        ended (a stopped reactor in a long-lived process keeps no idle
        threads of it); run again, the reactor starts them at its next TLS
        connection, which completes as the first did.
        """
        if not self.pooled:
            raise SkipTest("io=inline has no handshake pool")

        def pool():
            return _threads("ame-tls")

        before = pool()  # other reactors' pools in this process
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, _serverOptions())

        peer = self.quitOnce(port, lambda: pool() - before)
        for run in (1, 2):
            during = self.serve(reactor, peer, lambda: f.lost == run,
                                crash=run == 1)
            self.assertTrue(during, "no handshake pool thread in run %d" % run)
            self.assertEqual(pool() & during, set())
        self.assertTLS(reactor, 2)

    def test_freedWithoutCollector(self):
        """
        A connection whose TLS was C's leaves no reference cycle behind:
        once it is lost, its TLS protocol and the application's protocol,
        registered as the connection's producer as twisted.web's channel
        is, are freed by reference counting alone, as over plain TCP, both
        when the protocol let go of the producer and closed (as
        twisted.web does) and when the peer closed.  (A cycle per
        connection is left to the garbage collector, whose passes a busy
        server pays for.)
        """
        refs = []

        class Producing(_Server):
            def connectionMade(self):
                _Server.connectionMade(self)
                self.transport.registerProducer(self, True)
                refs.extend([weakref.ref(self), weakref.ref(self.transport)])

            def dataReceived(self, data):
                if data == b"quit":
                    self.transport.unregisterProducer()
                _Server.dataReceived(self, data)

            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        reactor = self.buildReactor()
        f = _factory()
        f.protocol = Producing
        port = self.listen(reactor, f)

        def peer():
            s = self.connect(port)
            s.sendall(b"quit")
            self.assertEqual(_recvAll(s), b"QUIT")
            s.close()
            s = self.connect(port)
            s.sendall(b"hello")
            self.assertEqual(s.recv(100), b"HELLO")
            s.close()

        self.serve(reactor, peer, lambda: f.lost == 2)
        self.assertTLS(reactor, 2)
        self.assertEqual(len(refs), 4)
        self.assertEqual([r() for r in refs if r() is not None], [])

    def test_poolOnlyForPublicKeySteps(self):
        """
        A server's handshake steps go to the handshake pool where they
        hold a public-key operation: the answer to the ClientHello (under
        TLS 1.3 the only one: the client's Finished is checked on the
        worker), TLS 1.2's ClientKeyExchange too, and every step of a
        server that asks for the client's certificate.
        """
        if not self.pooled:
            # One thread, no pool: every step runs on it.
            self.assertEqual(
                self.poolSteps(_serverOptions(), _clientContext()), 0)
            return
        self.assertEqual(self.poolSteps(_serverOptions(), _clientContext()),
                         3)
        self.assertGreaterEqual(
            self.poolSteps(_serverOptions(), _clientContext(
                maximum=ssl.TLSVersion.TLSv1_2)), 6)
        ca = tssl.Certificate.loadPEM(CERTS["ca"])
        self.assertEqual(
            self.poolSteps(tssl.PrivateCertificate.loadPEM(
                CERTS["server"]).options(ca),
                _clientContext(cert=CERTS["client"])), 6)


    def test_noReadingWhileHeld(self):
        """
        A peer that sends its ClientHello and closes its side while the
        handshake step runs in the pool (an RSA-4096 signature: a few
        milliseconds) does not keep the worker reading: the end of input
        is held with the ClientHello until the step is done, and the fd is
        not watched meanwhile (a peer's FIN keeps it readable).  Counted
        in worker callbacks: a few, not one per turn of the loop.
        """
        if not self.pooled:
            raise SkipTest("no handshake pool: the step runs on the thread")
        options = _slowOptions()
        reactor = self.buildReactor()
        f = _factory()
        port = self.listen(reactor, f, options)

        def client():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = _clientContext().wrap_bio(inc, out,
                                            server_hostname="localhost")
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            while not f.events:  # TLS is on once the protocol exists
                time.sleep(0.01)
            before = reactor.ameStats()["callbacks"]
            s.sendall(out.read())
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            s.close()
            return before

        before = self.serve(reactor, client, lambda: f.lost)
        self.assertLess(reactor.ameStats()["callbacks"] - before, 50)
        self.assertEqual([e[0] for e in f.events], ["made", "lost"])
        self.assertTLS(reactor, 1)

    def test_noHandshakeCompletedAfterAbort(self):
        """
        The worker may complete a handshake just as the protocol aborts the
        connection.  Its news, delivered after abortConnection(), does not
        reach the protocol, which sees connectionLost only: Twisted's TLS
        reads nothing after an abort, so its handshake never completes.
        """
        reactor = self.buildReactor()
        f, servers = _keepingFactory()
        port = self.listen(reactor, f)

        def abortThenNews():
            t = servers[0].transport
            t.abortConnection()
            t._ameHandshakeDone()  # the news, as C delivers it

        def peer():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            while not servers:
                time.sleep(0.001)
            reactor.callFromThread(abortThenNews)
            got = _recvAll(s)
            s.close()
            return got

        self.assertEqual(self.serve(reactor, peer, lambda: f.lost), b"")
        self.assertEqual([e[0] for e in f.events], ["made", "lost"])
        stats = reactor.ameStats()  # no step ran: no ClientHello came
        self.assertEqual((stats["tls_c"], stats["tls_c_open"]), (1, 0))

    def test_abortDuringPoolStep(self):
        """
        A server connection aborted while its handshake step runs in the
        pool (an RSA-4096 signature: a few milliseconds) ends as an abort
        before the handshake: the step's result is dropped when it comes
        back (the stream has let go by then), the peer reads nothing, and
        no descriptor stays open.  (The abort is issued as soon as the
        Python thread sees the step in the pool; on a machine too busy to
        see it before the step is over, it lands later, and the same holds
        with the server's handshake done or not.)
        """
        if not self.pooled:
            raise SkipTest("no handshake pool: the step runs on the thread")
        options = _slowOptions()
        reactor = self.buildReactor()
        f, servers = _keepingFactory()
        seen = []
        port = self.listen(reactor, f, options)
        before = _sockets()

        def abortInStep():
            stats = reactor.ameStats()
            if stats["tls_c_pool_steps"] or stats["tls_c_handshakes"]:
                seen.append([e[0] for e in f.events])
                servers[0].transport.abortConnection()
            else:
                reactor.callLater(0, abortInStep)

        def peer():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            while not servers:
                time.sleep(0.001)
            reactor.callFromThread(abortInStep)
            try:
                s = _clientContext().wrap_socket(
                    s, server_hostname="localhost")
            except (ssl.SSLError, OSError):
                s.close()
                return None
            got = _recvAll(s)
            s.close()
            return got

        got = self.serve(reactor, peer, lambda: f.lost)
        kinds = [e[0] for e in f.events]
        self.assertIs(type(f.events[-1][1]), ConnectionLost)
        # The peer's handshake fails, or (the server's flight was out
        # before the abort) it ends right after it.  The server's protocol
        # sees no handshakeCompleted after the abort, even where the
        # worker completed the handshake meanwhile.
        self.assertIn(got, (None, b""))
        self.assertEqual(kinds, seen[0] + ["lost"])
        deadline = time.monotonic() + 5
        while _sockets() - before and time.monotonic() < deadline:
            reactor.iterate(0.01)
        self.assertEqual(_sockets() - before, set())
        self.assertTLS(reactor, 1)


class AMEInlineTLSTests(AMETLSTests):
    reactorFactory = staticmethod(lambda: AMEReactor(io="inline"))
    pooled = False  # one thread: the handshakes run on it
