"""
Work a stranger can ask for is bounded (issue 16, findings 4, 5, 6 and 8):
each mechanism on its own, inline service, StringTransport and task.Clock.
"""

import time
import tracemalloc

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from conftest import fired
from mailsvc import errors
from mailsvc.core.auth import PasswordChecker
from mailsvc.core.names import fold
from mailsvc.core.throttle import Throttle, TokenBuckets


# 8. Name folding, and names validated before anything is keyed on them


def test_folding_is_ascii_only():
    assert fold("KaTe") == "kate"
    assert fold("\u212aate") == "\u212aate"  # KELVIN SIGN stays itself
    assert fold("\u0130stanbul") == "\u0130stanbul"


def test_kelvin_sign_does_not_lock_out_kate(service, logged_errors):
    fired(service.register("kate", "secret"))
    for _ in range(10):
        failure = fired(service.login("\u212aate", "wrong", "10.0.0.%d" % (_,)))
        assert failure.check(errors.BadCredentials)
    # kate's own name was never keyed on: she logs in at once.
    assert isinstance(fired(service.login("kate", "secret", "10.0.1.1")), str)


def test_an_invalid_name_is_logged_as_such(service):
    from twisted.logger import globalLogPublisher, formatEvent

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        fired(service.login("\u212aate", "wrong", "10.0.0.9"))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    said = [formatEvent(e) for e in seen if "failed login" in (formatEvent(e) or "")]
    assert said == ["failed login for an invalid name from 10.0.0.9"]


def test_an_invalid_name_counts_against_the_address_only(service):
    checker = service.portal.checkers[next(iter(service.portal.checkers))]
    for _ in range(3):
        fired(service.login("x" * 8192, "wrong", "10.0.0.7"))
    assert len(checker.name_throttle._records) == 0
    assert checker.peer_throttle._records["10.0.0.7"].failures == 3


class InstantPasswords:
    """Verification that costs nothing: the throttle is what is measured."""

    def verify(self, password_hash, password):
        return defer.succeed(False)


class NoStorage:
    def account(self, name):
        return defer.succeed(None)


def test_failed_long_names_hold_no_memory(clock):
    checker = PasswordChecker(NoStorage(), InstantPasswords(), clock)
    from mailsvc.core.auth import Credentials

    def fail(name, peer):
        failure = fired(checker.requestAvatarId(Credentials(name, "x", peer)))
        assert failure.check(errors.BadCredentials, errors.TooManyFailures)

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(5000):
            # 8 KB names, from as many addresses as there are names.
            fail("%d" % (i,) + "n" * 8192, "10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255))
            clock.advance(0.01)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # Kept, the names alone would be 41 MB; the address records are ~1 MB.
    assert grown < 4_000_000, grown
    assert len(checker.name_throttle._records) == 0


def test_throttle_forgets_old_records_from_the_front(clock):
    throttle = Throttle(clock, free=3, forget_after=900.0, capacity=1000)
    for i in range(500):
        throttle.begin("k%d" % (i,))
        throttle.end("k%d" % (i,), False)
    clock.advance(901)
    throttle.begin("new")
    throttle.end("new", False)
    # Every record older than forget_after went, on the way.
    assert list(throttle._records) == ["new"]


def test_throttle_eviction_is_cheap_at_capacity():
    clock = Clock()
    throttle = Throttle(clock, free=3, capacity=20_000)
    for i in range(20_000):
        throttle.begin(i)
        throttle.end(i, False)
    # Full, every record recent: each new failure evicts the oldest, not a scan.
    started = time.perf_counter()
    for i in range(20_000, 25_000):
        throttle.begin(i)
        throttle.end(i, False)
    per_failure = (time.perf_counter() - started) / 5000
    assert len(throttle._records) == 20_000
    assert 0 not in throttle._records and 24_999 in throttle._records
    # A scan of 20,000 records costs milliseconds; a pop from the front, microseconds.
    assert per_failure < 0.0005, per_failure


def test_a_failure_moves_a_record_to_the_back(clock):
    throttle = Throttle(clock, free=3, capacity=2)
    throttle.begin("a")
    throttle.end("a", False)
    throttle.begin("b")
    throttle.end("b", False)
    throttle.begin("a")
    throttle.end("a", False)  # a failed last: b is the oldest
    throttle.begin("c")
    throttle.end("c", False)
    assert list(throttle._records) == ["a", "c"]


# 4. DUMP without a login


class CountingStore:
    """A store whose summaries are counted, and fire when told."""

    def __init__(self, store):
        self._store = store
        self.summaries = []

    def summary(self):
        d = defer.Deferred()
        self.summaries.append(d)
        return d

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_dump_summary_is_computed_at_most_once_a_second(service, clock, wire_for):
    store = service.storage = CountingStore(service.storage)
    wire = wire_for(service, clock)
    for _ in range(50):
        wire("DUMP")
    # One summary in progress, shared by all 50.
    assert len(store.summaries) == 1
    store.summaries[0].callback(fired(store._store.summary()))
    assert wire.replies() == ["OK"] * 50
    clock.advance(0.5)
    assert wire("DUMP") == ["OK"]  # the last one, still fresh
    assert len(store.summaries) == 1
    clock.advance(0.5)
    wire("DUMP")
    assert len(store.summaries) == 2


def test_a_failed_dump_summary_is_not_kept(service, clock, wire_for, logged_errors):
    store = service.storage = CountingStore(service.storage)
    wire = wire_for(service, clock)
    wire("DUMP")
    store.summaries[0].errback(errors.StorageUnavailable())
    assert wire.replies() == ["OK"]
    wire("DUMP")
    assert len(store.summaries) == 2


def test_dump_summary_reads_the_mailbox_counts(service):
    fired(service.register("alice", "secret"))
    fired(service.register("bob", "secret"))
    for i in range(3):
        fired(service.deliver("alice", "bob", "s%d" % (i,), "body"))
    fired(service.deliver("bob", "alice", "hello", "\u2603"))
    fired(service.storage.delete("bob"))
    summary = fired(service.storage.summary())
    assert (summary["messages"], summary["mailboxes"], summary["largest_mailbox"]) == (3, 1, 3)
    assert summary["message_chars"] == 3 * len("s0body")


@pytest.fixture
def wire_for():
    from mailsvc.fronts.mail import MailFactory
    from wire import Wire

    def make(service, clock):
        return Wire(MailFactory(service, clock=clock))

    return make


# 5. Deliveries limited per sender; new-mail notices coalesced


def test_token_buckets(clock):
    buckets = TokenBuckets(clock, rate=1.0, burst=3)
    assert [buckets.take("bob") for _ in range(4)] == [True, True, True, False]
    assert buckets.wait("bob") == pytest.approx(1.0)
    assert buckets.take("alice")  # each key its own bucket
    clock.advance(1)
    assert buckets.take("bob") and not buckets.take("bob")
    clock.advance(10)
    buckets.take("carol")
    # Refilled buckets are the same as none: forgotten on the way.
    assert list(buckets._buckets) == ["carol"]


def test_token_buckets_bounded_in_memory(clock):
    buckets = TokenBuckets(clock, rate=0.001, burst=2, capacity=100)
    for i in range(1000):
        buckets.take(i)
    assert len(buckets) == 100


@pytest.fixture
def limited(clock):
    from mailsvc.core.passwords import Passwords
    from mailsvc.core.service import SharedService
    from mailsvc.store.sqlite import SQLiteStorage

    service = SharedService(
        SQLiteStorage.inline(),
        Passwords.inline(),
        clock,
        sends=TokenBuckets(clock, rate=1.0, burst=3),
        registrations=TokenBuckets(clock, rate=2 / 3600.0, burst=2),
    )
    service.startService()
    yield service
    service.stopService()


def test_every_front_that_delivers_shares_the_sender_s_bucket(limited, clock, wire_for):
    from mailsvc.fronts.chat import ChatFactory
    from wire import Wire

    fired(limited.register("alice", "pw"))
    fired(limited.register("bob", "pw"))
    mail = wire_for(limited, clock)
    assert mail("LOGIN bob pw")[0].startswith("OK ")
    assert mail("SEND alice one") == [] and mail(".") == ["OK 1"]
    assert mail("MESSAGE two") == ["OK"]
    assert mail("STORE alice") == ["OK"]
    chat = Wire(ChatFactory(limited, clock=clock))
    chat("NICK bob pw")
    assert chat("/msg alice three") == ["* alice is not here: your message is in their mailbox"]
    # Three at once was bob's burst: the fourth, on any front, is refused.
    assert chat("/msg alice four") == [
        "* error: too many messages sent: try again in 1 second"
    ]
    assert mail("MESSAGE five") == ["OK"]
    assert mail("STORE alice") == ["KO too many messages sent: try again in 1 second"]
    mail("SEND alice six")
    assert mail(".") == ["KO too many messages sent: try again in 1 second"]
    # Anyone else may still send; bob again after a second.
    fired(limited.deliver("bob", "alice", "hi", "body"))
    clock.advance(1)
    mail("SEND alice seven")
    assert mail(".")[0].startswith("OK ")


def test_new_mail_notices_are_coalesced(service, clock):
    from mailsvc.fronts.chat import ChatFactory
    from wire import Wire

    fired(service.register("alice", "pw"))
    chat = Wire(ChatFactory(service, clock=clock))
    chat.replies()
    assert chat("NICK alice pw") == ["READY"]
    for i in range(37):
        fired(service.deliver("alice", "bob", "Subject %d" % (i,), "body"))
    # The first at once, the others held for the window.
    assert chat.replies() == ["* new mail from bob: Subject 0"]
    clock.advance(0.99)
    assert chat.replies() == []
    clock.advance(0.01)
    assert chat.replies() == ["* 36 new mails, latest from bob: Subject 36"]
    # Mail still coming: one line a window.
    fired(service.deliver("alice", "carol", "again", "body"))
    assert chat.replies() == []
    clock.advance(1)
    assert chat.replies() == ["* new mail from carol: again"]
    # A quiet window closes it: the next notice goes at once.
    clock.advance(1)
    fired(service.deliver("alice", "bob", "later", "body"))
    assert chat.replies() == ["* new mail from bob: later"]


def test_mail_cannot_flood_the_recipient_out_of_the_chat(service, clock):
    """1,500 mails with 8 KB subjects: a few notices, never SendQ exceeded."""
    from mailsvc.fronts.chat import ChatFactory
    from wire import Wire

    fired(service.register("alice", "pw"))
    factory = ChatFactory(service, clock=clock, max_sendq=64 * 1024)
    chat = Wire(factory)
    chat.replies()
    chat("NICK alice pw")
    subject = "s" * 8000
    sent = 0
    for second in range(3):
        for i in range(500):
            fired(service.deliver("alice", "bob", subject, "x"))
        clock.advance(1)
        sent += len(chat.transport.value())
        chat.transport.clear()
    assert chat.protocol.transport.disconnecting is False
    assert sent < 5 * 8100, sent


# 6. Registration limited per address; hashing shared fairly; the disk guard


def test_register_is_limited_per_address(limited, clock, wire_for):
    from wire import Wire
    from mailsvc.fronts.mail import MailFactory

    factory = MailFactory(limited, clock=clock)
    one = Wire(factory, host="10.0.0.1")
    assert one("REGISTER a1 pw")[0].startswith("OK ")
    assert one("REGISTER a2 pw")[0].startswith("OK ")
    assert one("REGISTER a3 pw") == [
        "KO too many new accounts from your address: try again in 30 minutes"
    ]
    # Another address is not concerned; this one gets one back in half an hour.
    assert Wire(factory, host="10.0.0.2")("REGISTER b1 pw")[0].startswith("OK ")
    clock.advance(1800)
    assert one("REGISTER a3 pw")[0].startswith("OK ")


def test_registrations_never_take_every_password_thread():
    from mailsvc.core.passwords import Passwords, cheap_hasher

    pending = []

    def hold(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    passwords = Passwords(hold, cheap_hasher(), hash_slots=1)
    hashes = [passwords.hash("pw%d" % (i,)) for i in range(50)]
    verify = passwords.verify(None, "x")
    # 50 registrations waiting: one of them in the pool, and the login beside it.
    assert [f.__name__ for _, f, _ in pending] == ["hash", "_verify"]
    while pending:
        d, f, args = pending.pop(0)
        d.callback(f(*args))
    assert all(d.called for d in hashes) and fired(verify) is False


class FakeStat:
    def __init__(self, free):
        self.f_bavail, self.f_frsize = free, 1


def test_disk_guard_refuses_accounts_and_deliveries_but_not_deletes(service, clock, wire_for):
    from mailsvc.core.disk import DiskGuard

    fired(service.register("alice", "pw"))
    free = [10**9]
    measured = []

    def statvfs(path):
        measured.append(path)
        return FakeStat(free[0])

    service.disk = DiskGuard("/db", 100 * 1024 * 1024, clock, statvfs=statvfs)
    wire = wire_for(service, clock)
    assert wire("LOGIN alice pw")[0].startswith("OK ")
    wire("SEND alice hi")
    assert wire(".") == ["OK 1"]
    free[0] = 50 * 1024 * 1024
    wire("SEND alice again")
    assert wire(".") == ["OK 2"]  # measured less than a second ago
    clock.advance(1)
    full = "KO the server is short of disk space: try again later (deleting messages still works)"
    wire("SEND alice refused")
    assert wire(".") == [full]
    assert wire("REGISTER bob pw") == [full]
    assert wire("MESSAGE staged") == [full]
    assert wire("DELETE 1") == ["OK deleted 1"]
    assert wire("DELETE SUBJECT again") == ["OK deleted 1"]
    assert measured == ["/db", "/db"]
    free[0] = 10**9
    clock.advance(1)
    assert wire("REGISTER bob pw")[0].startswith("OK ")
