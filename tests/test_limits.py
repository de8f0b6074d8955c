"""Every limit answered clearly: unit tests with StringTransport and Clock."""

import pytest

from conftest import fired, inline_service
from mailsvc.fronts.chat import ChatFactory
from mailsvc.fronts.mail import MailFactory
from mailsvc.core.passwords import Passwords
from mailsvc.core.service import SharedService
from mailsvc.store import Quotas
from mailsvc.store.sqlite import SQLiteStorage
from wire import Wire


def limited_service(clock, **quotas):
    service = SharedService(
        SQLiteStorage.inline(quotas=Quotas(**quotas)), Passwords.inline(), clock,
        session_ttl=600,
    )
    service.startService()
    return service


def login(wire, name, password="pw"):
    [reply] = wire("REGISTER %s %s" % (name, password))
    assert reply.startswith("OK ")
    return reply.split()[1]


def test_line_limit_is_configurable(service, clock):
    wire = Wire(MailFactory(service, clock=clock, line_limit=20))
    assert wire("HELP" + " " * 20) == ["KO line too long: at most 20 bytes"]
    assert wire("HELP")[0] == "OK commands"


def test_mailbox_quota_in_messages_and_bytes(clock):
    service = limited_service(clock, messages=2, bytes=100)
    wire = Wire(MailFactory(service, clock=clock))
    login(wire, "bob")
    assert wire.feed("SEND bob one\n1\n.\n") == ["OK 1"]
    assert wire.feed("SEND bob big\n" + "x" * 100 + "\n.\n") == [
        "KO mailbox of bob is full: at most 100 bytes"
    ]
    assert wire.feed("SEND bob two\n2\n.\n") == ["OK 2"]
    assert wire.feed("SEND bob three\n3\n.\n") == [
        "KO mailbox of bob is full: at most 2 messages"
    ]
    wire("MESSAGE staged")
    assert wire("STORE bob") == ["KO mailbox of bob is full: at most 2 messages"]
    # Room again once a message is deleted; the staged text was kept.
    assert wire("DELMSG") == ["OK"]
    assert wire("STORE bob") == ["OK"]
    service.stopService()


def test_staged_messages_per_session(clock):
    service = limited_service(clock, staged=2)
    wire = Wire(MailFactory(service, clock=clock))
    login(wire, "bob")
    assert wire("MESSAGE one") == ["OK"]
    assert wire("MESSAGE two") == ["OK"]
    assert wire("MESSAGE three") == [
        "KO too many staged messages: at most 2, STORE some first"
    ]
    assert wire("STORE bob") == ["OK"]
    assert wire("MESSAGE three") == ["OK"]
    service.stopService()


def test_connections_in_all_and_per_address(service, clock):
    factory = MailFactory(service, clock=clock, max_connections=3, max_per_peer=2)
    first = Wire(factory)
    Wire(factory)
    crowded = Wire(factory)
    assert crowded.replies() == ["KO too many connections from your address"]
    assert crowded.transport.disconnecting
    assert crowded.feed("HELP\n") == []  # a refused connection runs nothing
    other = Wire(factory, host="127.0.0.2")
    assert other("HELP")[0] == "OK commands"
    full = Wire(factory, host="127.0.0.3")
    assert full.replies() == ["KO too many connections"]
    # A place is free again once a connection closes.
    first.protocol.connectionLost(None)
    assert Wire(factory, host="127.0.0.3")("HELP")[0] == "OK commands"
    # Closing a refused connection frees nothing it never had.
    crowded.protocol.connectionLost(None)
    assert Wire(factory, host="127.0.0.4").replies() == ["KO too many connections"]


def test_chat_refuses_with_a_notice(service, clock):
    factory = ChatFactory(service, clock=clock, max_per_peer=1)
    assert Wire(factory).replies() == ["HELLO"]
    assert Wire(factory).replies() == ["* error: too many connections from your address"]


def test_mail_idle_timeout(service, clock):
    wire = Wire(MailFactory(service, clock=clock, idle_timeout=300))
    clock.advance(299)
    assert wire("HELP")[0] == "OK commands"  # activity resets the timer
    clock.advance(299)
    assert not wire.transport.disconnecting
    clock.advance(1)
    assert wire.replies() == ["KO idle timeout"]
    assert wire.transport.disconnecting
    wire.protocol.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_chat_nick_timeout_then_a_generous_one(service, clock):
    factory = ChatFactory(service, clock=clock, nick_timeout=30, idle_timeout=3600)
    silent = Wire(factory)
    clock.advance(30)
    assert silent.replies() == ["HELLO", "* error: idle timeout"]
    assert silent.transport.disconnecting
    # A deadline: lines that are not a good NICK do not put it off.
    stalling = Wire(factory)
    stalling.replies()
    for _ in range(3):
        clock.advance(9)
        assert stalling("hello?") == ["RETRY send NICK <name> first"]
    clock.advance(3)
    assert stalling.replies() == ["* error: idle timeout"]
    ready = Wire(factory)
    ready.replies()
    clock.advance(29)
    assert ready("NICK alice") == ["READY"]
    clock.advance(3599)
    assert not ready.transport.disconnecting
    clock.advance(1)
    assert ready.replies() == ["* error: idle timeout"]
    assert ready.transport.disconnecting


def test_chat_flood_control(service, clock):
    factory = ChatFactory(service, clock=clock, flood_rate=5, flood_burst=10)
    talker, listener = Wire(factory), Wire(factory)
    talker.replies()
    talker("NICK talker")
    listener.replies()
    listener("NICK listener")
    talker.replies()
    # Typing speed, for a long time: never affected.
    for i in range(100):
        assert talker("line %d" % i) == []
        clock.advance(0.5)
    assert len(listener.replies()) == 100
    # A burst: the first 10 pass, the next is refused with one warning...
    replies = [talker("burst %d" % i) for i in range(11)]
    assert replies[:10] == [[]] * 10
    assert replies[10] == [
        "* error: you are sending too fast; slow down (at most 5 lines a second)"
    ]
    assert len(listener.replies()) == 10
    # ...a line within the rate is fine again...
    clock.advance(0.2)
    assert talker("calm") == [] and listener.replies() == ["talker: calm"]
    # ...and a client that keeps flooding is disconnected.
    replies = [line for i in range(22) for line in talker("flood %d" % i)]
    assert talker.transport.disconnecting
    assert replies == [
        "* error: you are sending too fast; slow down (at most 5 lines a second)",
        "* error: flooding: disconnected",
    ]
    assert listener.replies() == []


def test_failed_logins_are_throttled_by_name(service, clock, mail_factory):
    login(Wire(mail_factory), "alice", "right")
    wire = Wire(mail_factory)
    for _ in range(3):
        assert wire("LOGIN alice wrong") == ["KO wrong user name or password"]
    # Locked out: even the right password is not checked now.
    assert wire("LOGIN alice right") == [
        "KO too many failed attempts: try again in 1 second"
    ]
    assert wire("LOGIN ALICE right")[0].startswith("KO too many failed attempts")
    clock.advance(1)
    assert wire("LOGIN alice wrong") == ["KO wrong user name or password"]
    assert wire("LOGIN alice right") == [
        "KO too many failed attempts: try again in 2 seconds"
    ]
    clock.advance(2)
    assert wire("LOGIN alice right")[0].startswith("OK ")
    # Success starts the count again.
    assert wire("LOGIN alice wrong") == ["KO wrong user name or password"]
    assert wire("LOGIN alice right")[0].startswith("OK ")


def test_failed_logins_are_throttled_by_address(service, clock, mail_factory):
    wire = Wire(mail_factory)
    for i in range(10):
        assert wire("LOGIN user%d guess" % i) == ["KO wrong user name or password"]
    assert wire("LOGIN user99 guess")[0].startswith("KO too many failed attempts")
    # Another address is not affected.
    assert Wire(mail_factory, host="10.0.0.9")("LOGIN user99 guess") == [
        "KO wrong user name or password"
    ]


def test_reserved_nick_passwords_are_throttled_too(service, clock):
    service.register("alice", "right")
    factory = ChatFactory(service, clock=clock)
    wire = Wire(factory)
    wire.replies()
    for _ in range(3):
        assert wire("NICK alice wrong") == ["RETRY wrong password for that nickname"]
    assert wire("NICK alice right")[0].startswith("RETRY too many failed attempts")


def test_failed_logins_are_logged_without_passwords(service, mail_factory):
    from twisted.logger import formatEvent, globalLogPublisher

    login(Wire(mail_factory), "alice", "right")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        wire = Wire(mail_factory)
        wire("LOGIN alice hunter2")
        wire("LOGIN hunter3 hunter4")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(formatEvent(e) or "" for e in events)
    assert "failed login for account alice from 127.0.0.1" in text
    assert "failed login for an unknown name from 127.0.0.1" in text
    assert "hunter" not in text


def test_sessions_expire_when_unused(clock):
    service = limited_service(clock)
    wire = Wire(MailFactory(service, clock=clock))
    cookie = login(wire, "bob")
    clock.advance(599)
    assert wire("COUNT") == ["COUNTED 0"]  # use keeps it alive
    clock.advance(599)
    assert wire("COUNT") == ["COUNTED 0"]
    clock.advance(601)
    assert wire("COUNT") == ["KO session expired: log in again"]
    assert wire("COUNT " + cookie) == ["KO unknown or expired session"]
    service.stopService()


def test_expired_sessions_are_removed_from_storage(tmp_path, clock):
    path = str(tmp_path / "mail.sqlite")
    service = SharedService(
        SQLiteStorage.inline(path), Passwords.inline(), clock, session_ttl=600
    )
    service.startService()
    cookie = service.register("bob", "pw").result
    clock.advance(60)  # the periodic sweep, after the touch lag
    clock.advance(600)
    clock.advance(60)
    service.stopService()
    # After a restart the cookie is unknown: it was swept from the database.
    again = inline_service(clock, path)
    assert service.storage is not again.storage
    failure = again.count(cookie)
    assert failure.result.check(Exception) and "unknown" in failure.result.getErrorMessage()
    failure.addErrback(lambda f: None)
    again.stopService()


@pytest.mark.parametrize("option", ["max-line", "idle-timeout", "quota-messages", "flood-rate"])
def test_limits_must_be_positive(option):
    from twisted.python import usage

    from mailsvc.tap import Options

    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--" + option, "0"])


class HeldPasswords:
    """Passwords whose checks wait until release()."""

    def __init__(self):
        from mailsvc.core.passwords import Passwords

        self.pending = []
        self.passwords = Passwords(self._hold)

    def _hold(self, f, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.pending.append((d, f, args))
        return d

    def release(self):
        pending, self.pending = self.pending, []
        for d, f, args in pending:
            d.callback(f(*args))


def test_guesses_sent_at_once_meet_the_limit(clock):
    """Once a name has failed, attempts being checked count: a burst cannot
    outrun the throttle."""
    held = HeldPasswords()
    service = SharedService(SQLiteStorage.inline(), held.passwords, clock)
    service.startService()
    wires = [Wire(MailFactory(service, clock=clock)) for _ in range(6)]
    wires[0]("LOGIN alice guess")
    held.release()
    assert wires[0].replies() == ["KO wrong user name or password"]
    replies = [line for wire in wires[1:] for line in wire("LOGIN alice guess")]
    assert len(held.pending) == 2  # 1 failure + 2 being checked = the 3 free
    assert replies == ["KO too many attempts at once: try again later"] * 3
    held.release()
    replies = [line for wire in wires[1:] for line in wire.replies()]
    assert replies == ["KO wrong user name or password"] * 2
    assert wires[0]("LOGIN alice guess")[0].startswith("KO too many failed attempts")
    service.stopService()


def test_a_first_burst_of_guesses_at_one_name_meets_the_limit_too(clock):
    held = HeldPasswords()
    service = SharedService(SQLiteStorage.inline(), held.passwords, clock)
    service.startService()
    wires = [Wire(MailFactory(service, clock=clock), host="10.0.0.%d" % i) for i in range(6)]
    replies = [line for wire in wires for line in wire("LOGIN alice guess")]
    assert len(held.pending) == 3
    assert replies == ["KO too many attempts at once: try again later"] * 3
    held.release()
    service.stopService()


def test_many_good_logins_at_once_from_one_address(clock):
    held = HeldPasswords()
    service = SharedService(SQLiteStorage.inline(), held.passwords, clock)
    service.startService()
    registered = [service.register("user%d" % i, "pw") for i in range(12)]
    # New hashes go one at a time (registration never takes every thread).
    while held.pending:
        held.release()
    assert all(d.called for d in registered)
    wires = [Wire(MailFactory(service, clock=clock)) for _ in range(12)]
    for i, wire in enumerate(wires):
        assert wire("LOGIN user%d pw" % i) == []
    assert len(held.pending) == 12
    held.release()
    assert all(wire.replies()[0].startswith("OK ") for wire in wires)
    service.stopService()


def test_an_address_is_forgiven_its_old_failures(service, clock, mail_factory):
    login(Wire(mail_factory), "alice", "right")
    wire = Wire(mail_factory)
    # One typo a day, each followed by a good login, from one shared address.
    for day in range(20):
        assert wire("LOGIN alice wrong") == ["KO wrong user name or password"]
        assert wire("LOGIN alice right")[0].startswith("OK "), day
        clock.advance(24 * 3600)


def test_a_storage_failure_during_login_is_not_a_failed_attempt(clock):
    from twisted.internet import defer

    from mailsvc import errors

    service = limited_service(clock)
    wire = Wire(MailFactory(service, clock=clock))
    login(wire, "alice", "right")
    real = service.storage.account
    service.storage.account = lambda name: defer.fail(errors.StorageUnavailable())
    for _ in range(5):
        assert wire("LOGIN alice wrong") == ["KO storage unavailable"]
    service.storage.account = real
    assert wire("LOGIN alice right")[0].startswith("OK ")
    service.stopService()


def test_a_client_gone_while_its_nick_is_checked_leaves_no_ghost(clock):
    held = HeldPasswords()
    service = SharedService(SQLiteStorage.inline(), held.passwords, clock)
    service.startService()
    service.register("alice", "pw")
    held.release()
    factory = ChatFactory(service, clock=clock, nick_timeout=30)
    gone, timed_out = Wire(factory), Wire(factory)
    gone.replies()
    gone("NICK alice pw")
    gone.protocol.connectionLost(None)
    held.release()
    assert fired(service.room.who()) == []
    # The nick deadline passes in the middle of the password check.
    timed_out.replies()
    timed_out("NICK alice pw")
    clock.advance(30)
    assert timed_out.replies() == ["* error: idle timeout"]
    timed_out.protocol.connectionLost(None)
    held.release()
    assert fired(service.room.who()) == []
    again = Wire(factory)
    again.replies()
    assert again("NICK alice pw") == []
    held.release()
    assert again.replies() == ["READY"]
    service.stopService()
