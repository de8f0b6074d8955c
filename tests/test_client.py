"""The client library against the real server on 127.0.0.1, port 0."""

import pytest
import pytest_twisted
from twisted.internet import defer

from conftest import closed, within
from mailsvc import client as mc
from mailsvc.fronts.mail import MailFactory, MailProtocol


async def mail_client(mailsvc_server, **options):
    from twisted.internet import reactor

    return await within(mc.connect_mail(reactor, mailsvc_server.mail, **options))


async def chat_client(mailsvc_server, nick, **options):
    from twisted.internet import reactor

    return await within(mc.connect_chat(reactor, mailsvc_server.chat, nick, **options))


@pytest_twisted.ensureDeferred
async def test_every_mail_command(mailsvc_server):
    alice = await mail_client(mailsvc_server)
    bob = await mail_client(mailsvc_server)
    cookie = await within(alice.register("alice", "pw"))
    assert alice.cookie == cookie and len(cookie) == 43
    await within(bob.register("bob", "pw"))
    assert await within(alice.message("staged text")) is None
    await within(alice.store("bob"))
    first = await within(alice.send("bob", "Lunch", "Noon?\n.hidden dot\n\nbye"))
    assert isinstance(first, int)
    assert await within(bob.count()) == 2
    oldest = await within(bob.getmsg())
    assert (oldest.sender, oldest.subject, oldest.body) == ("alice", "", "staged text")
    listing = await within(bob.list())
    assert [(m.sender, m.subject) for m in listing] == [("alice", ""), ("alice", "Lunch")]
    assert await within(bob.list(sender="carol")) == []
    message = await within(bob.read(first))
    assert message.body == "Noon?\n.hidden dot\n\nbye" and message.id == first
    assert message.date.endswith("Z")
    await within(bob.delmsg())
    assert await within(bob.delete_subject("Lunch")) == 1
    assert await within(bob.count()) == 0
    await within(alice.send("bob", "again", "x"))
    [again] = await within(bob.list(sender="alice"))
    assert await within(bob.delete(again.id)) == 1
    assert "DUMP" in "\n".join(await within(bob.help()))
    await within(bob.dump())
    await within(bob.logout())
    with pytest.raises(mc.RequestFailed) as refused:
        await within(bob.count())
    assert refused.value.reason == "you should log in first"
    with pytest.raises(mc.NotLoggedIn):
        await within(bob.message("nobody home"))
    await within(bob.login("bob", "pw"))
    with pytest.raises(mc.RequestFailed, match="no such user"):
        await within(bob.send("nobody", "s", "b"))
    await within(alice.quit())
    await closed(bob)


@pytest_twisted.ensureDeferred
async def test_pipelined_calls_fire_in_order(mailsvc_server):
    c = await mail_client(mailsvc_server)
    order = []
    calls = [c.register("pipe", "pw")]
    calls += [c.send("pipe", "s%d" % i, "b%d" % i) for i in range(20)]
    calls += [c.count(), c.list(), c.read(5)]
    for i, d in enumerate(calls):
        d.addCallback(lambda result, i=i: order.append(i) or result)
    results = await within(defer.gatherResults(calls))
    assert order == list(range(len(calls)))
    assert results[1:21] == list(range(1, 21))
    assert results[21] == 20 and len(results[22]) == 20 and results[23].body == "b4"
    await closed(c)


class Corrupting(MailProtocol):
    """Damages the first few requests, as a bad line would."""

    damaged = 0

    def textReceived(self, text):
        if self.factory.damage > self.damaged and self._body is None:
            self.damaged += 1
            text = "X" + text
        super().textReceived(text)


@pytest.fixture
def corrupting(mailsvc_server):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    factory = MailFactory(mailsvc_server.service)
    factory.protocol = Corrupting
    port = pytest_twisted.blockon(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    )
    yield factory, "tcp:127.0.0.1:%d" % port.getHost().port
    pytest_twisted.blockon(within(defer.maybeDeferred(port.stopListening)))


@pytest_twisted.ensureDeferred
async def test_checksum_retries_up_to_three_sends(corrupting):
    from twisted.internet import reactor

    factory, address = corrupting
    factory.damage = 2
    c = await within(mc.connect_mail(reactor, address, checksums=True))
    # Two damaged sends, then the third gets through.
    assert len(await within(c.register("sum", "pw"))) == 43
    factory.damage = 5
    d = await within(mc.connect_mail(reactor, address, checksums=True))
    with pytest.raises(mc.ChecksumMismatch, match="3 sends"):
        await within(d.count())
    await closed(c, d)


@pytest_twisted.ensureDeferred
async def test_chat_features(mailsvc_server):
    await within(mailsvc_server.service.register("alice", "pw"))
    await within(mailsvc_server.service.register("bob", "pw"))
    alice = await chat_client(mailsvc_server, "alice", password="pw")
    alice.say("before carol came")
    carol_events = []
    carol = await chat_client(mailsvc_server, "carol", on_event=carol_events.append)
    events = alice.events().__aiter__()
    joined = await within(events.__anext__())
    assert joined == mc.ChatEvent("notice", "carol joined")
    assert await within(carol.who()) == ["alice", "carol"]
    carol.say("/not a command")
    said = await within(events.__anext__())
    assert (said.kind, said.nick, said.text) == ("message", "carol", "/not a command")
    carol.msg("alice", "psst")
    private = await within(events.__anext__())
    assert (private.kind, private.nick, private.text) == ("private", "carol", "psst")
    alice.msg("bob", "offline note")
    stored = await within(events.__anext__())
    assert stored.kind == "notice" and "in their mailbox" in stored.text
    bob_mail = await mail_client(mailsvc_server)
    await within(bob_mail.login("bob", "pw"))
    [note] = await within(bob_mail.list())
    assert note.subject == "Chat message from alice"
    await within(bob_mail.send("alice", "hello", "body"))
    notice = await within(events.__anext__())
    assert notice.text == "new mail from bob: hello"
    await within(carol.bye())
    left = await within(events.__anext__())
    assert left.text == "carol left"
    assert carol_events[0] == mc.ChatEvent("history", "before carol came", "alice")
    await closed(alice, bob_mail)


@pytest_twisted.ensureDeferred
async def test_retry_callback_offers_another_nick(mailsvc_server):
    first = await chat_client(mailsvc_server, "dave")
    reasons = []

    def another(reason):
        reasons.append(reason)
        return "dave2"

    second = await chat_client(mailsvc_server, "dave", on_retry=another)
    assert second.nick == "dave2" and reasons == ["nickname in use"]
    with pytest.raises(mc.NickRefused):
        await chat_client(mailsvc_server, "dave")
    await closed(first, second)


def test_parse_chat_lines():
    p = mc.parse_chat_line
    assert p("Server will shut down in 5 seconds") == mc.ChatEvent(
        "shutdown", "Server will shut down in 5 seconds", seconds=5
    )
    assert p("* error: nope") == mc.ChatEvent("error", "nope")
    assert p("[history] a: b: c") == mc.ChatEvent("history", "b: c", "a")
    assert p("*a* hi") == mc.ChatEvent("private", "hi", "a")
    assert p("a: hi") == mc.ChatEvent("message", "hi", "a")


@pytest_twisted.ensureDeferred
async def test_server_connections_set_tcp_nodelay(mailsvc_server):
    import socket

    c = await mail_client(mailsvc_server)
    chat = await chat_client(mailsvc_server, "nodelay")
    await within(c.help())
    for factory in (mailsvc_server.mail_factory, mailsvc_server.chat_factory):
        [connection] = factory.connections
        handle = connection.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await closed(c, chat)


@pytest_twisted.ensureDeferred
async def test_misuse_fails_at_once_instead_of_hanging(mailsvc_server):
    from twisted.internet.error import ConnectionDone

    c = await mail_client(mailsvc_server)
    await within(c.register("carl", "pw"))
    with pytest.raises(ValueError, match="one line"):
        await within(c.message("hello\nDELMSG"))
    assert await within(c.count()) == 0  # replies still line up
    await within(c.logout())
    assert c.cookie is None
    with pytest.raises(mc.NotLoggedIn, match="you should log in first"):
        await within(c.count())
    await within(c.quit())
    with pytest.raises(ConnectionDone):
        await within(c.count())


@pytest_twisted.ensureDeferred
async def test_one_shot_commands_leave_no_session_behind(mailsvc_server):
    from test_cli import run

    await within(mailsvc_server.service.register("dora", "pw"))
    sessions_before = await within(mailsvc_server.service.storage.summary())
    for args in (["count"], ["list"]):
        _, _, status = await run(*args, "--user", "dora", "--connect", mailsvc_server.mail)
        assert status == 0
    summary = await within(mailsvc_server.service.storage.summary())
    assert summary["sessions"] == sessions_before["sessions"]


@pytest_twisted.ensureDeferred
async def test_chat_misuse_fails_at_once(mailsvc_server):
    from twisted.internet.error import ConnectionDone

    c = await chat_client(mailsvc_server, "misuse")
    with pytest.raises(ValueError, match="one line"):
        c.say("one\n/who")
    waiting = c.who()
    await within(c.bye())
    results = []
    waiting.addBoth(results.append)
    assert results and (results[0] == ["misuse"] or results[0].check(ConnectionDone))
    with pytest.raises(ConnectionDone):
        await within(c.who())


@pytest_twisted.ensureDeferred
async def test_a_nick_with_a_newline_is_refused(mailsvc_server):
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="one line"):
        await within(mc.connect_chat(reactor, mailsvc_server.chat, "nl\nhello room"))
    assert mailsvc_server.participants() == []


# The wrong port: over StringTransport, with a Clock for the greeting's timeout.


def connected(client):
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    client.makeConnection(transport)
    return transport


def lose(client):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    client.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize(
    "received, tls", [(b"", False), (b"\x15\x03\x01\x00\x02\x02\x46", True), (b"\x00junk", False)]
)
def test_a_mail_port_closed_before_any_reply_is_no_reply(received, tls):
    from twisted.trial.unittest import SynchronousTestCase

    client = mc.MailClient()
    connected(client)
    first, second = client.login("alice", "pw"), client.count()
    client.dataReceived(received)
    lose(client)
    for d in (first, second):
        failure = SynchronousTestCase().failureResultOf(d, mc.NoReply)
        assert failure.value.received == received and failure.value.tls == tls
        assert failure.value.seconds is None


@pytest.mark.parametrize(
    "line", ["HELLO", "HTTP/1.1 400 Bad Request", "220 mx.example.com ESMTP", "OKAY", "400"]
)
def test_a_line_that_is_no_mail_reply_ends_the_connection(line):
    from twisted.trial.unittest import SynchronousTestCase

    client = mc.MailClient()
    transport = connected(client)
    d = client.count()
    client.dataReceived(line.encode() + b"\r\n")
    assert SynchronousTestCase().failureResultOf(d, mc.UnexpectedReply).value.line == line
    assert transport.disconnecting


@pytest.mark.parametrize(
    "reply, result",
    [("COUNTED 2", 2), ("KO no such user: x", mc.RequestFailed),
     ("You should log in first.", mc.NotLoggedIn)],
)
def test_every_kind_of_mail_reply_still_passes(reply, result):
    from twisted.trial.unittest import SynchronousTestCase

    client = mc.MailClient()
    transport = connected(client)
    d = client.count()
    client.dataReceived(reply.encode() + b"\r\n")
    if isinstance(result, int):
        assert SynchronousTestCase().successResultOf(d) == result
    else:
        SynchronousTestCase().failureResultOf(d, result)
    assert not transport.disconnecting


def test_the_chat_gives_up_on_a_greeting_that_does_not_come():
    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    clock = Clock()
    client = mc.ChatClient("dave", greeting_timeout=15, clock=clock)
    transport = connected(client)
    clock.advance(14)
    assert not client.ready.called and not transport.disconnecting
    clock.advance(1)
    error = SynchronousTestCase().failureResultOf(client.ready, mc.NoReply).value
    assert (error.seconds, error.received) == (15, b"")
    assert transport.disconnecting and transport.value() == b""
    lose(client)
    assert clock.getDelayedCalls() == []


def test_the_greeting_stops_the_chat_timer():
    from twisted.internet.task import Clock

    clock = Clock()
    client = mc.ChatClient("dave", greeting_timeout=15, clock=clock)
    transport = connected(client)
    client.dataReceived(b"HELLO\r\n")
    assert transport.value() == b"NICK dave\r\n"
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert not client.ready.called and not transport.disconnecting


@pytest.mark.parametrize(
    "received, error, check",
    [
        (b"", mc.NoReply, lambda e: e.received == b"" and e.seconds is None),
        (b"\x15\x03\x01\x00\x02\x02\x46", mc.NoReply, lambda e: e.tls),
        (b"* error: too many connections\r\n", mc.RequestFailed,
         lambda e: e.reason == "too many connections"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", mc.UnexpectedReply,
         lambda e: e.line == "SSH-2.0-OpenSSH_9.6"),
    ],
)
def test_the_chat_before_its_greeting(received, error, check):
    from twisted.trial.unittest import SynchronousTestCase

    client = mc.ChatClient("dave")
    connected(client)
    client.dataReceived(received)
    lose(client)
    assert check(SynchronousTestCase().failureResultOf(client.ready, error).value)
