"""
The web front's WebSocket member over a StringTransport with a Clock: a
message reassembled from single bytes, the send queue bound, the JSON
rendering shared by every member.
"""

import json
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailsvc.core import events
from mailsvc.fronts.web.websocket import WebSocketMembers, json_frame

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:8080\r\n\r\n"
)


def client_frame(message, opcode=1, fin=True):
    """One masked frame, as a browser sends it."""
    payload = json.dumps(message).encode("utf-8") if not isinstance(message, bytes) else message
    mask = b"\x01\x02\x03\x04"
    if len(payload) < 126:
        header = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", (0x80 if fin else 0) | opcode, 0x80 | 126, len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_messages(data):
    """The JSON objects in unmasked server frames."""
    messages = []
    while data:
        length = data[1] & 0x7F
        start = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            start = 4
        if data[0] & 0x0F == 1:
            messages.append(json.loads(data[start : start + length]))
        data = data[start + length :]
    return messages


class Connected:
    def __init__(self, service, clock, **limits):
        self.clock = clock
        self.factory = WebSocketMembers(service, clock, "test", **limits)
        self.member = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.member.makeConnection(self.transport)

    def feed(self, data, piecewise=False):
        if piecewise:
            for i in range(len(data)):
                self.member.dataReceived(data[i : i + 1])
        else:
            self.member.dataReceived(data)
        self.clock.advance(0)

    def received(self):
        data = self.transport.value()
        self.transport.clear()
        if data.startswith(b"HTTP/1.1 101"):
            data = data[data.index(b"\r\n\r\n") + 4 :]
        return server_messages(data)

    def close(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.member.connectionLost(Failure(ConnectionDone()))


def test_a_message_in_single_bytes_and_fragments_is_reassembled(service, clock):
    connected = Connected(service, clock)
    connected.feed(HANDSHAKE, piecewise=True)
    assert connected.transport.value().startswith(b"HTTP/1.1 101 ")
    assert connected.received() == [{"type": "hello", "server": "mailsvc", "version": "test"}]
    connected.feed(client_frame({"type": "join", "nick": "alice", "id": 1}), piecewise=True)
    assert connected.received() == [
        {"type": "ok", "id": 1, "nick": "alice", "registered": False}
    ]
    # One message in three frames (text, continuation, continuation),
    # each arriving a byte at a time.
    text = json.dumps({"type": "say", "text": "h\u00e9llo " * 30, "id": 2}).encode("utf-8")
    pieces = [text[:50], text[50:100], text[100:]]
    data = (
        client_frame(pieces[0], opcode=1, fin=False)
        + client_frame(pieces[1], opcode=0, fin=False)
        + client_frame(pieces[2], opcode=0, fin=True)
    )
    connected.feed(data, piecewise=True)
    assert connected.received() == [{"type": "ok", "id": 2}]
    [said] = service.room.history().events
    assert said.text == "h\u00e9llo " * 30
    connected.close()


def test_a_member_that_does_not_read_is_dropped_past_max_sendq(service, clock):
    connected = Connected(service, clock, max_sendq=1000)
    connected.feed(HANDSHAKE)
    connected.feed(client_frame({"type": "join", "nick": "slow"}))
    connected.received()
    member = connected.member
    # The socket's buffer is full: Twisted paused the producer.
    member.output.pauseProducing()
    # Counted, not written, while it is full: two of them fit in 1000 bytes.
    for n in range(2):
        member.receive(events.Said("bob", "x" * 400))
    assert not connected.transport.disconnecting
    member.receive(events.Said("bob", "x" * 400))
    assert connected.transport.disconnecting
    assert connected.factory.sendq_drops == 1
    connected.close()
    assert "slow" not in service.room


def test_an_event_is_rendered_once_for_every_member():
    event = events.Said("bob", "<script>alert(1)</script>", 1.5)
    first = event.render(json_frame)
    assert event.render(json_frame) is first
    assert server_messages(first) == [
        {"type": "said", "nick": "bob", "text": "<script>alert(1)</script>", "time": 1.5}
    ]
