"""The bus and presence seams: in-process defaults, and two rooms (two nodes)
sharing one bus, one presence and one store, as a cluster's nodes will."""

import pytest

from conftest import fired
from mailsvc import errors
from mailsvc.bus.local import LocalBus, LocalPresence
from mailsvc.core import events
from mailsvc.core.passwords import Passwords
from mailsvc.core.room import ChatRoom
from mailsvc.core.service import SharedService
from mailsvc.store.sqlite import SQLiteStorage
from test_room import Participant


def test_the_local_bus_calls_subscribers_at_once_in_order(logged_errors):
    bus, heard = LocalBus(), []
    bus.subscribe(lambda m: heard.append(("first", m)))

    def broken(message):
        raise RuntimeError("subscriber bug")

    unsubscribe_broken = bus.subscribe(broken)
    unsubscribe = bus.subscribe(lambda m: heard.append(("third", m)))
    bus.publish("one")
    assert heard == [("first", "one"), ("third", "one")]
    assert len(logged_errors) == 1  # the broken one, logged; the others still heard
    logged_errors.clear()
    unsubscribe()
    unsubscribe_broken()
    bus.publish("two")
    assert heard[-1] == ("first", "two") and len(heard) == 3


def test_local_presence_claims_fail_when_held():
    presence = LocalPresence()
    assert fired(presence.claim("Alice")) is None
    assert fired(presence.claim("alice")).check(errors.NickTaken)
    assert fired(presence.holds("ALICE")) is True
    presence.claim("bob")
    assert fired(presence.who()) == ["Alice", "bob"]
    presence.release("ALICE")
    assert fired(presence.holds("alice")) is False
    assert fired(presence.claim("alice")) is None


def test_local_presence_respells_a_claim_it_holds():
    presence = LocalPresence()
    presence.claim("bob")
    presence.respell("Bob")
    assert fired(presence.who()) == ["Bob"]
    assert fired(presence.claim("BOB")).check(errors.NickTaken)
    # Only a claim held: respelling is no claim.
    presence.respell("carol")
    assert fired(presence.who()) == ["Bob"]


@pytest.fixture
def nodes(clock):
    storage = SQLiteStorage.inline()
    bus, presence = LocalBus(), LocalPresence()
    made = []
    for _ in range(2):
        room = ChatRoom(bus=bus, presence=presence)
        service = SharedService(storage, Passwords.inline(), clock, room)
        service.startService()
        made.append(service)
    yield made
    for service in made:
        service.stopService()


def test_two_rooms_on_one_bus_are_one_room(nodes):
    a, b = nodes
    alice, bob = Participant(), Participant()
    fired(a.join_chat(alice, "alice"))
    fired(b.join_chat(bob, "bob"))
    assert alice.take() == ["* bob joined"]
    assert fired(b.join_chat(Participant(), "ALICE")).check(errors.NickTaken)
    a.say(alice, "hello from a")
    assert bob.take() == ["alice: hello from a"] and alice.take() == []
    assert fired(b.chat_private(bob, "alice", "psst")) is None
    assert alice.take() == ["*bob* psst"]
    assert fired(a.room.who()) == ["alice", "bob"]
    b.leave_chat(bob)
    assert alice.take() == ["* bob left"]


def test_a_change_on_one_node_drops_what_the_other_cached(nodes):
    a, b = nodes
    cookie = fired(a.register("carol", "pw"))
    assert fired(b.count(cookie)) == 0  # b caches the count, and the session
    fired(a.deliver("carol", "dave", "hi", "body"))
    assert fired(b.count(cookie)) == 1
    fired(a.logout(cookie))
    assert fired(b.count(cookie)).check(errors.NotLoggedIn)


def test_new_mail_reaches_the_holder_on_another_node(nodes):
    a, b = nodes
    fired(a.register("erin", "pw"))
    erin = Participant()
    fired(b.join_chat(erin, "erin", "pw"))
    fired(a.deliver("erin", "frank", "lunch?", "at noon"))
    assert erin.take() == ["* new mail from frank: lunch?"]


def test_the_bus_carries_typed_events(nodes):
    a, _ = nodes
    heard = []
    a.bus.subscribe(heard.append)
    cookie = fired(a.register("gina", "pw"))
    fired(a.send(cookie, "gina", "s", "b"))
    assert [type(e) for e in heard] == [events.MailboxChanged, events.NewMail]
