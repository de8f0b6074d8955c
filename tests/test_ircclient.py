"""mailsvc.ircclient: the chat through the IRC front, as mailsvc-client chat --irc uses it."""

import pytest_twisted
from twisted.internet import task
from twisted.internet.testing import StringTransport

from conftest import within
from mailsvc.client import NickRefused, NoReply


def joined_client(events):
    from mailsvc.ircclient import IRCChatClient

    client = IRCChatClient("alice", on_event=events.append)
    client.makeConnection(StringTransport())
    client.dataReceived(b":irc.test 001 alice :Welcome\r\n")
    client.dataReceived(b":alice!alice@irc.test JOIN #chat\r\n")
    client.dataReceived(b":irc.test 353 alice = #chat :alice @bob\r\n")
    client.dataReceived(b":irc.test 366 alice #chat :End of /NAMES list\r\n")
    return client


def test_lines_are_decoded_whole_and_bad_bytes_replaced():
    events = []
    client = joined_client(events)
    assert client.ready.called
    # A character split between two reads, then a byte that is not UTF-8.
    client.dataReceived(b":bob!bob@irc.test PRIVMSG #chat :caf\xc3")
    client.dataReceived(b"\xa9\r\n:bob!bob@irc.test PRIVMSG alice :\xff!\r\n")
    assert [(e.kind, e.nick, e.text) for e in events] == [
        ("message", "bob", "café"),
        ("private", "bob", "\N{REPLACEMENT CHARACTER}!"),
    ]


def test_the_line_chats_words_become_irc():
    events = []
    client = joined_client(events)
    client.transport.clear()
    for line in ["hello", "//shrug", "/msg bob psst", "/who", "/frob", "BYE"]:
        client.sendText(line)
    assert client.transport.value().decode().splitlines() == [
        "PRIVMSG #chat :hello",
        "PRIVMSG #chat :/shrug",
        "PRIVMSG bob :psst",
        "NAMES #chat",
        "QUIT :bye",
    ]
    assert events[-1].kind == "error" and "unknown command /frob" in events[-1].text
    client.dataReceived(b":irc.test NOTICE alice :Server will shut down in 5 seconds\r\n")
    client.dataReceived(b":bob!bob@irc.test PART #chat :left\r\n")
    assert [(e.kind, e.text, e.seconds) for e in events[-2:]] == [
        ("shutdown", "Server will shut down in 5 seconds", 5),
        ("notice", "bob left", None),
    ]


@pytest_twisted.ensureDeferred
async def test_joining_through_the_irc_front(mailsvc_server):
    from twisted.internet import reactor

    from mailsvc.ircclient import connect_irc

    await within(mailsvc_server.add_user("alice", "wonderland"))
    carol = await within(mailsvc_server.connect_chat("carol"))
    events = carol.events().__aiter__()
    heard = []
    alice = await within(connect_irc(
        reactor, mailsvc_server.address("irc"), "alice", password="wonderland",
        on_event=heard.append,
    ))
    assert sorted(await within(alice.who())) == ["alice", "carol"]
    assert (await within(events.__anext__())).text == "alice joined"
    alice.say("hi from IRC")
    said = await within(events.__anext__())
    assert (said.nick, said.text) == ("alice", "hi from IRC")

    # The nickname is taken: on_retry offers another, or gives up.
    offered = []
    bob = await within(connect_irc(
        reactor, mailsvc_server.address("irc"), "carol",
        on_retry=lambda reason: offered.append(reason) or "bob",
    ))
    assert bob.nick == "bob" and offered == ["Nickname is already in use"]
    try:
        await within(connect_irc(reactor, mailsvc_server.address("irc"), "bob"))
    except NickRefused as e:
        assert e.reason == "Nickname is already in use"
    else:
        raise AssertionError("joined under a nickname in use")
    for client in (alice, bob, carol):
        await within(client.bye())


@pytest_twisted.ensureDeferred
async def test_a_port_that_does_not_speak_irc_is_no_reply(mailsvc_server):
    from twisted.internet import reactor

    from mailsvc.ircclient import connect_irc

    clock = task.Clock()
    joining = connect_irc(
        reactor, mailsvc_server.mail, "alice", greeting_timeout=15, clock=clock
    )

    async def connected():
        while not mailsvc_server.mail_factory.connections:
            await task.deferLater(reactor, 0.01)

    await within(connected())
    clock.advance(15)
    try:
        await within(joining)
    except NoReply as e:
        assert e.seconds == 15
    else:
        raise AssertionError("joined the mail port")
