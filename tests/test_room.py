"""The chat room with fake participants."""

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsvc import errors
from mailsvc.chatlog import ChatLog
from mailsvc.room import ChatRoom, IChatParticipant


@implementer(IChatParticipant)
class Participant:
    nick = None
    account = None

    def __init__(self, peer="127.0.0.1:1"):
        self.peer = peer
        self.received = []

    def send(self, data):
        self.received.extend(data.decode("utf-8").split("\r\n")[:-1])

    def take(self):
        received, self.received = self.received, []
        return received


class Broken(Participant):
    def send(self, data):
        raise OSError("gone")


@pytest.fixture
def room():
    return ChatRoom(history=3)


def test_participant_provides_the_interface():
    assert verifyObject(IChatParticipant, Participant())


def test_a_real_chat_connection_provides_the_interface(service, clock):
    """The room's real participants, not only the fake above: a ChatProtocol
    on a connection, before and after it joins."""
    from mailsvc.chatprotocol import ChatFactory
    from wire import Wire

    wire = Wire(ChatFactory(service, clock=clock))
    assert wire.replies() == ["HELLO"]
    assert verifyObject(IChatParticipant, wire.protocol)
    assert wire("NICK alice") == ["READY"]
    assert verifyObject(IChatParticipant, wire.protocol)
    assert (wire.protocol.nick, wire.protocol.account) == ("alice", None)
    assert wire.protocol.peer == "127.0.0.1:50000"
    wire.protocol.send(b"* pushed by the room\r\n")
    assert wire.replies() == ["* pushed by the room"]


def test_join_announces_to_the_others(room):
    alice, bob = Participant(), Participant()
    assert room.join(alice, "alice") == b""
    room.join(bob, "bob")
    assert alice.take() == ["* bob joined"]
    assert bob.take() == []
    assert room.who() == ["alice", "bob"]


def test_nick_rules(room):
    room.join(Participant(), "alice")
    with pytest.raises(errors.NickTaken):
        room.join(Participant(), "ALICE")
    for bad in ("", "a b", "x" * 33, "é", "a*b"):
        with pytest.raises(errors.InvalidNick):
            room.join(Participant(), bad)
    room.join(Participant(), "under_score-dash")


def test_say_reaches_everyone_but_the_sender_encoded_once(room):
    alice, bob, carol = Participant(), Participant(), Participant()
    for p, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        room.join(p, nick)
    for p in (alice, bob, carol):
        p.take()
    payloads = []
    bob.send = carol.send = payloads.append
    room.say(alice, "héllo")
    assert alice.take() == []
    assert payloads == [b"alice: h\xc3\xa9llo\r\n"] * 2
    assert payloads[0] is payloads[1]


def test_leave_frees_the_nick_and_tells_the_others(room):
    alice, bob = Participant(), Participant()
    room.join(alice, "alice")
    room.join(bob, "bob")
    room.leave(bob)
    assert alice.take()[-1] == "* bob left"
    room.leave(bob)  # twice is harmless
    assert alice.take() == []
    room.join(Participant(), "bob")


def test_history_is_the_last_messages_marked(room):
    alice = Participant()
    room.join(alice, "alice")
    for i in range(5):
        room.say(alice, "m%d" % i)
    history = room.join(Participant(), "bob")
    assert history.decode().split("\r\n")[:-1] == [
        "[history] alice: m2",
        "[history] alice: m3",
        "[history] alice: m4",
    ]


def test_no_history_when_turned_off():
    room = ChatRoom(history=0)
    alice = Participant()
    room.join(alice, "alice")
    room.say(alice, "hello")
    assert room.join(Participant(), "bob") == b""


def test_private_messages(room):
    alice, bob, carol = Participant(), Participant(), Participant()
    for p, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        room.join(p, nick)
    for p in (alice, bob, carol):
        p.take()
    room.private(alice, "BOB", "psst")
    assert bob.take() == ["*alice* psst"]
    assert carol.take() == [] and alice.take() == []
    with pytest.raises(errors.NoSuchNick):
        room.private(alice, "dave", "hello?")


def test_mail_notice_only_to_the_account_holder(room):
    owner, impostor_free_nick = Participant(), Participant()
    room.join(owner, "alice", account="alice")
    room.join(impostor_free_nick, "bob")
    owner.take()
    room.notify_account("Alice", "* new mail from carol: hi")
    room.notify_account("bob", "* new mail from carol: hi")
    assert owner.take() == ["* new mail from carol: hi"]
    assert impostor_free_nick.take() == []


def test_a_failing_participant_is_removed(room, logged_errors):
    alice, broken = Participant(), Broken()
    room.join(alice, "alice")
    room.join(broken, "broken")
    room.say(alice, "hello")
    assert room.who() == ["alice"]
    assert alice.take()[-1] == "* broken left"
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_chat_log_records_joins_messages_and_leaves(tmp_path, clock):
    path = tmp_path / "chat.log"
    chat_log = ChatLog(str(path), clock)
    chat_log.startService()
    room = ChatRoom(chat_log)
    alice = Participant("127.0.0.1:4242")
    room.join(alice, "alice")
    room.say(alice, "héllo {world}")
    room.leave(alice)
    clock.advance(1)  # the periodic flush
    lines = path.read_text(encoding="utf-8").splitlines()
    chat_log.stopService()
    assert lines == [
        "2023-11-14T22:13:20.000+00:00 alice joined from 127.0.0.1:4242",
        "2023-11-14T22:13:20.000+00:00 alice: héllo {world}",
        "2023-11-14T22:13:20.000+00:00 alice left",
    ]
