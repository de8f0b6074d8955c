"""
What the line fronts (mail, chat) share below their commands: UTF-8 text
lines ending in LF or CRLF, replies ending in CRLF, replies kept in request
order, and an answer to an overlong line instead of Twisted's silent
disconnect.

Why it is built so: C{lineReceived} never returns a Deferred (LineReceiver
would take it as "stop", drop the rest of a pipelined buffer and the
connection); L{TextLineProtocol.respond} holds the connection instead, as
twisted.mail's POP3 C{_longOperation} does, so replies leave in order. Only
a complete line resets the idle timer, so a client trickling a partial line
(slowloris) is still timed out. Output is bounded by Twisted's own write
buffer (L{OutputBuffer} is a producer that only gauges it) and input by
L{INPUT_BUFFER}. A close is aborted after L{CLOSE_PATIENCE}: a peer that
does not read, or a TLS peer that never answers the close, would hold it.
"""

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mailsvc.fronts.admission import Admission
from mailsvc.fronts.coalesce import WriteCoalescer

CRLF = b"\r\n"
# Unhandled input kept for a held connection before its socket is paused.
INPUT_BUFFER = 64 * 1024
# Seconds a connection may take to close before it is aborted.
CLOSE_PATIENCE = 5.0


# LineReceiver keeps the input it has not handed over yet in _buffer; these
# two functions are the only place mailsvc reaches it (tests/test_lines.py
# fails if a Twisted release moves it).


def unread(receiver):
    """The bytes a L{LineReceiver} holds that no line has taken yet."""
    return receiver._buffer


def discard_unread(receiver):
    """Forget what L{unread} would return."""
    receiver._buffer = b""


class TextLineProtocol(LineReceiver, TimeoutMixin):
    """
    A L{LineReceiver} that hands subclasses decoded text lines.

    Subclasses implement L{textReceived}, L{undecodableLine} and L{lineTooLong}.
    An overlong line is reported once and the rest of it, up to the next newline,
    is thrown away; the lines after it are read as usual.

    L{respond} keeps replies in request order however long the service takes:
    while a request's Deferred is pending the protocol pauses (as twisted.mail's
    POP3 does), so lines already buffered or still arriving wait their turn.

    Lines also wait while the transport's write buffer is full (L{output}
    tells), so a client that sends requests but never reads the replies
    cannot make the server buffer them without bound; once enough input
    waits, the socket is not read either.

    The factory sets the limits: how long a line may be, how long a
    connection may stay silent (L{TimeoutMixin}), how many connections there
    may be in all and from one address.
    """

    log = Logger()
    _connectionLost = False
    _admitted = False
    _readingPaused = False
    _closing = False
    _abortLater = None
    _answered = True
    peerHost = None

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
    # How lines are decoded: "strict" calls undecodableLine for a line that
    # is not UTF-8; "replace" hands it over with U+FFFD in place of the bad bytes.
    decodeErrors = "strict"

    # Replaced in connectionMade; a protocol never connected has nothing to detach.
    output = None

    def connectionMade(self):
        self.peerHost = getattr(self.transport.getPeer(), "host", None)
        self.output = OutputBuffer(self)
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.sendText(self.refusal(refusal))
            self.close()
            return
        self._admitted = True
        self.LINE_LIMIT = self.factory.line_limit
        self.MAX_LENGTH = self.LINE_LIMIT + 1
        self.callLater = self.factory.clock.callLater
        self.setTimeout(self.idleTimeout())
        self.transport.registerProducer(self.output, True)
        if ITCPTransport.providedBy(self.transport):
            # Without it, a client that both sends and receives stalls ~40 ms
            # on delayed ACKs.
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        if not self._admitted or self.transport.disconnecting:
            return
        while True:
            if self._discarding:
                end = data.find(self.delimiter)
                if end < 0:
                    return
                data = data[end + 1 :]
                self._discarding = False
            super().dataReceived(data)
            if self._overflow is None:
                break
            data, self._overflow = self._overflow, None
        if self.paused and not self._readingPaused and len(unread(self)) > INPUT_BUFFER:
            # Lines wait while the connection is held; past this much, stop
            # reading the socket too. Only then: a TLS handshake, say, must go
            # on while the first reply waits for it.
            self._readingPaused = True
            self.transport.pauseProducing()

    def lineLengthExceeded(self, line):
        # LineReceiver hands over the overlong line and all that follows it;
        # dataReceived drops the line's remainder and reads on from there.
        self._discarding = True
        self._overflow = line
        self.lineTooLong()

    def lineReceived(self, line):
        if self.lineResetsTimeout():
            self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.LINE_LIMIT:
            self.lineTooLong()
            return
        try:
            text = line.decode("utf-8", self.decodeErrors)
        except UnicodeDecodeError:
            self.undecodableLine()
        else:
            self.textReceived(text)

    def connectionLost(self, reason):
        self._connectionLost = True
        self.factory.writes.forget(self)
        if self._admitted:
            self.setTimeout(None)
            self.factory.release(self)
        if self._abortLater is not None and self._abortLater.active():
            self._abortLater.cancel()
        self._abortLater = None
        # Nothing of a closed connection may outlive it: the input not read
        # yet goes now, and the output buffer lets go of the protocol (they
        # referred to each other, a cycle only a full collection would free,
        # keeping whatever the protocol held: a half-received body, say).
        discard_unread(self)
        self._holds.clear()
        if self.output is not None:
            self.output.detach()
        super().connectionLost(reason)
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)

    def close(self):
        """
        Close the connection once what was written has been sent; abort it
        if that takes longer than L{CLOSE_PATIENCE} seconds (a peer that does
        not read, or a TLS peer that never answers the close).
        """
        self.factory.writes.flush(self)
        if self._admitted and not self._closing:
            self._closing = True
            # TLS will not start closing while a producer is registered.
            self.transport.unregisterProducer()
            self._abortLater = self.factory.clock.callLater(
                CLOSE_PATIENCE, self.transport.abortConnection
            )
        self.transport.loseConnection()

    def whenClosed(self):
        """A Deferred that fires when the connection has been lost."""
        if self._connectionLost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._whenClosed.append(d)
        return d

    def shutdown(self):
        """The server is stopping: close this connection."""
        self.close()

    def respond(self, handler, *args):
        """Call C{handler(*args)}; pass its result to L{reply}, or its failure
        to L{refuse}; read no further line until that is done."""
        try:
            result = handler(*args)
        except Exception:
            result = Failure()
        if not isinstance(result, defer.Deferred):
            self._answer(result)
            return
        self._answered = False
        result.addBoth(self._answer)
        # Most answers are ready at once (a cached session, a read): they went
        # out just now. The others hold the connection until they are sent.
        if not self._answered:
            self.hold("reply")
            result.addBoth(lambda _: self.release("reply"))

    def _answer(self, result):
        self._answered = True
        try:
            if isinstance(result, Failure):
                self.refuse(result)
            else:
                self.reply(result)
        except Exception:
            self.log.failure("reply failed")

    def hold(self, reason):
        """Handle no further line until every C{reason} held is released."""
        self._holds.add(reason)
        self.paused = True

    def release(self, reason):
        self._holds.discard(reason)
        if self._holds or not self.paused or self._connectionLost:
            return
        self.paused = False
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")
        self.requestsDone()

    def requestsDone(self):
        """Called after reading resumes, once the lines that waited are read."""

    def sendText(self, *lines):
        """
        Send each of C{lines} (text), each ending in CRLF, at the end of the
        reactor turn with whatever else this connection is sent in it.
        Nothing, once the connection is lost (a late reply).
        """
        if self._connectionLost:
            return
        self.factory.writes.write(self, b"".join(line.encode("utf-8") + CRLF for line in lines))

    def idleTimeout(self):
        """Seconds of silence before the connection is closed, or None."""
        return self.factory.idle_timeout

    def lineResetsTimeout(self):
        """Whether a line received starts the idle timeout again."""
        return True

    def timeoutConnection(self):
        self.sendText(self.refusal("idle timeout"))
        self.close()

    def refusal(self, reason):
        """The line that tells the client C{reason} before a close."""
        raise NotImplementedError()

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

    A reply that is written piece by piece (a long C{LIST}) asks
    L{whenWritable} after each piece and waits while the buffer is full.
    """

    def __init__(self, protocol):
        self._protocol = protocol
        self._waiting = []
        self.full = False
        self.backlog = 0

    def pauseProducing(self):
        self.full = True
        if self._protocol is not None:
            self._protocol.hold("output")

    def resumeProducing(self):
        self.full = False
        self.backlog = 0
        if self._protocol is not None:
            self._protocol.release("output")
        self._wake()

    def stopProducing(self):
        # The connection is gone: nobody need wait for room in it.
        self._wake()

    def whenWritable(self):
        """
        A Deferred that fires (with None) once the transport takes more
        output: at once unless it is full; when it drains, or the connection
        is lost, otherwise.
        """
        if not self.full or self._protocol is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def detach(self):
        """The connection was lost: let go of the protocol, wake any waiter."""
        self._protocol = None
        self._wake()

    def _wake(self):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class TextLineFactory(protocol.Factory):
    """
    Builds L{TextLineProtocol}s, keeps track of the live ones, and holds
    their limits (None: no limit).
    """

    log = Logger()

    def __init__(
        self,
        clock=None,
        line_limit=8192,
        idle_timeout=None,
        max_connections=None,
        max_per_peer=None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.writes = WriteCoalescer(clock)
        self.line_limit = line_limit
        self.idle_timeout = idle_timeout
        self.admission = Admission(max_connections, max_per_peer)
        self.connections = self.admission.connections

    def admit(self, connection):
        """Count a new connection in, or return why it is refused."""
        return self.admission.admit(connection, connection.peerHost)

    def release(self, connection):
        self.admission.release(connection, connection.peerHost)

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


def line_limits(config, reactor):
    """The factory arguments every line front takes from the options."""
    return dict(
        clock=reactor,
        line_limit=config["max-line"],
        max_connections=config["max-connections"],
        max_per_peer=config["max-per-peer"],
    )
