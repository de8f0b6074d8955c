"""
mailsvc-client pointed at the wrong port: a TLS port with a plain tcp:
address, the other mailsvc port, a service that is not mailsvc. Each ends
with one line on stderr that says what to try, status 3, and no traceback.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from conftest import within
from test_cli import run, start
from test_tls import identity, secure  # noqa: F401 (fixtures)


def plain(port):
    return "tcp:127.0.0.1:%d" % (port,)


def one_line_failure(err):
    assert "Traceback" not in err, err
    assert err.startswith("mailsvc-client: ") and err.count("\n") == 1, err
    return err


class Stranger(protocol.Protocol):
    """A service that is not mailsvc: it says C{banner} on connecting, and
    C{answer} to the first bytes it gets; C{close} after saying it, or not."""

    def connectionMade(self):
        self.factory.connections.append(self)
        if self.factory.banner:
            self.transport.write(self.factory.banner)
        if self.factory.close_at_once:
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self.factory.answer is not None:
            self.transport.write(self.factory.answer)
            self.factory.answer = None
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.connections.remove(self)
        if not self.factory.connections and self.factory.idle is not None:
            self.factory.idle, idle = None, self.factory.idle
            idle.callback(None)


@pytest.fixture
def stranger_port():
    """Listen on 127.0.0.1 port 0 with L{Stranger}; fire with its port."""
    from twisted.internet import reactor

    listening = []

    def listen(banner=b"", answer=None, close_at_once=False):
        factory = protocol.Factory.forProtocol(Stranger)
        factory.banner, factory.answer = banner, answer
        factory.close_at_once = close_at_once
        factory.connections, factory.idle = [], None
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        listening.append((port, factory))
        return port.getHost().port

    yield listen
    for port, factory in listening:
        pytest_twisted.blockon(within(defer.maybeDeferred(port.stopListening)))
        if factory.connections:
            factory.idle = defer.Deferred()
            for connection in factory.connections:
                connection.transport.abortConnection()
            pytest_twisted.blockon(within(factory.idle))


# A TLS port spoken to in plain text.


@pytest_twisted.ensureDeferred
async def test_a_one_shot_command_on_a_tls_port_says_to_use_tls(secure):
    address = plain(secure.mail_port)
    out, err, status = await run("count", "--user", "alice", "--connect", address)
    assert (out, status) == ("", 3)
    one_line_failure(err)
    assert "is it a TLS port?" in err or "it is a TLS port" in err
    assert "--connect tls:127.0.0.1:%d" % (secure.mail_port,) in err


@pytest_twisted.ensureDeferred
async def test_host_and_port_on_a_tls_port_say_to_use_tls(secure):
    out, err, status = await run(
        "register", "--user", "alice", "--host", "localhost", "--port", str(secure.mail_port)
    )
    assert (out, status) == ("", 3)
    one_line_failure(err)
    assert "--connect tls:localhost:%d" % (secure.mail_port,) in err


@pytest_twisted.ensureDeferred
async def test_the_mail_shell_on_a_tls_port_stops_before_asking_anything(secure):
    out, err, status = await run("mail", "--connect", plain(secure.mail_port), stdin="")
    assert (out, status) == ("", 3)
    one_line_failure(err)
    assert "TLS port" in err and "login or register" not in out


@pytest_twisted.ensureDeferred
async def test_over_tls_the_same_commands_work(secure):
    # The message's advice is right: the same server answers over TLS.
    out, err, status = await run("register", "--user", "tina", "--connect", secure.mail)
    assert (out, err, status) == ("registered tina\n", "", 0)


# The other mailsvc port, and services that are not mailsvc.


@pytest_twisted.ensureDeferred
async def test_mail_commands_on_the_chat_port(mailsvc_server):
    out, err, status = await run("count", "--user", "alice", "--connect", mailsvc_server.chat)
    assert (out, status) == ("", 3)
    one_line_failure(err)
    assert "'HELLO'" in err and "it is the chat port" in err


@pytest.mark.parametrize(
    "banner, answer, expected",
    [
        # An HTTP server: its status line must not pass for a reply ("count: 400").
        (b"", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
         "answered 'HTTP/1.1 400 Bad Request': that is not a mailsvc reply"),
        # SMTP and SSH speak first.
        (b"220 mx.example.com ESMTP\r\n", None, "answered '220 mx.example.com ESMTP'"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", None, "answered 'SSH-2.0-OpenSSH_9.6'"),
        # Bytes that are no line, then a close.
        (b"", b"\x00\x01binary", "sent b'\\x00\\x01binary' and closed the connection"),
        # A TLS alert record.
        (b"", b"\x15\x03\x01\x00\x02\x02\x46", "answered in TLS"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_service_that_is_not_mailsvc(stranger_port, banner, answer, expected):
    port = stranger_port(banner=banner, answer=answer)
    out, err, status = await run("count", "--user", "alice", "--connect", plain(port))
    assert (out, status) == ("", 3)
    assert expected in one_line_failure(err)


@pytest_twisted.ensureDeferred
async def test_a_server_that_closes_at_once(stranger_port):
    port = stranger_port(close_at_once=True)
    out, err, status = await run("count", "--user", "alice", "--connect", plain(port))
    assert (out, status) == ("", 3)
    one_line_failure(err)
    assert "closed the connection before greeting: is it a TLS port?" in err


@pytest_twisted.ensureDeferred
async def test_the_chat_on_a_service_that_is_not_mailsvc(stranger_port):
    port = stranger_port(banner=b"SSH-2.0-OpenSSH_9.6\r\n")
    out, err, status = await run("chat", "--nick", "dave", "--connect", plain(port), stdin="")
    assert status == 3 and "Joined" not in out
    assert "answered 'SSH-2.0-OpenSSH_9.6'" in one_line_failure(err)


@pytest_twisted.ensureDeferred
async def test_the_chat_on_a_server_that_closes_at_once(stranger_port):
    port = stranger_port(close_at_once=True)
    out, err, status = await run("chat", "--nick", "dave", "--connect", plain(port), stdin="")
    assert status == 3
    assert "is it a TLS port?" in one_line_failure(err)
