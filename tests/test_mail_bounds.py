"""
What one mail connection may cost, whatever its client sends (issue 16,
findings 1 and 2), over StringTransport with a synchronous service: memory
measured with tracemalloc while the garbage collector is off, so that only
what reference counting frees counts as freed.
"""

import contextlib
import gc
import platform
import tracemalloc
import weakref

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

from conftest import fired
from mailsvc import errors
from mailsvc.core.names import MAX_SUBJECT
from mailsvc.fronts.mail import MailFactory
from wire import Wire

KiB = 1024
MiB = 1024 * KiB

# What is freed by reference counting alone, and tracemalloc: CPython's.
refcounting = pytest.mark.skipif(
    platform.python_implementation() != "CPython",
    reason="measures CPython's reference counting with tracemalloc",
)


@contextlib.contextmanager
def traced():
    """
    Trace allocations while the block runs, with the cyclic garbage collector
    off; yield a dict whose C{"grown"} is, after the block, how many bytes
    allocated in it are still alive.
    """
    gc.collect()
    gc.disable()
    tracemalloc.start()
    result = {}
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield result
        result["grown"] = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()


def login(wire, name="alice", password="s3cret"):
    [reply] = wire("REGISTER %s %s" % (name, password))
    assert reply.startswith("OK ")
    return reply[3:]


def feed_body(wire, size, line=b"x\n", chunk=64 * KiB):
    """Send C{size} bytes of body lines as a socket would: a chunk at a time."""
    data = line * (chunk // len(line))
    for _ in range(size // len(data)):
        wire.protocol.dataReceived(data)


def lose(wire):
    wire.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def factory(service, clock):
    return MailFactory(service, clock=clock, max_body=4 * MiB)


# Finding 1: an unfinished SEND body


@refcounting
def test_a_body_costs_about_its_size(factory):
    wire = Wire(factory)
    login(wire)
    wire("SEND alice lines")
    with traced() as memory:
        feed_body(wire, 512 * KiB)
    # One string per 1-byte line cost ~24 times the body (12 MiB here).
    assert memory["grown"] < 1 * MiB, memory
    [reply] = wire(".")
    assert reply.startswith("OK ")
    message = wire("READ " + reply[3:])
    assert message[-2:] == ["x", "."] and message.count("x") == 512 * KiB // 2


def test_a_body_keeps_its_empty_lines_and_dots(factory):
    wire = Wire(factory)
    login(wire)
    wire.feed("SEND alice s\r\n\r\n..dot\r\nend\r\n\r\n")
    [reply] = wire(".")
    assert wire("READ " + reply[3:])[-5:] == ["", "..dot", "end", "", "."]


@refcounting
def test_a_body_without_a_session_is_read_but_not_kept(factory):
    wire = Wire(factory)
    wire("SEND alice lines")
    with traced() as memory:
        feed_body(wire, 512 * KiB)
    assert memory["grown"] < 64 * KiB, memory
    assert wire(".") == ["KO you should log in first"]
    # Still counted: past --max-body it is refused as before.
    wire("SEND alice lines")
    feed_body(wire, 5 * MiB)
    assert wire(".") == ["KO message too large: at most 4194304 bytes"]
    # And its lines never ran as commands.
    assert wire("HELP")[0] == "OK commands"


def test_a_body_with_a_cookie_on_its_send_line_is_kept(factory):
    cookie = login(Wire(factory))
    wire = Wire(factory)
    wire("SEND alice s " + cookie)
    wire("hello")
    [reply] = wire(".")
    assert reply.startswith("OK ")
    assert wire("READ %s %s" % (reply[3:], cookie))[-2:] == ["hello", "."]


@refcounting
@pytest.mark.parametrize("logged_in", [False, True])
def test_a_closed_connection_frees_its_body_without_a_collection(factory, clock, logged_in):
    with traced() as memory:
        wire = Wire(factory)
        if logged_in:
            login(wire)
        wire("SEND alice unfinished")
        feed_body(wire, 512 * KiB)
        protocol = weakref.ref(wire.protocol)
        lose(wire)
        clock.advance(0)
        del wire
        # No cycle keeps it (it and its OutputBuffer referred to each other).
        assert protocol() is None
    assert memory["grown"] < 64 * KiB, memory


@refcounting
def test_a_closed_connection_waiting_for_its_reply_is_freed_once_answered(service, clock):
    # A reply still pending holds the protocol until it comes, then lets go.
    factory = MailFactory(service, clock=clock)
    wire = Wire(factory)
    login(wire)
    pending = defer.Deferred()
    service.storage.extent = lambda *args: pending
    wire.feed("LIST\r\n")
    protocol = weakref.ref(wire.protocol)
    lose(wire)
    del wire
    gc.disable()
    try:
        assert protocol() is not None
        pending.callback((0, None))
        assert protocol() is None
    finally:
        gc.enable()


def test_subjects_are_at_most_998_characters(factory):
    wire = Wire(factory)
    login(wire)
    wire("SEND alice " + "s" * (MAX_SUBJECT + 1))
    wire("body")
    assert wire(".") == ["KO subject too long: at most 998 characters"]
    wire("SEND alice " + "s" * MAX_SUBJECT)
    wire("body")
    [reply] = wire(".")
    assert reply.startswith("OK ")
    assert wire("LIST")[1].endswith(" " + "s" * MAX_SUBJECT)
    # A stranger is told to log in first, as before.
    stranger = Wire(factory)
    stranger("SEND alice " + "s" * (MAX_SUBJECT + 1))
    assert stranger(".") == ["KO you should log in first"]


def test_a_long_subject_is_refused_by_the_service_for_every_front(service):
    failure = fired(service.deliver("alice", "bob", "s" * (MAX_SUBJECT + 1), "b"))
    assert failure.check(errors.SubjectTooLong)


# Finding 2: LIST of a full mailbox


class TightTransport(StringTransport):
    """
    A transport whose client does not read: past C{limit} bytes written it
    pauses its producer, as Twisted's does past its buffer size, until
    L{drain} reads what it holds.
    """

    def __init__(self, limit=64 * KiB):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
        self.limit = limit
        self.paused = False

    def write(self, data):
        super().write(data)
        if not self.paused and self.producer is not None and len(self.io.getvalue()) > self.limit:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self):
        data = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()
        return data


def tight_connection(factory, limit=64 * KiB):
    transport = TightTransport(limit)
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport


def fill(service, account, count, subject_size=100, sender="bob"):
    storage = service.storage
    for i in range(count):
        storage.deliver(account, sender, "%06d" % i + "s" * (subject_size - 6), "body", 1.0)


def count_calls(storage, name):
    calls = []
    original = getattr(storage, name)

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(storage, name, counting)
    return calls


def test_list_reads_storage_a_page_at_a_time(service, factory):
    wire = Wire(factory)
    login(wire)
    fill(service, "alice", 450, sender="bob")
    fill(service, "alice", 3, sender="Carol")
    pages = count_calls(service.storage, "headers")
    reply = wire("LIST")
    assert reply[0] == "OK 453 messages" and reply[-1] == "."
    assert [line.split()[1] for line in reply[1:-1]] == ["bob"] * 450 + ["Carol"] * 3
    ids = [int(line.split()[0]) for line in reply[1:-1]]
    assert ids == sorted(ids) and len(set(ids)) == 453
    assert [kwargs["limit"] for _, kwargs in pages] == [200, 200, 200]
    assert wire("LIST FROM carol")[0] == "OK 3 messages"
    assert wire("LIST FROM dave") == ["OK 0 messages", "."]


def test_list_waits_while_the_output_is_full_and_keeps_replies_in_order(service, factory):
    login(Wire(factory))
    fill(service, "alice", 1000, subject_size=900)
    protocol, transport = tight_connection(factory)
    pages = count_calls(service.storage, "headers")
    protocol.dataReceived(b"LOGIN alice s3cret\r\nLIST\r\nCOUNT\r\n")
    factory.clock.advance(0)
    # One page went out and filled the output: no further page is read,
    # and the COUNT after it waits.
    assert transport.paused and len(pages) == 1
    received = transport.drain()
    while transport.paused or not received.endswith(b"COUNTED 1000\r\n"):
        factory.clock.advance(0)
        assert len(pages) <= 6, "pages read while the output was full"
        received += transport.drain()
    lines = received.decode().split("\r\n")
    assert lines[1] == "OK 1000 messages"
    assert lines[-3:] == [".", "COUNTED 1000", ""]
    assert len(lines) == 1 + 1 + 1000 + 1 + 1 + 1
    assert len(pages) == 5


def test_a_message_deleted_or_delivered_while_list_streams(service, factory):
    cookie = login(Wire(factory))
    fill(service, "alice", 450, subject_size=900)
    ids = [m.id for m in fired(service.storage.headers("alice"))]
    protocol, transport = tight_connection(factory)
    protocol.dataReceived(("LIST %s\r\n" % cookie).encode())
    factory.clock.advance(0)
    assert transport.paused
    # While it waits: one message not listed yet is deleted, one arrives.
    fired(service.storage.delete("alice", ids[300]))
    fired(service.storage.deliver("alice", "bob", "late", "body", 2.0))
    received = transport.drain()
    while not received.endswith(b"\r\n.\r\n"):
        factory.clock.advance(0)
        received += transport.drain()
    lines = received.decode().split("\r\n")[:-1]
    # The count is of the mailbox as LIST began; the deleted message is left
    # out, the new one is not listed: the lines never outnumber the count.
    assert lines[0] == "OK 450 messages"
    listed = [int(line.split()[0]) for line in lines[1:-1]]
    assert listed == ids[:300] + ids[301:]


@refcounting
def test_list_to_connections_that_do_not_read_costs_a_page_each(service, factory, clock):
    login(Wire(factory))
    fill(service, "alice", 3000, subject_size=MAX_SUBJECT)
    connections = []
    with traced() as memory:
        for _ in range(5):
            protocol, transport = tight_connection(factory)
            protocol.dataReceived(b"LOGIN alice s3cret\r\nLIST\r\n")
            clock.advance(0)
            assert transport.paused
            connections.append((protocol, transport))
    # The whole listing held per connection cost ~15 MiB each (3 MB of
    # subjects); now a page and the transport's buffer.
    assert memory["grown"] < 5 * MiB, memory
    for protocol, _ in connections:
        protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    # The well-behaved client still gets the whole list.
    wire = Wire(factory)
    login(wire, "bob")
    assert wire("LIST") == ["OK 0 messages", "."]


@refcounting
def test_a_connection_lost_while_list_waits_stops_reading_pages(service, factory, clock):
    login(Wire(factory))
    fill(service, "alice", 1000, subject_size=900)
    protocol, transport = tight_connection(factory)
    pages = count_calls(service.storage, "headers")
    protocol.dataReceived(b"LOGIN alice s3cret\r\nLIST\r\n")
    clock.advance(0)
    assert len(pages) == 1
    ref = weakref.ref(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    assert len(pages) == 1
    del protocol, transport
    gc.disable()
    try:
        assert ref() is None
    finally:
        gc.enable()


def test_a_storage_failure_in_the_middle_of_a_list_cuts_it_short(
    service, factory, clock, logged_errors
):
    login(Wire(factory))
    fill(service, "alice", 450)
    wire = Wire(factory)
    login(wire, "bob")
    wire("LOGIN alice s3cret")
    original = service.storage.headers
    service.storage.headers = lambda *a, **kw: (
        original(*a, **kw) if kw.get("after") is None else defer.fail(errors.StorageUnavailable())
    )
    lines = wire("LIST")
    # The reply was under way: it cannot end in a KO, so the connection closes.
    assert lines[0] == "OK 450 messages" and len(lines) == 201 and "." not in lines
    assert wire.transport.disconnecting
