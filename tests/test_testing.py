"""mailsvc.testing itself: the in-process server, its helpers and the fixtures."""

import socket

import pytest
import pytest_twisted

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from conftest import within
from mailsvc.testing import start_server


class Raw(protocol.Protocol):
    lost = False

    def connectionLost(self, reason):
        self.lost = True


@pytest_twisted.ensureDeferred
async def test_start_seed_inspect_stop():
    from twisted.internet import reactor

    server = await within(start_server(history=0))
    try:
        assert server.mail == "tcp:127.0.0.1:%d" % server.mail_port
        assert server.chat == "tcp:127.0.0.1:%d" % server.chat_port
        assert server.db_path.endswith("mailsvc.sqlite")
        cookie = await within(server.add_user("bob", "pw"))
        assert len(cookie) == 43
        await within(server.ensure_user("bob", "other"))  # exists: nothing happens
        message_id = await within(server.deliver("bob", "robot", "Hi", "line 1\nline 2"))
        [message] = await within(server.mailbox("bob"))
        assert (message.id, message.sender, message.subject, message.body) == (
            message_id, "robot", "Hi", "line 1\nline 2"
        )
        bob = await within(server.connect_mail(user="bob", password="pw"))
        assert await within(bob.count()) == 1
        carol = await within(server.connect_chat("carol"))
        assert server.participants() == ["carol"]
        assert carol.nick == "carol"
        # A connection the test made itself, not through the server's helpers.
        raw = await within(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.mail_port).connect(
                protocol.Factory.forProtocol(Raw)
            )
        )
    finally:
        await within(server.stop())
    # Every connection was closed, and both ports stopped listening.
    assert raw.lost and not bob.transport.connected
    assert not server.mail_factory.connections and not server.chat_factory.connections
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.mail_port), timeout=5)
    # Nothing of the server is still scheduled.
    assert not [c for c in reactor.getDelayedCalls() if "mailsvc" in repr(c.func)]


@pytest.mark.mailsvc_user("zoe", "secret")
@pytest.mark.mailsvc_nick("zed")
@pytest_twisted.ensureDeferred
async def test_fixtures_follow_their_markers(mailsvc_server, mail_client, chat_client):
    assert mail_client.cookie is not None
    assert await within(mail_client.count()) == 0
    assert mailsvc_server.participants() == ["zed"]
    await within(mail_client.send("zoe", "note", "to self"))
    [note] = await within(mailsvc_server.mailbox("zoe"))
    assert note.sender == "zoe"


@pytest.mark.mailsvc(history=0, session_ttl=60)
def test_the_server_marker_passes_options(mailsvc_server):
    assert mailsvc_server.service.session_ttl == 60
    assert mailsvc_server.service.room._history.maxlen == 0


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_fails_the_start():
    from mailsvc.application import ListenFailed

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ListenFailed, match="mail front .* choose another with --mail-port"):
            await within(start_server(port="tcp:%d:interface=127.0.0.1" % port))
    finally:
        taken.close()


@pytest.mark.mailsvc_user(name="Yan")
@pytest.mark.mailsvc_nick(nick="yves")
@pytest_twisted.ensureDeferred
async def test_markers_take_names_too(mailsvc_server, mail_client, chat_client):
    await within(mail_client.send("yan", "case", "insensitive"))
    [message] = await within(mailsvc_server.mailbox("YAN"))
    assert message.sender == "Yan"
    assert chat_client.nick == "yves"
    await within(mailsvc_server.stop())
    await within(mailsvc_server.stop())  # and again: nothing happens


def test_an_in_memory_database_is_refused():
    failures = []
    start_server(db=":memory:").addErrback(failures.append)
    assert failures[0].check(ValueError) and "give a path" in str(failures[0].value)
