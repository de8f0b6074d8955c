"""
TLS on both ports, with a certificate made on the fly (certs.py).

In process: the C{mailsvc_server} fixture's service and factories also listen on
C{ssl:} server endpoints, and the real client library connects with C{ssl:}
and C{tls:} client endpoint descriptions. End to end: C{twistd -n mailsvc}
with C{--port ssl:...} and C{--chat-port ssl:...}, and the real CLI.

What the client endpoint descriptions do (Twisted's clientFromString):

  - C{ssl:host=H:port=P:caCertsDir=D:hostname=N} checks the chain against
    the C{*.pem} files in D, and the certificate's names against N;
  - C{tls:H:P:trustRoots=D} does the same with N = H, always;
  - C{ssl:host=H:port=P} with neither C{caCertsDir} nor C{hostname} checks
    nothing at all (test_plain_ssl_checks_nothing pins that, so the docs'
    warning stays true);
  - C{ssl:} has no C{trustRoots} argument (that is C{tls:}'s).

Twisted's TLS waits for the client's close_notify after the server's: a
silent client would keep its connection for ever, but the server aborts a
connection that has not closed a few seconds after it asked.
"""

import os
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument

from certs import self_signed
from conftest import closed, within
from mailsvc import client as mc
from mailsvc.testing.process import (
    SOCKET_TIMEOUT,
    Client,
)

CLIENT = str(Path(sys.executable).parent / "mailsvc-client")
CLI_TIMEOUT = 30


@pytest.fixture
def identity(tmp_path):
    """The server's key and self-signed certificate for localhost / 127.0.0.1."""
    return self_signed(tmp_path / "tls")


@pytest.fixture
def stranger(tmp_path):
    """Another self-signed certificate for localhost, from another key: a CA
    that did not sign the server's certificate."""
    return self_signed(tmp_path / "stranger")


def listening(identity, port=0):
    """The server endpoint description: TLS on 127.0.0.1 with C{identity}."""
    return "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
        port,
        quoteStringArgument(str(identity.key)),
        quoteStringArgument(str(identity.cert)),
    )


def verified(port, roots, host="localhost", hostname="localhost"):
    """An C{ssl:} client description that checks the chain and the name."""
    return "ssl:host=%s:port=%d:caCertsDir=%s:hostname=%s" % (
        host,
        port,
        quoteStringArgument(str(roots)),
        hostname,
    )


def tls(port, roots=None, host="localhost"):
    """A C{tls:} client description (without C{roots}: the system's CAs)."""
    description = "tls:%s:%d" % (host, port)
    if roots is not None:
        description += ":trustRoots=" + quoteStringArgument(str(roots))
    return description


class TLSPorts:
    def __init__(self, mailsvc_server, identity, mail_port, chat_port):
        self.running = mailsvc_server
        self.identity = identity
        self.mail_port = mail_port
        self.chat_port = chat_port

    @property
    def mail(self):
        return verified(self.mail_port, self.identity.roots)

    @property
    def chat(self):
        return verified(self.chat_port, self.identity.roots)


@pytest.fixture
def secure(mailsvc_server, identity):
    """
    The C{mailsvc_server} fixture's factories, listening over TLS too (each on a
    port of its own, 127.0.0.1, port 0). Teardown stops these ports; the
    C{mailsvc_server} fixture's then closes every connection and stops the service.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    ports = []
    for factory in (mailsvc_server.mail_factory, mailsvc_server.chat_factory):
        endpoint = serverFromString(reactor, listening(identity))
        ports.append(pytest_twisted.blockon(within(endpoint.listen(factory))))
    yield TLSPorts(mailsvc_server, identity, *(p.getHost().port for p in ports))
    for port in ports:
        pytest_twisted.blockon(within(defer.maybeDeferred(port.stopListening)))


def digest(x509):
    """The SHA-256 fingerprint of a pyOpenSSL or cryptography certificate."""
    if hasattr(x509, "to_cryptography"):
        x509 = x509.to_cryptography()
    from cryptography.hazmat.primitives import hashes

    return x509.fingerprint(hashes.SHA256())


def certificate_of(identity):
    from cryptography import x509

    return x509.load_pem_x509_certificate(identity.cert.read_bytes())


# In process: the client library.


@pytest_twisted.ensureDeferred
async def test_mail_commands_over_tls(secure):
    from twisted.internet import reactor

    alice = await within(mc.connect_mail(reactor, secure.mail))
    # tls: checks the name it connects to: here the IP in the certificate.
    bob = await within(
        mc.connect_mail(reactor, tls(secure.mail_port, secure.identity.roots, "127.0.0.1"))
    )
    assert len(await within(alice.register("alice", "pw"))) == 43
    await within(bob.register("bob", "pw"))
    first = await within(alice.send("bob", "Over TLS", "line one\n.dotted\n\nend"))
    assert await within(bob.count()) == 1
    [listed] = await within(bob.list())
    assert (listed.id, listed.sender, listed.subject) == (first, "alice", "Over TLS")
    message = await within(bob.read(first))
    assert message.body == "line one\n.dotted\n\nend"
    # What was spoken was TLS, with our certificate.
    wanted = digest(certificate_of(secure.identity))
    for c in (alice, bob):
        assert digest(c.transport.getPeerCertificate()) == wanted
    # The server side: the peer's address and TCP_NODELAY reach through TLS.
    connections = secure.running.mail_factory.connections
    assert len(connections) == 2
    for connection in connections:
        assert connection.transport.getPeer().host == "127.0.0.1"
        assert connection.transport.getPeerCertificate() is None  # no client cert
        handle = connection.transport.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await closed(alice, bob)


@pytest_twisted.ensureDeferred
async def test_chat_over_tls(secure):
    from twisted.internet import reactor

    alice = await within(mc.connect_chat(reactor, secure.chat, "alice"))
    bob = await within(
        mc.connect_chat(reactor, tls(secure.chat_port, secure.identity.roots), "bob")
    )
    alice_events, bob_events = alice.events().__aiter__(), bob.events().__aiter__()
    assert await within(alice_events.__anext__()) == mc.ChatEvent("notice", "bob joined")
    assert await within(bob.who()) == ["alice", "bob"]
    bob.say("hello over TLS")
    said = await within(alice_events.__anext__())
    assert (said.kind, said.nick, said.text) == ("message", "bob", "hello over TLS")
    alice.msg("bob", "psst")
    private = await within(bob_events.__anext__())
    assert (private.kind, private.nick, private.text) == ("private", "alice", "psst")
    # The chat log's "joined from" address reaches through TLS.
    peers = [p.peer for p in secure.running.chat_factory.connections]
    assert len(peers) == 2
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", peer) for peer in peers), peers
    await within(bob.bye())  # the server closes: a TLS close_notify
    assert (await within(alice_events.__anext__())).text == "bob left"
    await closed(alice)


@pytest_twisted.ensureDeferred
async def test_the_server_closes_tls_connections(secure):
    """
    QUIT, and the shutdown's closeAll, end TLS connections cleanly: well
    within closeAll's patience (5 s), after which it would abort them.
    """
    from twisted.internet import reactor

    from twisted.internet.error import ConnectionDone

    mailsvc_server = secure.running
    quitter = await within(mc.connect_mail(reactor, secure.mail))
    await within(quitter.register("quitter", "pw"))
    await within(quitter.quit())
    # Closed by the server, cleanly (close_notify, not a reset after a wait).
    assert quitter._lost.check(ConnectionDone), quitter._lost
    mail = await within(mc.connect_mail(reactor, secure.mail))
    assert len(await within(mail.login("quitter", "pw"))) == 43
    chat = await within(mc.connect_chat(reactor, secure.chat, "carol"))
    assert len(mailsvc_server.mail_factory.connections) == 1
    assert len(mailsvc_server.chat_factory.connections) == 1
    started = reactor.seconds()
    await within(
        defer.gatherResults(
            [mailsvc_server.mail_factory.closeAll(reactor), mailsvc_server.chat_factory.closeAll(reactor)]
        ),
        4,
    )
    assert reactor.seconds() - started < 4  # within closeAll's patience: no abort
    await within(defer.gatherResults([mail.closed, chat.closed]))
    for client in (mail, chat):
        assert client._lost.check(ConnectionDone), client._lost
    assert not mailsvc_server.mail_factory.connections
    assert not mailsvc_server.chat_factory.connections


def silent_tls_client(port, identity):
    """A TLS connection that, after its handshake, never reads nor writes
    (so never answers the server's close_notify). Blocks: run it in a thread."""
    context = ssl.create_default_context(cafile=str(identity.cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    return context.wrap_socket(raw, server_hostname="localhost")


@pytest_twisted.ensureDeferred
async def test_an_idle_tls_client_that_never_answers_is_dropped(mailsvc_server, identity):
    from twisted.internet import reactor, task, threads
    from twisted.internet.endpoints import serverFromString

    from mailsvc.fronts.mail import MailFactory

    clock = task.Clock()
    factory = MailFactory(mailsvc_server.service, clock=clock, idle_timeout=10)
    port = await within(serverFromString(reactor, listening(identity)).listen(factory))
    sock = await within(
        threads.deferToThread(silent_tls_client, port.getHost().port, identity)
    )
    try:
        [connection] = factory.connections
        clock.advance(10)  # the idle timeout: the server tells the client and closes
        assert connection.transport.disconnecting
        # The client is told why (it reads this, and still never answers).
        told = await within(threads.deferToThread(sock.recv, 1024))
        assert told == b"KO idle timeout\r\n"
        assert not connection.whenClosed().called  # waiting for the close_notify
        clock.advance(60)  # ample for any grace the server gives before aborting
        await within(connection.whenClosed(), 2)
        assert not factory.connections
    finally:
        sock.close()
        await within(defer.maybeDeferred(port.stopListening))
        await within(defer.gatherResults([c.whenClosed() for c in factory.connections]))


@pytest.mark.parametrize(
    "description, error",
    [
        # The system's CAs, which never signed our certificate.
        ("ssl:host=localhost:port={port}:hostname=localhost", SSL.Error),
        ("tls:localhost:{port}", SSL.Error),
        # A CA that is not the server's.
        ("ssl:host=localhost:port={port}:caCertsDir={stranger}:hostname=localhost", SSL.Error),
        ("tls:localhost:{port}:trustRoots={stranger}", SSL.Error),
        # The right CA, the wrong name.
        ("ssl:host=localhost:port={port}:caCertsDir={roots}:hostname=example.com",
         VerificationError),
        ("tls:example.com:{port}:trustRoots={roots}:endpoint=tcp\\:127.0.0.1\\:{port}",
         VerificationError),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_is_refused(secure, stranger, description, error):
    from twisted.internet import reactor

    description = description.format(
        port=secure.mail_port,
        roots=quoteStringArgument(str(secure.identity.roots)),
        stranger=quoteStringArgument(str(stranger.roots)),
    )
    from twisted.internet import protocol
    from twisted.internet.endpoints import clientFromString

    # A registered account, whose mailbox shows whether anything got through.
    trusting = await within(mc.connect_mail(reactor, secure.mail))
    cookie = await within(trusting.register("mallory", "pw"))
    # connect_mail fires only after the handshake: here it fails, before any
    # request (and its password) could be sent.
    with pytest.raises(error) as refused:
        await within(mc.connect_mail(reactor, description))
    if error is SSL.Error:
        assert "certificate verify failed" in str(refused.value)

    # A client that writes its request at once, before the handshake is over:
    # the request must wait for a handshake that fails, and never be sent.
    class Eager(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(
                ("SEND mallory leaked %s\nover an untrusted connection\n.\n" % cookie).encode()
            )

        def connectionLost(self, reason):
            lost.callback([reason])

    lost = defer.Deferred()
    await within(
        clientFromString(reactor, description).connect(protocol.Factory.forProtocol(Eager))
    )
    [reason] = await within(lost)
    assert reason.check(error), reason  # cut off by the failed check, as above
    # Nothing got through, and the server still serves a client that trusts it.
    assert await within(trusting.count()) == 0
    assert await within(trusting.list()) == []
    await closed(trusting)


@pytest_twisted.ensureDeferred
async def test_plain_ssl_checks_nothing(secure):
    """C{ssl:host=H:port=P} alone accepts any certificate: the docs warn of it."""
    from twisted.internet import reactor

    c = await within(mc.connect_mail(reactor, "ssl:host=localhost:port=%d" % secure.mail_port))
    assert len(await within(c.register("unchecked", "pw"))) == 43
    await closed(c)


def test_ssl_client_descriptions_have_no_trust_roots():
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    with pytest.raises(TypeError, match="trustRoots"):
        clientFromString(reactor, "ssl:host=localhost:port=1:trustRoots=/tmp")


# End to end: twistd and the CLI.


@pytest.fixture
def tls_server(mailsvc_process, identity):
    """
    C{twistd -n mailsvc} with both ports on TLS: the harness's own
    C{--port tcp:0...} and C{--chat-port tcp:0...} come first, and twistd
    takes the last value given for an option.
    """
    return mailsvc_process(
        "--port", listening(identity), "--chat-port", listening(identity),
        "--irc-port", listening(identity),
        "--smtp-port", listening(identity), "--pop3-port", listening(identity),
        "--web-port", listening(identity),
    )


def cli(*args, password="pw", stdin=""):
    env = dict(os.environ, MAILSVC_PASSWORD=password)
    done = subprocess.run(
        [CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT,
    )
    return done.stdout, done.stderr, done.returncode


@pytest.mark.e2e
def test_twistd_serves_tls_and_the_cli_speaks_it(tls_server, identity, stranger):
    port, roots = tls_server.port, identity.roots
    # Only the TLS ports listen: the harness's tcp:0 ones were overridden.
    assert set(tls_server.ports) == {"mail", "chat", "irc", "smtp", "pop3", "web"}
    assert not any(" starting on " in l and "(TLS)" not in l for l in tls_server.log.lines)
    mail = ["--connect", verified(port, roots)]
    assert cli("register", "--user", "alice", *mail) == ("registered alice\n", "", 0)
    out, err, status = cli(
        "send", "--user", "alice", "--connect", tls(port, roots), "alice", "Hi", stdin="one\n"
    )
    assert (out, err, status) == ("sent message 1 to alice\n", "", 0)
    assert cli("count", "--user", "alice", *mail) == ("1\n", "", 0)
    # A client that does not trust the certificate gets nothing.
    for untrusted in (tls(port), tls(port, stranger.roots), verified(port, stranger.roots)):
        out, err, status = cli("count", "--user", "alice", "--connect", untrusted)
        assert (out, status) == ("", 3)
        assert err.startswith("mailsvc-client: cannot connect to ") and "Traceback" not in err
        assert "certificate" in err or "VerificationError" in err


@pytest.mark.e2e
def test_a_plain_tcp_client_on_the_tls_port_gets_no_reply(tls_server, identity):
    with Client(tls_server.port) as plain:
        plain.send("HELP\n")
        received = plain.read_until_closed()
    # At most a TLS alert record: no text reply.
    assert b"OK" not in received and b"\r\n" not in received, received
    assert tls_server.running()
    mail = ["--connect", verified(tls_server.port, identity.roots)]
    assert cli("register", "--user", "after", *mail) == ("registered after\n", "", 0)
    assert cli("count", "--user", "after", *mail) == ("0\n", "", 0)


class TLSLines:
    """A chat connection over Python's own ssl module (not Twisted's TLS),
    checking the certificate and the name as any TLS client would."""

    def __init__(self, port, identity, timeout=SOCKET_TIMEOUT):
        context = ssl.create_default_context(cafile=str(identity.cert))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rwb")

    def line(self):
        raw = self.file.readline()
        if not raw:
            raise EOFError("connection closed")
        assert raw.endswith(b"\r\n"), raw
        return raw[:-2].decode("utf-8")

    def send(self, line):
        self.file.write(line.encode("utf-8") + b"\n")
        self.file.flush()

    def close(self):
        self.file.close()
        self.sock.close()


@pytest.mark.e2e
def test_twistd_chat_over_tls_with_the_cli(tls_server, identity):
    bob = TLSLines(tls_server.chat_port, identity)
    try:
        assert bob.line() == "HELLO"
        bob.send("NICK bob")
        assert bob.line() == "READY"
        out, err, status = cli(
            "chat", "--nick", "carol", "--connect", tls(tls_server.chat_port, identity.roots),
            stdin="hello over TLS\n",
        )
        assert (err, status) == ("", 0) and "Joined as carol." in out
        assert bob.line() == "* carol joined"
        assert bob.line() == "carol: hello over TLS"
        assert bob.line() == "* carol left"
        bob.send("BYE")
        with pytest.raises(EOFError):
            bob.line()
    finally:
        bob.close()


@pytest.mark.e2e
def test_the_web_front_serves_https_and_wss(tls_server, identity):
    import base64
    import json
    import socket
    import ssl
    import urllib.request

    port = tls_server.ports["web"]
    context = ssl.create_default_context(cafile=str(identity.roots / "cert.pem"))
    with urllib.request.urlopen(
        "https://localhost:%d/status.json" % (port,), context=context, timeout=CLI_TIMEOUT
    ) as response:
        assert json.load(response)["storage"]["ok"] is True
    # The page's WebSocket over the same TLS: the upgrade is accepted.
    key = base64.b64encode(b"0123456789abcdef").decode()
    with socket.create_connection(("localhost", port), timeout=CLI_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as wss:
            wss.sendall(
                (
                    "GET /ws HTTP/1.1\r\nHost: localhost:%d\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\nOrigin: https://localhost:%d\r\n\r\n"
                    % (port, key, port)
                ).encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += wss.recv(4096)
            assert answer.startswith(b"HTTP/1.1 101 ")
