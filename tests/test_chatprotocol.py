"""The chat port over StringTransport, against a synchronous shared service."""

import pytest

from mailsvc.core.events import Shutdown
from mailsvc.fronts.chat import ChatFactory
from wire import Wire


@pytest.fixture
def chat(service, clock):
    # Flood control is tested on its own; here a talker may talk fast.
    return ChatFactory(service, max_sendq=4096, clock=clock, flood_rate=1e6, flood_burst=1000)


@pytest.fixture
def join(chat):
    def join(nick, *password):
        wire = Wire(chat)
        assert wire.replies() == ["HELLO"]
        assert wire(" ".join(("NICK", nick) + password)) == ["READY"]
        return wire

    return join


def test_hello_then_nick_then_ready(chat):
    wire = Wire(chat)
    assert wire.replies() == ["HELLO"]
    assert wire("hello?") == ["RETRY send NICK <name> first"]
    assert wire("NICK") == ["RETRY send NICK <name> first"]
    assert wire("NICK bad*nick") == [
        "RETRY invalid nickname: use 1 to 32 letters, digits, _ or -"
    ]
    assert wire("NICKalice") == ["READY"]


def test_taken_nick_gets_retry_and_frees_on_disconnect(join, chat):
    alice = join("alice")
    other = Wire(chat)
    other.replies()
    assert other("NICK ALICE") == ["RETRY nickname in use"]
    alice.protocol.connectionLost(None)
    assert other("nick alice") == ["READY"]


def test_broadcast_to_all_but_the_sender(join):
    alice, bob, carol = join("alice"), join("bob"), join("carol")
    alice.replies()
    bob.replies()
    assert alice("grüß dich") == []
    assert bob.replies() == ["alice: grüß dich"]
    assert carol.replies() == ["alice: grüß dich"]


def test_joins_leaves_and_bye(join):
    alice = join("alice")
    bob = join("bob")
    assert alice.replies() == ["* bob joined"]
    assert bob("BYE") == []
    assert bob.transport.disconnecting
    bob.protocol.connectionLost(None)
    assert alice.replies() == ["* bob left"]
    carol = join("carol")
    carol("/quit")
    assert carol.transport.disconnecting


def test_commands(join):
    alice, bob = join("alice"), join("bob")
    alice.replies()
    assert alice("/who") == ["* here: alice, bob"]
    assert alice("/msg bob psst, secret") == []
    assert bob.replies() == ["*alice* psst, secret"]
    assert alice("/msg dave hi")[0].startswith("* error: dave is not here")
    assert alice("/msg bob") == ["* error: usage: /msg <nick> <text>"]
    assert alice("/frob") == ["* error: unknown command /frob, try /help"]
    assert alice("/help")[0] == "* commands:"
    assert alice("//slash") == []
    assert bob.replies() == ["alice: /slash"]
    assert alice("") == [] and bob.replies() == []


def test_history_follows_ready(join):
    alice = join("alice")
    alice("one")
    alice("two")
    bob = Wire(alice.protocol.factory)
    bob.replies()
    assert bob("NICK bob") == ["READY", "[history] alice: one", "[history] alice: two"]


def test_reserved_nick_needs_the_account_password(chat, service, join):

    service.register("alice", "pw")
    wire = Wire(chat)
    wire.replies()
    assert wire("NICK alice") == [
        "RETRY nickname belongs to a mail account: NICK <name> <password>"
    ]
    assert wire("NICK Alice wrong") == ["RETRY wrong password for that nickname"]
    assert wire("NICK alice pw") == ["READY"]
    assert wire.protocol.account == "alice"
    assert join("bob", "ignored").protocol.account is None


def test_offline_msg_goes_to_the_mailbox_of_a_registered_user(chat, service, join):
    service.register("alice", "pw")
    service.register("bob", "pw2")
    carol = join("carol")
    assert carol("/msg bob hi")[0].startswith("* error: bob is not here")
    alice = join("alice", "pw")
    assert alice("/msg bob see you at noon") == [
        "* bob is not here: your message is in their mailbox"
    ]
    assert alice("/msg nobody hi") == ["* error: no such nickname or mailbox: nobody"]
    # bob, joining under his reserved nick, reads it by mail, and gets the
    # notice of new mail while in the chat.
    bob = join("bob", "pw2")
    cookie = service.login("bob", "pw2").result
    [message] = service.list(cookie).result
    assert (message.sender, message.subject) == ("alice", "Chat message from alice")
    assert service.read(cookie, message.id).result.body == "see you at noon"
    alice("/msg bob not delivered as mail")
    assert bob.replies() == ["*alice* not delivered as mail"]
    service.send(cookie, "bob", "to myself", "body")
    assert bob.replies() == ["* new mail from bob: to myself"]


def test_overlong_and_undecodable_lines(join):
    alice = join("alice")
    assert alice.feed(b"\xff\n") == ["* error: line is not valid UTF-8"]
    limit = alice.protocol.LINE_LIMIT
    assert alice.feed("x" * (limit + 1) + "\n/who\n") == [
        "* error: line too long: at most %d bytes" % limit,
        "* here: alice",
    ]


def test_a_client_that_never_reads_is_dropped_at_the_sendq_limit(join):
    reader, stalled = join("reader"), join("stalled")
    talker = join("talker")
    reader.replies()
    stalled.replies()
    # The transport reports its buffer full: from now on output waits.
    stalled.transport.producer.pauseProducing()
    for i in range(100):
        talker("message %03d, long enough to fill the queue" % i)
    assert stalled.transport.disconnecting
    assert len(stalled.transport.value()) <= 4096 + 100
    assert len(reader.replies()) == 100


def test_sendq_is_reset_when_the_client_catches_up(join):
    slow, talker = join("slow"), join("talker")
    slow.replies()
    producer = slow.transport.producer
    for _ in range(5):
        producer.pauseProducing()
        for i in range(40):
            talker("x" * 50)
        producer.resumeProducing()
    assert not slow.transport.disconnecting


def test_shutdown_notice_reaches_every_chat_connection(chat, join):
    alice = join("alice")
    waiting = Wire(chat)
    waiting.replies()
    chat.announce_shutdown(Shutdown(5))
    assert alice.replies() == ["Server will shut down in 5 seconds"]
    assert waiting.replies() == ["Server will shut down in 5 seconds"]


def test_replies_to_a_client_that_never_reads_count_against_its_sendq(join):
    flooder = join("flooder")
    flooder.transport.producer.pauseProducing()
    # Reading stops too: the requests wait in the buffer, unanswered.
    assert flooder.feed("/help\n" * 1000) == []
    assert not flooder.transport.disconnecting
    # Output the room sends it meanwhile is counted, and it is dropped.
    talker = join("talker")
    for _ in range(100):
        talker("x" * 100)
    assert flooder.transport.disconnecting


def test_what_waits_for_the_end_of_the_turn_is_written_before_a_close(join):
    alice, bob = join("alice"), join("bob")
    alice.replies()
    bob.replies()
    alice("one")
    bob.protocol.close()
    # Not bob.replies(): that would end the turn first.
    assert bob.transport.value() == b"alice: one\r\n"
    assert bob.transport.disconnecting
