"""
Fronts behind a load balancer that speaks the PROXY protocol (haproxy's
C{send-proxy-v2}): C{--<front>-port haproxy:tcp:...}.

Why not Twisted's own C{haproxy:} endpoint as it is: its wrapper starts the
front's protocol as soon as the TCP connection is made, before the PROXY
header has told who the client is, so a front that looks at its peer then
(the admission limits per address, the login throttles, the chat log) sees
the load balancer. This wrapper starts the front's protocol once the header
is read. (The write coalescer's direct C{send()} needs the TCP transport
itself, so a proxied front takes C{transport.write()}.)
"""

from twisted.internet import endpoints
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy import _wrapper
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface import directlyProvides, providedBy

PREFIX = "haproxy:"


class _HeaderFirst(_wrapper.HAProxyProtocolWrapper):
    _started = False
    _head = b""

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def dataReceived(self, data):
        if self._started:
            return self.wrappedProtocol.dataReceived(data)
        if self._parser is None:
            head = self._head = self._head + data
            for prefix, parser in ((V2Parser.PREFIX, V2Parser), (V1Parser.PROXYSTR, V1Parser)):
                if head.startswith(prefix):
                    self._parser = parser()
                    data, self._head = head, b""
                    break
                if prefix.startswith(head):
                    return  # not enough yet to tell
            else:
                self.loseConnection()  # not a PROXY header
                return
        try:
            self._proxyInfo, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self.loseConnection()
            return
        if self._proxyInfo is not None:
            self._started = True
            self.wrappedProtocol.makeConnection(self)
            if remaining:
                self.wrappedProtocol.dataReceived(remaining)

    def connectionLost(self, reason):
        if self._started:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class _Factory(_wrapper.HAProxyWrappingFactory):
    protocol = _HeaderFirst


def behind_proxy(inner):
    """C{inner}, a server endpoint, for connections that start with a PROXY
    header (C{haproxy:<endpoint>}: behind a load balancer)."""
    return endpoints._WrapperServerEndpoint(inner, _Factory)
