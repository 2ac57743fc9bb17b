#!/usr/bin/python3
"""chat.py -- a line-based chat server whose one room spans every worker
process: a line from a client on any worker reaches every client on every
worker, and all of them see the lines in the same order.

    /usr/bin/python3 examples/python/chat.py [--port 8023]
        [--interface 127.0.0.1] [--reactor ame|epoll|default]
    ame run [--workers N|auto] examples/python/chat.py [--port 8023]

Connect with `nc 127.0.0.1 8023`.  Each client gets a name (guest1, ...;
`/nick NAME` changes it); what it types goes to everyone as "<name> text",
comings and goings as "* ...".  The room is an ame.shared channel: a client
on this process publishes its line, and every process (this one too) gets
it from the channel, in the channel's order, and writes it to its own
clients.  Nothing else is shared; the guest numbers come from a shared
counter.  In a build tree, ame needs PYTHONPATH=BUILDDIR/bindings:bindings.
"""

import argparse
import os
import sys

import ame
import ame.shared

MAX_LINE = 4096


def install_reactor(name):
    """Install the reactor called name (ame, epoll or default) unless one
    is installed already."""
    if "twisted.internet.reactor" in sys.modules:
        return
    if name == "ame":
        import ame.reactor
        ame.reactor.install()
    elif name == "epoll":
        from twisted.internet import epollreactor
        epollreactor.install()


class Room:
    """This process's side of the room: its clients, and the channel."""

    def __init__(self, name="chat"):
        self.channel = ame.shared.channel(name)
        self.guests = ame.shared.counter(name + ".guests")
        self.clients = set()

    def start(self, reactor=None):
        """Receive the room's lines (from when the reactor runs)."""
        self.channel.subscribe(self.deliver, reactor)

    def say(self, text):
        self.channel.publish(text)

    def deliver(self, text):
        data = text.encode("utf-8") + b"\r\n"
        for client in list(self.clients):
            client.transport.write(data)

    def next_guest(self):
        def take():
            self.guests.add(1)
            return self.guests.value
        return "guest%d" % ame.atomic(take)


def make_factory(room):
    from twisted.internet import protocol
    from twisted.protocols.basic import LineReceiver

    class Chat(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = MAX_LINE

        def connectionMade(self):
            self.name = room.next_guest()
            room.clients.add(self)
            self.sendLine(("* you are %s (process %d)"
                           % (self.name, os.getpid())).encode())
            room.say("* %s joined" % self.name)

        def lineReceived(self, line):
            text = line.decode("utf-8", "replace").rstrip("\r")
            if text.startswith("/nick "):
                new = text[6:].strip()[:32]
                if new:
                    room.say("* %s is now %s" % (self.name, new))
                    self.name = new
            elif text:
                room.say("<%s> %s" % (self.name, text))

        def lineLengthExceeded(self, line):
            self.sendLine(b"* line too long")
            self.transport.loseConnection()

        def connectionLost(self, reason):
            if self in room.clients:
                room.clients.discard(self)
                room.say("* %s left" % self.name)

    return protocol.ServerFactory.forProtocol(Chat)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8023,
                    help="TCP port (default 8023; 0 picks a free one)")
    ap.add_argument("--interface", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--reactor", choices=("ame", "epoll", "default"),
                    default="default",
                    help="Twisted reactor to install (default: none, "
                         "Twisted's default or the one installed already)")
    args = ap.parse_args()
    install_reactor(args.reactor)
    from twisted.internet import reactor

    room = Room()
    room.start(reactor)
    port = reactor.listenTCP(args.port, make_factory(room),
                             interface=args.interface)
    print("chat: listening on %s:%d (%s)"
          % (args.interface, port.getHost().port, type(reactor).__name__),
          flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
