"""The mail port over real sockets on 127.0.0.1, with the real storage thread."""

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from conftest import inline_service, within
from mailsvc.fronts.mail import MailFactory
from mailsvc.core.passwords import Passwords, cheap_hasher
from mailsvc.core.service import SharedService
from mailsvc.store.sqlite import SQLiteStorage


@implementer(IHalfCloseableProtocol)
class Collector(protocol.Protocol):
    """Keeps every byte received; C{closed} fires with them when the server closes."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()
        self._waiting = []

    def dataReceived(self, data):
        self.received += data
        for count, d in list(self._waiting):
            if self.received.count(b"\r\n") >= count:
                self._waiting.remove((count, d))
                d.callback(self.lines())

    def lines(self):
        return self.received.decode("utf-8").split("\r\n")[:-1]

    def linesReceived(self, count):
        """Fire with all lines once C{count} have arrived."""
        d = defer.Deferred()
        self._waiting.append((count, d))
        self.dataReceived(b"")
        return within(d)

    def request(self, *lines):
        self.transport.write("".join(line + "\r\n" for line in lines).encode("utf-8"))

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.closed.callback(self.lines())


async def connect(port):
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await within(endpoint.connect(protocol.Factory.forProtocol(Collector)))


@pytest_twisted.ensureDeferred
async def test_a_piped_file_then_half_close_gets_every_reply(mailsvc_server):
    client = await connect(mailsvc_server.mail_port)
    requests = ["REGISTER alice pw"] + ["MESSAGE m%d" % i for i in range(50)]
    requests += ["STORE alice"] * 50 + ["COUNT", "GETMSG", "LIST"]
    client.request(*requests)
    client.transport.loseWriteConnection()
    lines = await within(client.closed)
    assert lines[0].startswith("OK ")
    assert lines[1:101] == ["OK"] * 100
    assert lines[101] == "COUNTED 50"
    assert lines[102] == "OK message 1" and lines[-1] == "."
    # LIST: header, 50 rows, terminator, as the last reply.
    assert lines[-52] == "OK 50 messages"


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_senders_are_all_acknowledged(mailsvc_server):
    port = mailsvc_server.mail_port
    owner = await connect(port)
    owner.request("REGISTER bob pw")
    [reply] = await owner.linesReceived(1)
    cookie = reply.split()[1]
    senders = [await connect(port) for _ in range(50)]
    for i, sender in enumerate(senders):
        sender.request("SEND bob s%d %s" % (i, cookie), "body %d" % i, ".")
    replies = await within(
        defer.gatherResults([s.linesReceived(1) for s in senders])
    )
    ids = sorted(int(r[0].split()[1]) for r in replies)
    assert ids == list(range(1, 51))
    owner.request("COUNT")
    assert (await owner.linesReceived(2))[1] == "COUNTED 50"
    for client in senders + [owner]:
        client.transport.loseConnection()
        await within(client.closed)


@pytest_twisted.ensureDeferred
async def test_password_hashing_does_not_block_other_connections(tmp_path):
    import threading

    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    hashing = threading.Event()
    may_finish = threading.Event()

    def slow(f, *args):
        def work():
            hashing.set()
            may_finish.wait(10)
            return f(*args)

        return deferToThread(work)

    service = SharedService(
        SQLiteStorage.open(str(tmp_path / "mail.sqlite"), reactor),
        Passwords(slow, cheap_hasher()),
        reactor,
    )
    service.storage.startService()
    service.startService()
    port = await within(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(MailFactory(service))
    )
    try:
        first, second = await connect(port.getHost().port), await connect(port.getHost().port)
        first.request("REGISTER carol pw")
        assert await within(deferToThread(hashing.wait, 10))
        second.request("HELP")
        assert (await second.linesReceived(1))[0] == "OK commands"
        assert first.lines() == []
        may_finish.set()
        assert (await first.linesReceived(1))[0].startswith("OK ")
        for client in (first, second):
            client.transport.loseConnection()
            await within(client.closed)
    finally:
        may_finish.set()
        await within(defer.maybeDeferred(port.stopListening))
        service.stopService()
        await within(service.storage.stopService())


@pytest_twisted.ensureDeferred
async def test_a_client_that_pipelines_and_never_reads_is_held_within_a_turn():
    from twisted.internet import reactor

    from mailsvc.fronts.coalesce import FLUSH_AT
    from mailsvc.fronts.mail import MailProtocol

    class Watched(MailProtocol):
        def hold(self, reason):
            super().hold(reason)
            if reason == "output" and not self.factory.held.called:
                self.factory.held.callback(self)

    service = inline_service(reactor)
    factory = MailFactory(service)
    factory.protocol = Watched
    factory.held = defer.Deferred()
    port = await within(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory))
    client = await connect(port.getHost().port)
    try:
        client.transport.pauseProducing()  # it never reads
        # 13,107 requests in one read, each answered with the whole HELP.
        client.transport.write(b"HELP\n" * (64 * 1024 // 5))
        server = await within(factory.held)
        transport = server.transport
        waiting = (
            len(transport.dataBuffer)
            - transport.offset
            + transport._tempDataLen
            + factory.writes.pending(server)
        )
        # Held as soon as Twisted's buffer is full, not after answering every
        # request the read brought: what waits is a buffer's worth or two.
        assert waiting <= 2 * FLUSH_AT + 4096
        assert server._buffer
    finally:
        client.transport.abortConnection()
        await within(client.closed)
        await within(port.stopListening())
        service.stopService()
