"""
What the fronts built on twisted.mail's protocols (SMTP, POP3) share:
line splitting that can stop mid-buffer (so that nothing sent after
STARTTLS/STLS in the clear is ever read as a command), an answer to an
overlong line, connection limits, closeAll for the graceful shutdown, and
the TLS settings.
"""

import ipaddress

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

from mailsvc.fronts.admission import Admission
from mailsvc.fronts.lines import INPUT_BUFFER


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


def tls_options(config):
    """The server's TLS settings from --tls-cert and --tls-key, or None."""
    if not config.get("tls-cert"):
        return None
    from mailsvc import tls

    return tls.server_options(config["tls-key"], config["tls-cert"])


@implementer(IPushProducer)
class _OutputWatch:
    """Told by the transport when its write buffer is full and when it drains."""

    def __init__(self, protocol):
        self.protocol = protocol

    def pauseProducing(self):
        self.protocol._output_full = True

    def resumeProducing(self):
        self.protocol._output_full = False
        self.protocol.resume_input()

    def stopProducing(self):
        pass


class Lines:
    """
    Mixed in before a twisted.mail protocol: splits lines on LF (a CR before
    it dropped), one at a time, so that L{discard_input} stops the lines
    already received; an overlong line is thrown away up to its end and
    reported once through C{lineLengthExceeded}. Counts the connection in
    the factory's L{Admission}.

    Memory per connection is bounded whatever the client sends: lines wait
    unread while a command's answer is pending (L{held}) or while the
    transport's write buffer is full (a client that asks for messages and
    never reads them), and past L{INPUT_BUFFER} bytes of such waiting input
    the socket is not read either, until the lines can go on.
    """

    _input = b""
    _skipping = False
    _admitted = False
    _closed = None
    _output_full = False
    _reading_paused = False
    _splitting = False
    peerHost = None
    MAX_LENGTH = 8192

    def admitted(self, refuse):
        """Count this connection in; if refused, C{refuse(reason)} and close."""
        self._closed = defer.Deferred()
        self.peerHost = getattr(self.transport.getPeer(), "host", None)
        self.MAX_LENGTH = self.factory.line_limit
        refusal = self.factory.admission.admit(self, self.peerHost)
        if refusal is not None:
            refuse(refusal)
            self.transport.loseConnection()
            return False
        self._admitted = True
        self.transport.registerProducer(_OutputWatch(self), True)
        return True

    def released(self):
        if self._admitted:
            self.factory.admission.release(self, self.peerHost)
        if self._closed is not None and not self._closed.called:
            self._closed.callback(None)

    def secure(self):
        """Whether this connection is TLS (an ssl: port, or after STARTTLS/STLS)."""
        return ISSLTransport.providedBy(self.transport)

    def plaintext_allowed(self):
        return self.secure() or is_loopback(self.peerHost)

    def discard_input(self):
        self._input = b""

    def dataReceived(self, data):
        if not self._admitted:
            return
        self._input += data
        if self._splitting:
            # Called again from a line's own handling (an answer that was
            # ready at once resumes input): the loop below goes on by itself.
            return
        self._splitting = True
        try:
            self._split()
        finally:
            self._splitting = False
        if self.paused_input() and len(self._input) > INPUT_BUFFER:
            if not self._reading_paused and not self.transport.disconnecting:
                self._reading_paused = True
                self.transport.pauseProducing()
        elif self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _split(self):
        while not self.transport.disconnecting and not self.paused_input():
            end = self._input.find(b"\n")
            if end < 0:
                if len(self._input) > self.MAX_LENGTH and not self._skipping:
                    self._input = b""
                    self._skipping = True
                    self.lineLengthExceeded(b"")
                elif self._skipping:
                    self._input = b""
                return
            line, self._input = self._input[:end], self._input[end + 1 :]
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                continue
            self.lineReceived(line)

    def paused_input(self):
        """Whether lines wait: the output is full, or an answer is pending."""
        return self._output_full or self.held()

    def held(self):
        """Whether a command's answer is pending (later lines wait for it)."""
        return False

    def resume_input(self):
        if not self.paused_input():
            self.dataReceived(b"")


class StandardFactory(protocol.Factory):
    """A factory for a L{Lines} protocol: its limits, its live connections."""

    log = Logger()
    noisy = False

    def __init__(self, service, clock=None, line_limit=8192, idle_timeout=600,
                 max_connections=None, max_per_peer=None, domain="localhost", tls=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.service = service
        self.clock = clock
        self.line_limit = line_limit
        self.idle_timeout = idle_timeout
        self.admission = Admission(max_connections, max_per_peer)
        self.connections = self.admission.connections
        self.domain = domain
        self.tls = tls

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        p.callLater = self.clock.callLater
        return p

    def closeAll(self, clock, patience=5.0):
        """Say goodbye to every connection and close it; fire when all have
        closed (aborting those still open after C{patience} seconds)."""
        connections = list(self.connections)
        closed = defer.gatherResults([c._closed for c in connections])
        for c in connections:
            c.shutdown()
        abort = clock.callLater(patience, self._abort, connections)

        def done(result):
            if abort.active():
                abort.cancel()
            return result

        return closed.addBoth(done)

    @staticmethod
    def _abort(connections):
        for c in connections:
            if not c._closed.called:
                c.transport.abortConnection()


def standard_limits(config, reactor):
    return dict(
        clock=reactor,
        line_limit=config["max-line"],
        max_connections=config["max-connections"],
        max_per_peer=config["max-per-peer"],
        domain=config["mail-domain"],
        tls=tls_options(config),
    )
