"""The bus and presence seams: in-process defaults, and two rooms (two nodes)
sharing one bus, one presence and one store, as a cluster's nodes will."""

import pytest

from conftest import fired
from mailsvc import errors
from mailsvc.bus.local import LocalBus, LocalPresence
from mailsvc.bus.redis import RedisPresence
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


# The contract, on every bus: two nodes' buses and presences, in process
# (one LocalBus and one LocalPresence shared) and over Redis (two RedisBus
# services on one Redis, as two twistd nodes would have).

import pytest_twisted  # noqa: E402
from twisted.internet import defer  # noqa: E402

from conftest import within  # noqa: E402

LEASE = 2.0  # seconds: short, so that a dead node is reaped within a test


class Heard:
    """What a subscriber heard; L{until} waits (with a timeout) for enough."""

    def __init__(self, bus):
        self.events = []
        self._waiting = []
        bus.subscribe(self._heard)

    def _heard(self, event):
        if not isinstance(event, events.History):
            self.events.append(event)
        for count, kind, d in list(self._waiting):
            if self._count(kind) >= count:
                self._waiting.remove((count, kind, d))
                d.callback(None)

    def _count(self, kind):
        return sum(1 for e in self.events if isinstance(e, kind))

    def until(self, count, seconds=10, kind=events.Event):
        """Wait until C{count} events of C{kind} were heard."""
        if self._count(kind) >= count:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append((count, kind, d))
        return within(d, seconds)

    def texts(self):
        return [e.text for e in self.events if isinstance(e, events.Said)]


def redis_node(url, name, history=20):
    from twisted.internet import reactor

    from mailsvc.bus.redis import RedisBus

    bus = RedisBus(url, reactor, name, lease=LEASE, history=history)
    bus.startService()
    return bus


async def stopped(*buses):
    for bus in buses:
        if bus.running:
            await within(defer.ensureDeferred(defer.maybeDeferred(bus.stopService)))


@pytest.fixture(params=["local", "redis"])
def cluster(request):
    """Fire with two nodes' (bus, presence) pairs."""
    if request.param == "local":
        bus, presence = LocalBus(), LocalPresence()
        yield [(bus, presence), (bus, presence)]
        return
    url = request.getfixturevalue("redis_url")
    buses = [redis_node(url, "node-a"), redis_node(url, "node-b")]
    pytest_twisted.blockon(within(defer.gatherResults([b.ready for b in buses])))
    yield [(b, b.presence) for b in buses]
    pytest_twisted.blockon(defer.ensureDeferred(stopped(*buses)))


@pytest_twisted.ensureDeferred
async def test_every_node_hears_every_event_once_in_the_order_said(cluster):
    (a, _), (b, _) = cluster
    on_a, on_b = Heard(a), Heard(b)
    for n in range(200):
        (a if n % 3 else b).publish(events.Said("alice" if n % 3 else "bob", str(n), 1.0))
    await on_a.until(200)
    await on_b.until(200)
    # One order everywhere; each sender's lines in the order said; each once.
    assert on_a.texts() == on_b.texts()
    for sender, mine in (("alice", lambda n: n % 3), ("bob", lambda n: not n % 3)):
        said = [e.text for e in on_a.events if e.nick == sender]
        assert said == [str(n) for n in range(200) if mine(n)]
    b.publish(events.SessionEnded(b"\x00\xffhash"))
    await on_a.until(201)
    assert on_a.events[-1].token_hash == b"\x00\xffhash"


@pytest_twisted.ensureDeferred
async def test_a_nickname_is_held_once_across_nodes(cluster):
    (_, a), (_, b) = cluster
    assert await within(a.claim("Alice")) is None
    with pytest.raises(errors.NickTaken):
        await within(b.claim("alice"))
    assert await within(b.holds("ALICE")) is True
    # Where: the node's name across nodes, nothing to tell on one.
    assert await within(b.where("ALICE")) in ({None}, {"node-a"})[isinstance(b, RedisPresence)]
    assert await within(b.where("nobody")) is None
    assert await within(b.claim("bob")) is None
    assert await within(a.who()) == ["Alice", "bob"]
    assert await within(b.who()) == ["Alice", "bob"]
    # Across nodes a release takes effect once Redis has it.
    await within(defer.maybeDeferred(a.release, "alice"))
    assert await within(b.claim("ALICE")) is None
    assert await within(a.who()) == ["ALICE", "bob"]


@pytest_twisted.ensureDeferred
async def test_two_rooms_show_the_same_history(cluster):
    (a, pa), (b, pb) = cluster
    room_a = ChatRoom(bus=a, presence=pa, history=3)
    room_b = ChatRoom(bus=b, presence=pb, history=3)
    alice, bob = Participant(), Participant()
    heard = Heard(b)
    await within(room_a.join(alice, "alice"))
    for n in range(5):
        room_a.say(alice, "line %d" % (n,))
    await heard.until(6)  # the join, then the lines
    history = [e.text for e in room_b.history().events]
    assert history == ["line 2", "line 3", "line 4"]
    assert [e.text for e in (await within(room_b.join(bob, "bob"))).events] == history


# Over Redis only: what a cluster of processes adds.


@pytest_twisted.ensureDeferred
async def test_a_node_started_later_shows_the_same_history(redis_url):
    a = redis_node(redis_url, "node-a", history=2)
    try:
        await within(a.ready)
        for n in range(3):
            a.publish(events.Said("alice", "said %d" % (n,)))
        await Heard(a).until(0)
        await a._flushed(timeout=5)
        late = redis_node(redis_url, "node-late", history=2)
        room = ChatRoom(bus=late, presence=late.presence, history=2)
        await within(late.ready)
        assert [e.text for e in room.history().events] == ["said 1", "said 2"]
    finally:
        await stopped(a, late)


@pytest_twisted.ensureDeferred
async def test_a_dead_node_loses_its_nicknames_within_the_lease(redis_url):
    from twisted.internet import reactor

    a, b = redis_node(redis_url, "node-a"), redis_node(redis_url, "node-b")
    try:
        await within(defer.gatherResults([a.ready, b.ready]))
        await within(b.presence.claim("bob"))
        heard = Heard(a)
        # node-b dies: no goodbye, its lease simply runs out.
        b.presence.stop()
        for link in (b._publish_link, b._subscribe_link):
            await within(link._client.stopService())
        b.running = False
        died = reactor.seconds()
        await heard.until(1, seconds=LEASE * 3)
        assert [(type(e), e.nick) for e in heard.events] == [(events.Left, "bob")]
        assert reactor.seconds() - died <= LEASE
        assert await within(a.presence.claim("bob")) is None
    finally:
        await stopped(a, b)


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_loses_and_doubles_nothing(own_redis):
    from mailsvc.testing.redis import unique_url

    url = unique_url(own_redis.url)
    a, b = redis_node(url, "node-a"), redis_node(url, "node-b")
    try:
        await within(defer.gatherResults([a.ready, b.ready]))
        await within(a.presence.claim("alice"))
        on_b = Heard(b)
        for n in range(100):
            a.publish(events.Said("alice", str(n)))
        await on_b.until(100, kind=events.Said)
        own_redis.stop()
        # Cut off: new members are refused, what is said waits.
        with pytest.raises(errors.ChatUnavailable):
            await within(a.presence.claim("carol"))
        for n in range(100, 200):
            a.publish(events.Said("alice", str(n)))
        own_redis.start()
        # (A lease may run out meanwhile: then alice leaves and joins again.)
        await on_b.until(200, seconds=20, kind=events.Said)
        assert on_b.texts() == [str(n) for n in range(200)]
        await within(defer.ensureDeferred(_until_available(b)), 20)
        assert await within(b.presence.holds("alice")) is True
        assert await within(b.presence.claim("carol")) is None
        assert on_b.texts() == [str(n) for n in range(200)]
    finally:
        await stopped(a, b)


async def _until_available(bus):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    while not (bus.available() and bus.presence._registered):
        await deferLater(reactor, 0.05, lambda: None)


# A node cut off from the others refuses new members in each front's words.


class CutOff(LocalPresence):
    def claim(self, nick):
        return defer.fail(errors.ChatUnavailable())


def test_a_cut_off_node_refuses_joins_in_each_fronts_words(service, clock):
    from mailsvc.fronts.chat import ChatFactory
    from mailsvc.fronts.irc import IRCFactory
    from wire import Wire

    service.room.presence = CutOff()
    chat = Wire(ChatFactory(service, clock=clock))
    assert chat.replies() == ["HELLO"]
    assert chat("NICK alice") == [
        "RETRY the chat is unavailable on this server for now: try again shortly"
    ]
    irc = Wire(IRCFactory(service, clock=clock))
    irc("NICK bob")
    assert irc("USER bob 0 * :Bob") == [
        ":mailsvc 263 * NICK :the chat is unavailable on this server for now: try again shortly"
    ]


def test_a_member_is_not_told_that_it_left():
    # As when another node reaped this one's lease while it was cut off.
    room = ChatRoom()
    alice, bob = Participant(), Participant()
    fired(room.join(alice, "alice"))
    fired(room.join(bob, "bob"))
    alice.take()
    room.bus.publish(events.Left("alice"))
    assert alice.take() == [] and bob.take() == ["* alice left"]
