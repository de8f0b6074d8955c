"""
The IRC front end to end: Twisted's own C{IRCClient} in the test's reactor
against L{mailsvc.testing.start_server}, and raw sockets against C{twistd -n
mailsvc} sending exactly what irssi and WeeChat send at connect.

As in test_e2e_chat.py, "nothing else arrived" is shown with a barrier (a
PING whose PONG comes after whatever was on its way), never with a wait.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols.basic import LineReceiver
from twisted.words.protocols import irc

from conftest import within

S = "mailsvc"


class Lines(LineReceiver):
    """A raw line client: every line it receives waits in a queue."""

    delimiter = b"\r\n"

    def connectionMade(self):
        self.queue = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def lineReceived(self, line):
        self.queue.put(line.decode("utf-8"))

    def connectionLost(self, reason):
        self.closed.callback(None)

    def say(self, line):
        self.sendLine(line.encode("utf-8"))

    def next(self):
        return within(self.queue.get())


class Client(irc.IRCClient):
    """Twisted's IRC client, its callbacks turned into a queue of events."""

    def connectionMade(self):
        self.events = defer.DeferredQueue()
        self.closed = defer.Deferred()
        self.signed = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.closed.callback(None)

    def signedOn(self):
        self.signed.callback(self.nickname)

    def irc_ERR_NICKNAMEINUSE(self, prefix, params):
        self.events.put(("433", params[-1]))

    def irc_ERR_PASSWDMISMATCH(self, prefix, params):
        self.events.put(("464", params[-1]))

    def joined(self, channel):
        self.events.put(("joined", channel))

    def privmsg(self, user, channel, message):
        self.events.put(("privmsg", user.split("!")[0], channel, message))

    def noticed(self, user, channel, message):
        self.events.put(("notice", user.split("!")[0], channel, message))

    def userJoined(self, user, channel):
        self.events.put(("userJoined", user, channel))

    def userLeft(self, user, channel):
        self.events.put(("userLeft", user, channel))

    def irc_RPL_NAMREPLY(self, prefix, params):
        self.events.put(("names", params[-1].split()))

    def irc_PONG(self, prefix, params):
        self.events.put(("pong", params[-1]))

    def next(self):
        return within(self.events.get())

    async def barrier(self, token="barrier"):
        """Everything on its way to this client before now, in order."""
        self.sendLine("PING :" + token)
        seen = []
        while True:
            event = await self.next()
            if event == ("pong", token):
                return seen
            seen.append(event)


def connect_irc(server, nick, password=None):
    """An IRCClient that registers as C{nick} once connected (as it does)."""
    factory = protocol.Factory.forProtocol(Client)
    build = factory.buildProtocol

    def buildProtocol(addr):
        client = build(addr)
        client.nickname, client.password = nick, password
        return client

    factory.buildProtocol = buildProtocol
    return within(endpoints.clientFromString(reactor, server.address("irc")).connect(factory))


async def irc_client(server, nick, password=None):
    client = await connect_irc(server, nick, password)
    await within(client.signed)
    return client


async def line_client(server, front, *lines):
    endpoint = endpoints.clientFromString(reactor, server.address(front))
    client = await within(endpoint.connect(protocol.Factory.forProtocol(Lines)))
    for line in lines:
        client.say(line)
    return client


async def chat_user(server, nick):
    """A netcat-style line chat user, READY."""
    lena = await line_client(server, "chat", "NICK " + nick)
    assert await lena.next() == "HELLO"
    assert await lena.next() == "READY"
    return lena


async def ircjoin(server, nick, password=None):
    client = await irc_client(server, nick, password)
    client.join("#chat")
    assert await client.next() == ("joined", "#chat")
    names = await client.next()
    assert names[0] == "names" and nick in names[1]
    return client


async def close(*clients):
    for c in clients:
        c.transport.loseConnection()
        await within(c.closed)


@pytest_twisted.ensureDeferred
async def test_irc_client_and_line_chat_talk_both_ways(mailsvc_server):
    server = mailsvc_server
    lena = await chat_user(server, "lena")
    alice = await ircjoin(server, "alice")
    assert await lena.next() == "* alice joined"
    alice.say("#chat", "hello from IRC, grüß dich")
    assert await lena.next() == "alice: hello from IRC, grüß dich"
    lena.say("hello from the line chat")
    assert await alice.next() == ("privmsg", "lena", "#chat", "hello from the line chat")
    # /msg both ways.
    alice.msg("lena", "psst")
    assert await lena.next() == "*alice* psst"
    lena.say("/msg alice back")
    assert await alice.next() == ("privmsg", "lena", "alice", "back")
    # Joins and leaves cross too.
    bob = await ircjoin(server, "bob")
    assert await alice.next() == ("userJoined", "bob", "#chat")
    assert await lena.next() == "* bob joined"
    await close(bob)
    assert await alice.next() == ("userLeft", "bob", "#chat")
    assert await lena.next() == "* bob left"
    mo = await chat_user(server, "mo")
    assert await alice.next() == ("userJoined", "mo", "#chat")
    await close(mo)
    assert await alice.next() == ("userLeft", "mo", "#chat")
    assert await alice.barrier() == []
    await close(alice, lena)


@pytest_twisted.ensureDeferred
async def test_reserved_nick_offline_mail_and_new_mail_notice(mailsvc_server):
    server = mailsvc_server
    await within(server.add_user("carol", "secret"))
    await within(server.add_user("dave", "pw"))
    # Without the password, the nick is refused; with a wrong one, 464.
    thief = await connect_irc(server, "carol")
    assert (await thief.next())[0] == "433"
    thief.sendLine("PASS wrong")
    thief.sendLine("NICK carol")
    assert await thief.next() == ("464", "Password incorrect")
    await close(thief)
    carol = await ircjoin(server, "carol", "secret")
    # A PRIVMSG to a mail account that is not here goes to its mailbox.
    carol.msg("dave", "see you at noon")
    assert await carol.next() == (
        "notice",
        S,
        "carol",
        "dave is not here: your message is in their mailbox",
    )
    [message] = await within(server.mailbox("dave"))
    assert (message.sender, message.subject, message.body) == (
        "carol",
        "Chat message from carol",
        "see you at noon",
    )
    await within(server.deliver("carol", "dave", "lunch?", "at noon"))
    assert await carol.next() == ("notice", S, "carol", "new mail from dave: lunch?")
    await close(carol)


@pytest_twisted.ensureDeferred
async def test_history_with_server_time_and_the_chat_log(tmp_path):
    from mailsvc.testing import start_server

    chat_log = str(tmp_path / "chat.log")
    server = await within(start_server(db=str(tmp_path / "db.sqlite"), chat_log=chat_log))
    lena = await chat_user(server, "lena")
    lena.say("before anyone on IRC")
    raw = await line_client(
        server,
        "irc",
        "CAP LS 302",
        "NICK tagged",
        "USER tagged 0 * :t",
        "CAP REQ :server-time",
        "CAP END",
        "JOIN #chat",
    )
    line = await raw.next()
    while " 366 " not in line:
        line = await raw.next()
    history = await raw.next()
    assert history.startswith("@time=")
    assert history.endswith(" :lena!lena@%s PRIVMSG #chat :before anyone on IRC" % S)
    raw.say("PRIVMSG #chat :logged")
    assert await lena.next() == "* tagged joined"
    assert await lena.next() == "tagged: logged"
    await close(raw, lena)
    # The chat log is flushed when the server stops.
    await within(server.stop())
    with open(chat_log, encoding="utf-8") as f:
        text = f.read()
    assert "tagged joined from 127.0.0.1:" in text
    assert "tagged: logged" in text


# Raw sockets against twistd: exactly what real clients send.


def read_until(c, numeric):
    """Lines up to and including the first with C{numeric} as its command."""
    lines = []
    while True:
        line = c.line()
        lines.append(line)
        parts = line.split()
        if len(parts) > 1 and parts[1] == numeric:
            return lines


@pytest.mark.e2e
def test_what_irssi_sends(server):
    c = server.connect(front="irc")
    # irssi 1.4: CAP LS 302, NICK and USER in one write; no CAP it knows is
    # offered here but server-time, then CAP END.
    c.send("CAP LS 302\r\nNICK ircuser\r\nUSER ircuser ircuser 127.0.0.1 :Irssi User\r\n")
    assert c.line() == ":%s CAP * LS :echo-message message-tags sasl=PLAIN server-time" % S
    c.send("CAP REQ :server-time\r\n")
    assert c.line() == ":%s CAP * ACK :server-time" % S
    c.send("CAP END\r\n")
    welcome = read_until(c, "376")
    assert welcome[0].startswith(":%s 001 ircuser :Welcome" % S)
    c.send("MODE ircuser +i\r\n")
    c.send("JOIN #chat\r\n")
    joined = read_until(c, "366")
    assert joined[0] == ":ircuser!ircuser@%s JOIN #chat" % S
    assert joined[1].startswith(":%s 332 ircuser #chat :" % S)
    c.send("MODE #chat\r\nWHO #chat\r\n")
    assert c.line() == ":%s 324 ircuser #chat :+nt" % S
    assert read_until(c, "315")[-1] == ":%s 315 ircuser #chat :End of /WHO list" % S
    nc = server.connect_chat()
    assert nc.line() == "HELLO"
    nc.send("NICK netcat\n")
    assert nc.line() == "READY"
    assert c.line() == ":netcat!netcat@%s JOIN #chat" % S
    nc.send("hi irssi\n")
    line = c.line()
    assert line.startswith("@time=") and line.endswith(
        " :netcat!netcat@%s PRIVMSG #chat :hi irssi" % S
    )
    c.send("PRIVMSG #chat :hi netcat\r\n")
    assert nc.line() == "ircuser: hi netcat"
    c.send("QUIT :leaving\r\n")
    assert c.line().startswith("ERROR :Closing link: ircuser")
    c.expect_eof()
    c.close()
    assert nc.line() == "* ircuser left"
    nc.close()


@pytest.mark.e2e
def test_what_weechat_sends_with_a_reserved_nick(server):
    # An account, through the mail front's REGISTER.
    m = server.connect()
    assert m("REGISTER wee secret")[0].startswith("OK")
    m.close()
    c = server.connect(front="irc")
    # WeeChat 3.8: CAP LS 302, NICK, USER; then CAP REQ of what it wants among
    # what is offered, and CAP END.
    c.send("CAP LS 302\r\nNICK wee\r\nUSER wee 0 * :wee\r\n")
    assert c.line().startswith(":%s CAP * LS :" % S)
    c.send("CAP REQ :message-tags server-time\r\nCAP END\r\n")
    assert c.line() == ":%s CAP * ACK :message-tags server-time" % S
    assert c.line().startswith(":%s 433 * wee :Nickname belongs to a mail account" % S)
    # WeeChat then tries its alternate nick: a free one.
    c.send("NICK wee1\r\n")
    assert read_until(c, "376")[0].startswith(":%s 001 wee1 " % S)
    c.send("QUIT\r\n")
    assert c.line() == "ERROR :Closing link: wee1[127.0.0.1] (Quit)"
    c.expect_eof()
    c.close()
    c = server.connect(front="irc")
    c.send("PASS secret\r\nNICK wee\r\nUSER wee 0 * :wee\r\n")
    assert read_until(c, "376")[0].startswith(":%s 001 wee " % S)
    c.send("PING :LAG123\r\n")
    assert c.line() == ":%s PONG %s :LAG123" % (S, S)
    # Input split inside a character, and bad UTF-8, are fine.
    c.send("JOIN #chat\r\n")
    read_until(c, "366")
    nc = server.connect_chat()
    nc.line()
    nc.send("NICK nc\n")
    assert nc.line() == "READY"
    assert c.line() == ":nc!nc@%s JOIN #chat" % S
    data = "PRIVMSG #chat :☃".encode("utf-8") + b" \xff\r\n"
    c.send(data[:17])
    c.send(data[17:] + b"PRIVMSG #chat :" + b"x" * 600 + b"\r\n")
    assert c.line() == ":%s 417 wee :Input line was too long" % S
    assert nc.line() == "wee: ☃ \ufffd"
    c.close()
    nc.close()
