"""The chat room with fake participants, over the in-process bus."""

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsvc import errors
from mailsvc.core import events
from mailsvc.core.chatlog import ChatLog
from mailsvc.core.room import ChatRoom
from mailsvc.fronts.chat import line
from mailsvc.interfaces import IParticipant


@implementer(IParticipant)
class Participant:
    nick = None
    account = None

    format = staticmethod(line)

    def __init__(self, peer="127.0.0.1:1"):
        self.peer = peer
        self.received = []
        self.payloads = []

    def send(self, data):
        self.payloads.append(data)
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


def join(room, participant, nick, account=None):
    """Join at once (the in-process presence answers at once); the history's lines."""
    fired = []
    room.join(participant, nick, account).addBoth(fired.append)
    [result] = fired
    if not isinstance(result, events.History):
        result.raiseException()
    return result.render(line).decode("utf-8").split("\r\n")[:-1]


def who(room):
    fired = []
    room.who().addCallback(fired.append)
    return fired[0]


def test_participant_provides_the_interface():
    assert verifyObject(IParticipant, Participant())


def test_a_real_chat_connection_provides_the_interface(service, clock):
    """The room's real participants, not only the fake above: a ChatProtocol
    on a connection, before and after it joins."""
    from mailsvc.fronts.chat import ChatFactory
    from wire import Wire

    wire = Wire(ChatFactory(service, clock=clock))
    assert wire.replies() == ["HELLO"]
    assert verifyObject(IParticipant, wire.protocol)
    assert wire("NICK alice") == ["READY"]
    assert verifyObject(IParticipant, wire.protocol)
    assert (wire.protocol.nick, wire.protocol.account) == ("alice", None)
    assert wire.protocol.peer == "127.0.0.1:50000"
    wire.protocol.receive(events.Joined("bob"))
    assert wire.replies() == ["* bob joined"]


def test_join_announces_to_the_others(room):
    alice, bob = Participant(), Participant()
    assert join(room, alice, "alice") == []
    join(room, bob, "bob")
    assert alice.take() == ["* bob joined"]
    assert bob.take() == []
    assert who(room) == ["alice", "bob"]


def test_nick_rules(room):
    join(room, Participant(), "alice")
    with pytest.raises(errors.NickTaken):
        join(room, Participant(), "ALICE")
    for bad in ("", "a b", "x" * 33, "é", "a*b"):
        with pytest.raises(errors.InvalidNick):
            join(room, Participant(), bad)
    join(room, Participant(), "under_score-dash")


def test_say_reaches_everyone_but_the_sender_encoded_once(room):
    alice, bob, carol = Participant(), Participant(), Participant()
    for p, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        join(room, p, nick)
    for p in (alice, bob, carol):
        p.take()
    room.say(alice, "héllo")
    assert alice.take() == []
    assert bob.take() == carol.take() == ["alice: héllo"]
    assert bob.payloads[-1] == b"alice: h\xc3\xa9llo\r\n"
    assert carol.payloads[-1] is bob.payloads[-1]


def test_each_format_renders_a_broadcast_once(room):
    rendered = []

    def shout(event):
        rendered.append(event)
        return event.render(line).upper()

    class Shouter(Participant):
        format = staticmethod(shout)

    alice, bob, loud, louder = Participant(), Participant(), Shouter(), Shouter()
    for p, nick in ((alice, "alice"), (bob, "bob"), (loud, "loud"), (louder, "louder")):
        join(room, p, nick)
    del rendered[:]
    room.say(alice, "hi")
    assert bob.take()[-1] == "alice: hi"
    assert loud.payloads[-1] is louder.payloads[-1] == b"ALICE: HI\r\n"
    assert len(rendered) == 1


def test_an_event_is_rendered_once_per_format():
    calls = []

    def shout(event):
        calls.append(event)
        return event.text.upper()

    said = events.Said("alice", "hi")
    assert [said.render(shout) for _ in range(3)] == ["HI"] * 3
    assert said.render(line) == b"alice: hi\r\n"
    assert calls == [said]


def test_leave_frees_the_nick_and_tells_the_others(room):
    alice, bob = Participant(), Participant()
    join(room, alice, "alice")
    join(room, bob, "bob")
    room.leave(bob)
    assert alice.take()[-1] == "* bob left"
    room.leave(bob)  # twice is harmless
    assert alice.take() == []
    join(room, Participant(), "bob")


def test_history_is_the_last_messages_marked(room):
    alice = Participant()
    join(room, alice, "alice")
    for i in range(5):
        room.say(alice, "m%d" % i)
    assert join(room, Participant(), "bob") == [
        "[history] alice: m2",
        "[history] alice: m3",
        "[history] alice: m4",
    ]


def test_no_history_when_turned_off():
    room = ChatRoom(history=0)
    alice = Participant()
    join(room, alice, "alice")
    room.say(alice, "hello")
    assert join(room, Participant(), "bob") == []


def test_private_messages(room):
    alice, bob, carol = Participant(), Participant(), Participant()
    for p, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        join(room, p, nick)
    for p in (alice, bob, carol):
        p.take()
    room.private(alice, "BOB", "psst")
    assert bob.take() == ["*alice* psst"]
    assert carol.take() == [] and alice.take() == []
    room.private(alice, "dave", "hello?")  # nobody here: nobody hears it
    assert [p.take() for p in (alice, bob, carol)] == [[], [], []]


def test_mail_notice_only_to_the_account_holder(room):
    owner, impostor_free_nick = Participant(), Participant()
    join(room, owner, "alice", account="alice")
    join(room, impostor_free_nick, "bob")
    owner.take()
    room.new_mail("Alice", "carol", "hi")
    room.new_mail("bob", "carol", "hi")
    assert owner.take() == ["* new mail from carol: hi"]
    assert impostor_free_nick.take() == []


def test_a_failing_participant_is_removed(room, logged_errors):
    alice, broken = Participant(), Broken()
    join(room, alice, "alice")
    join(room, broken, "broken")
    room.say(alice, "hello")
    assert who(room) == ["alice"]
    assert alice.take()[-1] == "* broken left"
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_chat_log_records_joins_messages_and_leaves(tmp_path, clock):
    path = tmp_path / "chat.log"
    chat_log = ChatLog(str(path), clock)
    chat_log.startService()
    room = ChatRoom(chat_log)
    alice = Participant("127.0.0.1:4242")
    join(room, alice, "alice")
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
