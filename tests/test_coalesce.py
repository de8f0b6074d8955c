"""The chat port's write path: one write per connection per turn, sent at once."""

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import StringTransport

from conftest import within
from mailsvc.fronts.coalesce import FLUSH_AT, WriteCoalescer, write_now


class CountingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


class Turns:
    """
    A reactor's turns, as far as callLater(0) goes: a call made during a turn
    runs in the next one (task.Clock.advance(0) would run it at once).
    """

    def __init__(self):
        self.calls = []

    def callLater(self, delay, f, *args):
        assert delay == 0
        self.calls.append((f, args))
        return (f, args)

    def turn(self):
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class Connection:
    def __init__(self):
        self.transport = CountingTransport()


def test_what_a_connection_gets_in_a_turn_leaves_in_one_write(clock):
    writes = WriteCoalescer(clock)
    a, b = Connection(), Connection()
    writes.write(a, b"one\r\n")
    writes.write(b, b"one\r\n")
    writes.write(a, b"two\r\n")
    assert writes.pending(a) == 10
    assert a.transport.writes == []
    clock.advance(0)
    assert a.transport.writes == [b"one\r\ntwo\r\n"]
    assert b.transport.writes == [b"one\r\n"]
    assert writes.pending(a) == 0
    clock.advance(0)
    assert len(a.transport.writes) == 1


def test_a_slice_a_turn_and_what_arrives_meanwhile_joins_the_queues_still_waiting():
    turns = Turns()
    writes = WriteCoalescer(turns, per_turn=2)
    connections = [Connection() for _ in range(5)]
    for c in connections:
        writes.write(c, b"1\r\n")
    turns.turn()
    assert [c.transport.writes for c in connections] == [[b"1\r\n"]] * 2 + [[]] * 3
    # A second line, between two slices: the three still waiting send both
    # lines at once; the two already served are queued again, behind them.
    for c in connections:
        writes.write(c, b"2\r\n")
    turns.turn()
    turns.turn()
    assert [c.transport.writes for c in connections[2:]] == [[b"1\r\n2\r\n"]] * 3
    assert [c.transport.writes for c in connections[:2]] == [
        [b"1\r\n", b"2\r\n"],
        [b"1\r\n"],
    ]
    turns.turn()
    assert connections[1].transport.writes == [b"1\r\n", b"2\r\n"]
    assert turns.calls == []


def test_flush_writes_now_and_forget_drops(clock):
    writes = WriteCoalescer(clock)
    a, b = Connection(), Connection()
    writes.write(a, b"bye\r\n")
    writes.write(b, b"lost\r\n")
    writes.flush(a)
    assert a.transport.value() == b"bye\r\n"
    writes.forget(b)
    clock.advance(0)
    assert a.transport.writes == [b"bye\r\n"] and b.transport.writes == []


def test_a_buffer_full_is_written_at_once(clock):
    # So that the transport can tell the protocol to stop reading requests
    # before the turn ends.
    writes = WriteCoalescer(clock)
    a = Connection()
    line = b"x" * 1000 + b"\r\n"
    for _ in range(FLUSH_AT // len(line)):
        writes.write(a, line)
    assert a.transport.writes == []
    writes.write(a, line)
    assert len(a.transport.value()) == (FLUSH_AT // len(line) + 1) * len(line)
    assert writes.pending(a) == 0
    writes.write(a, b"x" * FLUSH_AT)
    assert len(a.transport.writes) == 2


class Sink(protocol.Protocol):
    def __init__(self, expected):
        self.expected = expected
        self.received = []
        self.size = 0
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.received.append(data)
        self.size += len(data)
        if self.size >= self.expected:
            self.done.callback(b"".join(self.received))


class Source(protocol.Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)


@pytest_twisted.ensureDeferred
async def test_write_now_sends_at_once_and_leaves_the_rest_to_twisted_in_order():
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(Source)
    factory.connected = defer.Deferred()
    port = await within(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    )
    small, large, last = b"x" * 100, bytes(range(256)) * 32768, b"the end"
    sink = Sink(len(small) + len(large) + len(last))
    client = await within(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(lambda: sink)
        )
    )
    try:
        source = await within(factory.connected)
        transport = source.transport
        # With nothing buffered, the installed Twisted's TCP transport is
        # written to directly: its own write() is not used.
        original, transport.write = transport.write, None
        write_now(transport, small)
        transport.write = original
        assert not transport._tempDataLen and not transport.dataBuffer
        # 8 MiB do not fit in the socket: the rest waits in Twisted's buffer,
        # and what follows queues behind it.
        write_now(transport, large)
        assert transport._tempDataLen or transport.dataBuffer
        write_now(transport, last)
        assert await within(sink.done) == small + large + last
    finally:
        client.transport.loseConnection()
        await within(port.stopListening())
