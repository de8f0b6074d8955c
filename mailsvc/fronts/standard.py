"""
What the fronts built on twisted.mail's protocols (SMTP, POP3) share:
line splitting that can stop mid-buffer (so that nothing sent after
STARTTLS/STLS in the clear is ever read as a command), an answer to an
overlong line, connection limits, closeAll for the graceful shutdown, and
the TLS settings.
"""

import ipaddress

from twisted.internet import defer, protocol
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from mailsvc.fronts.admission import Admission


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


class Lines:
    """
    Mixed in before a twisted.mail protocol: splits lines on LF (a CR before
    it dropped), one at a time, so that L{discard_input} stops the lines
    already received; an overlong line is thrown away up to its end and
    reported once through C{lineLengthExceeded}. Counts the connection in
    the factory's L{Admission}.
    """

    _input = b""
    _skipping = False
    _admitted = False
    _closed = None
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
        return False

    def resume_input(self):
        if self._input and not self.paused_input():
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
