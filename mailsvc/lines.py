"""
What both ports share below their commands: UTF-8 text lines ending in LF or
CRLF, replies ending in CRLF, and an answer to an overlong line instead of
Twisted's silent disconnect.
"""

from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.basic import LineReceiver

CRLF = b"\r\n"


class TextLineProtocol(LineReceiver):
    """
    A L{LineReceiver} that hands subclasses decoded text lines.

    Subclasses implement L{textReceived}, L{undecodableLine} and L{lineTooLong}.
    An overlong line is reported once and the rest of it, up to the next newline,
    is thrown away; the lines after it are read as usual.
    """

    # LF, so that both netcat's LF and telnet's CRLF end a line; a CR before it
    # is removed in lineReceived.
    delimiter = b"\n"
    MAX_LENGTH = 8192

    _discarding = False
    _overflow = None

    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            # Without it, a client that both sends and receives stalls ~40 ms
            # on delayed ACKs.
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        while True:
            if self._discarding:
                end = data.find(self.delimiter)
                if end < 0:
                    return
                data = data[end + 1 :]
                self._discarding = False
            super().dataReceived(data)
            if self._overflow is None:
                return
            data, self._overflow = self._overflow, None

    def lineLengthExceeded(self, line):
        # LineReceiver hands over the overlong line and all that follows it;
        # dataReceived drops the line's remainder and reads on from there.
        self._discarding = True
        self._overflow = line
        self.lineTooLong()

    def lineReceived(self, line):
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.undecodableLine()
        else:
            self.textReceived(text)

    def sendText(self, *lines):
        """Send each of C{lines} (text) in one write, each ending in CRLF."""
        self.transport.write(b"".join(line.encode("utf-8") + CRLF for line in lines))

    def textReceived(self, text):
        raise NotImplementedError()

    def undecodableLine(self):
        raise NotImplementedError()

    def lineTooLong(self):
        raise NotImplementedError()
