"""
The baseline: the least a Twisted line server can do for the bench's load,
run on the same reactor (epoll), interpreter and core as mailsvc.

- echo: a LineReceiver that writes every line back. The mail scenarios drive
  it with the very bytes they send mailsvc.
- broadcast: a LineReceiver room with the chat port's handshake (HELLO,
  NICK <name>, READY, "* <name> joined"), so the same generator drives it;
  every other line goes to everyone else as "<name>: <line>".

Both set TCP_NODELAY, as mailsvc does. Nothing else: no limits, no timeouts,
no flood control, no send queue, no log.

    python bench/baseline.py ECHO_PORT BROADCAST_PORT
"""

import sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver


class Echo(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 8193

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line):
        self.transport.write(line + b"\n")


class Member(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 8193
    nick = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.transport.write(b"HELLO\r\n")

    def connectionLost(self, reason):
        if self.nick is not None:
            self.factory.members.remove(self)

    def lineReceived(self, line):
        line = line.rstrip(b"\r")
        if self.nick is None:
            self.nick = line.split()[-1]
            self.transport.write(b"READY\r\n")
            self.broadcast(b"* " + self.nick + b" joined\r\n")
            self.factory.members.append(self)
        else:
            self.broadcast(self.nick + b": " + line + b"\r\n")

    def broadcast(self, data):
        for member in self.factory.members:
            if member is not self:
                member.transport.write(data)


class Room(protocol.Factory):
    protocol = Member

    def __init__(self):
        self.members = []


def main(echo_port, broadcast_port):
    echo = reactor.listenTCP(echo_port, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    room = reactor.listenTCP(broadcast_port, Room(), interface="127.0.0.1")
    print(
        "baseline listening: echo %d broadcast %d reactor %s"
        % (echo.getHost().port, room.getHost().port, type(reactor).__name__),
        flush=True,
    )
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
