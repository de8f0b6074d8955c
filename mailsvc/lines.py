"""
What both ports share below their commands: UTF-8 text lines ending in LF or
CRLF, replies ending in CRLF, and an answer to an overlong line instead of
Twisted's silent disconnect.
"""

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

CRLF = b"\r\n"


class TextLineProtocol(LineReceiver):
    """
    A L{LineReceiver} that hands subclasses decoded text lines.

    Subclasses implement L{textReceived}, L{undecodableLine} and L{lineTooLong}.
    An overlong line is reported once and the rest of it, up to the next newline,
    is thrown away; the lines after it are read as usual.

    L{respond} keeps replies in request order however long the service takes:
    while a request's Deferred is pending the protocol pauses (as twisted.mail's
    POP3 does), so lines already buffered or still arriving wait their turn.

    Reading also pauses while the transport's write buffer is full (L{output}
    tells), so a client that sends requests but never reads the replies
    cannot make the server buffer them without bound.
    """

    log = Logger()
    _connectionLost = False

    def __init__(self):
        self._whenClosed = []
        self._holds = set()

    # LF, so that both netcat's LF and telnet's CRLF end a line; a CR before it
    # is removed in lineReceived.
    delimiter = b"\n"
    # The longest line, not counting its LF or CRLF ending.
    LINE_LIMIT = 8192
    # LineReceiver counts a CR as part of the line: leave room for one.
    MAX_LENGTH = LINE_LIMIT + 1

    _discarding = False
    _overflow = None

    def connectionMade(self):
        self.factory.connections.add(self)
        self.output = OutputBuffer(self)
        self.transport.registerProducer(self.output, True)
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
        if len(line) > self.LINE_LIMIT:
            self.lineTooLong()
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.undecodableLine()
        else:
            self.textReceived(text)

    def connectionLost(self, reason):
        self._connectionLost = True
        self.factory.connections.discard(self)
        super().connectionLost(reason)
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)

    def whenClosed(self):
        """A Deferred that fires when the connection has been lost."""
        if self._connectionLost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._whenClosed.append(d)
        return d

    def shutdown(self):
        """The server is stopping: close this connection."""
        self.transport.loseConnection()

    def respond(self, handler, *args):
        """Call C{handler(*args)}; pass its result to L{reply}, or its failure
        to L{refuse}; read no further line until that is done."""
        replied = []
        d = defer.maybeDeferred(handler, *args)
        d.addCallbacks(self.reply, self.refuse)
        d.addErrback(lambda failure: self.log.failure("reply failed", failure))
        d.addCallback(replied.append)
        # Not d.called: that is also true while d waits on a Deferred it chained.
        if replied:
            return
        self.hold("reply")
        d.addCallback(lambda _: self.release("reply"))

    def hold(self, reason):
        """Stop reading lines until every C{reason} held is released."""
        if not self._holds:
            self.pauseProducing()
        self._holds.add(reason)

    def release(self, reason):
        self._holds.discard(reason)
        if not self._holds and self.paused and not self._connectionLost:
            self.resumeProducing()
            self.requestsDone()

    def requestsDone(self):
        """Called after reading resumes, once the lines that waited are read."""

    def sendText(self, *lines):
        """Send each of C{lines} (text) in one write, each ending in CRLF."""
        self.transport.write(b"".join(line.encode("utf-8") + CRLF for line in lines))

    def textReceived(self, text):
        raise NotImplementedError()

    def reply(self, result):
        raise NotImplementedError()

    def refuse(self, failure):
        raise NotImplementedError()

    def undecodableLine(self):
        raise NotImplementedError()

    def lineTooLong(self):
        raise NotImplementedError()


@implementer(IPushProducer)
class OutputBuffer:
    """
    Registered with the transport, which calls pauseProducing when its write
    buffer passes its high-water mark and resumeProducing once it has drained.
    C{backlog} counts what was written in between.
    """

    def __init__(self, protocol):
        self._protocol = protocol
        self.full = False
        self.backlog = 0

    def pauseProducing(self):
        self.full = True
        self._protocol.hold("output")

    def resumeProducing(self):
        self.full = False
        self.backlog = 0
        self._protocol.release("output")

    def stopProducing(self):
        pass


class TextLineFactory(protocol.Factory):
    """Builds L{TextLineProtocol}s and keeps track of the live ones."""

    def __init__(self):
        self.connections = set()

    def closeAll(self, clock, patience=5.0):
        """
        Ask every connection to close; fire when all have. One that has not
        closed after C{patience} seconds (a client that stopped reading, so its
        output never drains) is aborted.
        """
        connections = list(self.connections)
        closed = defer.gatherResults([c.whenClosed() for c in connections])
        for connection in connections:
            connection.shutdown()
        abort = clock.callLater(patience, self._abort, connections)

        def allClosed(result):
            if abort.active():
                abort.cancel()
            return result

        return closed.addBoth(allClosed)

    @staticmethod
    def _abort(connections):
        for connection in connections:
            if not connection._connectionLost:
                connection.transport.abortConnection()
