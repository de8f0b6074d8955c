"""A mail or chat protocol on a StringTransport, driven line by line."""

import hashlib

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


class Wire:
    def __init__(self, factory, port=50000, host="127.0.0.1"):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def feed(self, data):
        """Send raw bytes or text; return the reply lines that came back."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.replies()

    def replies(self):
        # The chat port writes what a reactor turn produced at its end.
        clock = getattr(self.protocol.factory, "clock", None)
        if hasattr(clock, "advance"):
            clock.advance(0)
        out = self.transport.value()
        self.transport.clear()
        assert out == b"" or out.endswith(b"\r\n"), out
        return [line.decode("utf-8") for line in out.split(b"\r\n")[:-1]]

    def __call__(self, line):
        """Send one request line (CRLF); return the reply lines."""
        return self.feed(line + "\r\n")


def signed(line):
    return "%s#%s" % (line, hashlib.sha1(line.encode("utf-8")).hexdigest())
