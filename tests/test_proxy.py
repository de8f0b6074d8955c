"""The PROXY protocol in front of a front: the front starts once the header
has said who the client is (mailsvc.fronts.proxy)."""

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from mailsvc.fronts.proxy import _Factory

V1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40123 8026\r\n"
V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n"  # the signature
    + b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 bytes of addresses
    + bytes([198, 51, 100, 7, 127, 0, 0, 1])
    + (40123).to_bytes(2, "big")
    + (8026).to_bytes(2, "big")
)


class Front(Protocol):
    peer = None

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.factory.made.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data


def connect():
    inner = Factory.forProtocol(Front)
    inner.made = []
    wrapper = _Factory(inner).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    wrapper.makeConnection(transport)
    return inner.made, wrapper, transport


def test_the_front_starts_once_the_header_told_the_client_in_pieces():
    for header in (V1, V2):
        made, wrapper, transport = connect()
        for byte in range(len(header)):
            assert made == []
            wrapper.dataReceived(header[byte : byte + 1])
        wrapper.dataReceived(b"NICK alice\n")
        (front,) = made
        assert (front.peer.host, front.peer.port) == ("198.51.100.7", 40123)
        assert front.received == b"NICK alice\n"


def test_a_header_and_data_in_one_piece():
    made, wrapper, _ = connect()
    wrapper.dataReceived(V2 + b"hello\n")
    assert made[0].received == b"hello\n"


def test_no_header_closes_the_connection_without_starting_the_front():
    made, wrapper, transport = connect()
    wrapper.dataReceived(b"NICK alice\n")
    assert made == [] and transport.disconnecting
    wrapper.connectionLost(None)
