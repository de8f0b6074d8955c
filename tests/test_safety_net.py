"""
A safety net: behaviour that today's code gets right and that a small slip
would break without any other test noticing. Unit tests over StringTransport
and a Clock first, then the real twistd.

Each test names the slip it was checked against (planted in the code, seen to
fail, reverted).
"""

import hashlib
import re
import sqlite3

import pytest
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from conftest import inline_service
from mailsvc.fronts.chat import ChatFactory
from mailsvc.fronts.mail import MailFactory
from mailsvc.testing.process import Client
from wire import Wire

WRONG = ["KO wrong user name or password"]


def register(wire, name, password="pw"):
    [reply] = wire("REGISTER %s %s" % (name, password))
    assert reply.startswith("OK "), reply
    return reply.split()[1]


def chat_join(factory, nick, *password, host="127.0.0.1"):
    wire = Wire(factory, host=host)
    assert wire.replies() == ["HELLO"]
    assert wire(" ".join(("NICK", nick) + password)) == ["READY"]
    return wire


@pytest.fixture
def chat_factory(service, clock):
    return ChatFactory(service, clock=clock, flood_rate=1e6, flood_burst=1000)


# 1. Slowloris: only a whole line is activity.


def test_a_partial_line_does_not_put_off_the_idle_timeout(service, clock):
    """Planted: resetTimeout() in TextLineProtocol.dataReceived."""
    wire = Wire(MailFactory(service, clock=clock, idle_timeout=300))
    # A byte every 100 s, never a newline: the timer still runs out at 300 s.
    for _ in range(2):
        clock.advance(100)
        assert wire.feed(b"H") == []
    clock.advance(99)
    assert wire.feed(b"E") == []
    assert not wire.transport.disconnecting
    clock.advance(1)
    assert wire.replies() == ["KO idle timeout"]
    assert wire.transport.disconnecting
    # Whereas a whole line does put it off.
    other = Wire(MailFactory(service, clock=clock, idle_timeout=300))
    clock.advance(299)
    assert other("HELP")[0] == "OK commands"
    clock.advance(299)
    assert not other.transport.disconnecting


def test_a_partial_chat_line_does_not_put_off_the_chat_idle_timeout(service, clock):
    factory = ChatFactory(service, clock=clock, nick_timeout=30, idle_timeout=600)
    wire = chat_join(factory, "slow")
    clock.advance(599)
    assert wire.feed(b"never ending") == []
    clock.advance(1)
    assert wire.replies() == ["* error: idle timeout"]
    assert wire.transport.disconnecting


# 2. Shutdown: the request in progress is finished, the ones behind it dropped.


def test_shutdown_finishes_the_pending_request_and_drops_those_waiting(service, clock):
    """Planted: MailProtocol.shutdown not clearing self._buffer."""
    factory = MailFactory(service, clock=clock)
    wire = Wire(factory)
    register(wire, "alice")
    slow = defer.Deferred()
    counts = []

    def count(cookie):
        counts.append(cookie)
        return slow

    service.count = count
    # COUNT waits for the (slow) storage; the lines behind it wait their turn.
    assert wire.feed("COUNT\nHELP\nSEND alice s\nbody\n.\nCOUNT\n") == []
    assert len(counts) == 1
    closing = factory.closeAll(clock)
    assert not wire.transport.disconnecting  # the COUNT in progress is finished first
    slow.callback(7)
    assert wire.replies() == ["COUNTED 7"]
    assert wire.transport.disconnecting
    assert len(counts) == 1  # the second COUNT never ran
    wire.protocol.connectionLost(None)
    assert closing.called
    del service.count
    # And the SEND behind it was not run either.
    assert service.storage.summary().result["messages"] == 0


# 3. Only a hash of each cookie is stored.


def test_the_database_holds_sha256_of_cookies_never_the_cookies(tmp_path, clock):
    """Planted: the raw cookie stored (service._token_hash returning it)."""
    path = tmp_path / "mail.sqlite"
    service = inline_service(clock, str(path))
    try:
        factory = MailFactory(service, clock=clock)
        wire = Wire(factory)
        cookies = [register(wire, "alice")]
        [reply] = wire("LOGIN alice pw")
        cookies.append(reply.split()[1])
        assert wire("MESSAGE staged " + cookies[0]) == ["OK"]
        # Every value in every table, read from the file as anyone with a copy would.
        db = sqlite3.connect(str(path))
        try:
            tables = [
                name
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            values = [
                value
                for table in tables
                for row in db.execute('SELECT * FROM "%s"' % (table,))
                for value in row
            ]
            session_hashes = {
                bytes(h) for (h,) in db.execute("SELECT token_hash FROM sessions")
            }
        finally:
            db.close()
        for cookie in cookies:
            raw = cookie.encode("ascii")
            for value in values:
                if isinstance(value, str):
                    assert cookie not in value
                elif isinstance(value, bytes):
                    assert raw not in value
        assert session_hashes == {hashlib.sha256(c.encode("ascii")).digest() for c in cookies}
        # The hash still finds the session.
        assert Wire(factory)("COUNT " + cookies[1]) == ["COUNTED 0"]
    finally:
        service.stopService()


# 4. Every limit refuses 0.

LIMITS = [
    "max-sendq",
    "max-body",
    "max-line",
    "quota-messages",
    "quota-bytes",
    "max-staged",
    "max-connections",
    "max-per-peer",
    "backlog",
    "idle-timeout",
    "nick-timeout",
    "chat-idle-timeout",
    "smtp-idle-timeout",
    "pop3-idle-timeout",
    "session-ttl",
    "flood-rate",
    "flood-burst",
    "max-sends",
    "send-rate",
    "max-registrations",
    "chat-log-size",
    "chat-log-keep",
    "irc-ping-interval",
    "irc-ping-timeout",
    "node-lease",
]


@pytest.mark.parametrize("option", LIMITS)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_every_limit_refuses_zero(option, value):
    """Planted: a name dropped from the option types."""
    from twisted.python import usage

    from mailsvc.tap import Options

    with pytest.raises(usage.UsageError, match="--%s must be more than 0" % (option,)):
        Options().parseOptions(["--" + option, value])
    Options().parseOptions(["--" + option, "1"])


def test_every_numeric_option_but_three_is_a_limit():
    """A new numeric option is a limit too (and joins LIMITS) unless 0 means something."""
    from mailsvc.tap import Options

    rows = Options().rows
    numeric = {row[0]: row[4] for row in rows if hasattr(row[4] if len(row) > 4 else None, "minimum")}
    assert {name for name, kind in numeric.items() if kind.minimum > 0} == set(LIMITS)
    assert set(numeric) - set(LIMITS) == {"history", "shutdown-grace", "min-free-disk"}


# 5. The login lockout.


def test_the_lockout_never_passes_300_seconds(service, clock, mail_factory):
    """Planted: min(..., longest) removed from Throttle.end."""
    register(Wire(mail_factory), "alice", "right")
    wire = Wire(mail_factory)
    # 20 failures: uncapped, the last would lock for 2**17 s.
    for i in range(20):
        assert wire("LOGIN alice wrong") == WRONG, i
        clock.advance(300)
    assert wire("LOGIN alice wrong") == WRONG
    assert wire("LOGIN alice right") == [
        "KO too many failed attempts: try again in 300 seconds"
    ]
    clock.advance(299)
    assert wire("LOGIN alice right") == [
        "KO too many failed attempts: try again in 1 second"
    ]
    clock.advance(1)
    assert wire("LOGIN alice right")[0].startswith("OK ")


def test_a_good_login_forgives_the_name_but_not_the_address(service, clock, mail_factory):
    """
    Planted: forgive=True for the peer throttle in SharedService._check_password.
    An address has 10 free failures, a name 3; a success forgives the name's.
    """
    register(Wire(mail_factory), "alice", "right")
    here = Wire(mail_factory, host="10.0.0.1")
    # 9 failures from here, two of them alice's.
    for i in range(7):
        assert here("LOGIN nobody%d guess" % i) == WRONG
    for _ in range(2):
        assert here("LOGIN alice wrong") == WRONG
    # alice's good login forgives alice's two failures...
    assert here("LOGIN alice right")[0].startswith("OK ")
    elsewhere = Wire(mail_factory, host="10.0.0.2")
    for _ in range(2):
        assert elsewhere("LOGIN alice wrong") == WRONG
    assert elsewhere("LOGIN alice right")[0].startswith("OK ")  # 2 failures, not 4
    # ...but not the address's 9: one more failure from here locks it out.
    assert here("LOGIN nobody99 guess") == WRONG
    assert here("LOGIN alice right") == [
        "KO too many failed attempts: try again in 1 second"
    ]
    # Another address is not affected.
    assert elsewhere("LOGIN alice right")[0].startswith("OK ")
    clock.advance(1)
    assert here("LOGIN alice right")[0].startswith("OK ")


# 6. Errors, each with its own reply.


def test_a_request_that_conflicts_with_a_logout_is_told_to_try_again(service, clock, mail_factory):
    """
    A MESSAGE staged while another connection's LOGOUT of the same session is
    being committed: the stage breaks a foreign key (sqlite3.IntegrityError
    inside the batch). Planted: another wording in storage._run_batch.
    """
    stager, leaver = Wire(mail_factory), Wire(mail_factory)
    cookie = register(stager, "alice")
    remove_session = service.storage.remove_session
    held = []

    def slow_remove(token_hash):
        # Removed now; the service is told later.
        held.append((remove_session(token_hash), defer.Deferred()))
        return held[-1][1]

    service.storage.remove_session = slow_remove
    assert leaver("LOGOUT " + cookie) == []
    assert stager("MESSAGE hello") == ["KO conflicting request, try again"]
    # The refused request undid nothing else: the logout still completes.
    done, told = held.pop()
    done.chainDeferred(told)
    assert leaver.replies() == ["OK"]
    assert stager("MESSAGE hello") == ["You should log in first."]
    assert stager("COUNT") == ["KO unknown or expired session"]


def test_an_unexpected_exception_is_an_internal_error_and_logged(service, mail_factory, logged_errors):
    """Planted: another wording, or no log, in MailProtocol.refuse."""
    wire = Wire(mail_factory)
    register(wire, "alice")

    def broken(cookie):
        raise ZeroDivisionError("planted")

    service.count = broken
    assert wire("COUNT") == ["KO internal error"]
    service.count = lambda cookie: defer.fail(KeyError("planted too"))
    assert wire("COUNT") == ["KO internal error"]
    del service.count
    assert wire("COUNT") == ["COUNTED 0"]  # the connection carries on
    failures = [e["log_failure"] for e in logged_errors if e.get("log_failure")]
    assert [f.type for f in failures] == [ZeroDivisionError, KeyError]
    logged_errors.clear()


def test_storage_unavailable_on_both_ports(service, clock, mail_factory, chat_factory):
    """The database gone (closed) under the server: each port says so, and logs no error."""
    wire = Wire(mail_factory)
    register(wire, "alice")
    register(Wire(mail_factory), "bob")
    alice = chat_join(chat_factory, "alice", "pw")
    service.storage.stopService()  # closes the connection: every query now fails
    assert wire("COUNT") == ["KO storage unavailable"]
    assert wire.feed("SEND bob s\nbody\n.\n") == ["KO storage unavailable"]
    assert alice("/msg bob hello") == ["* error: storage unavailable"]
    late = Wire(chat_factory)
    late.replies()
    assert late("NICK bob pw") == ["RETRY storage unavailable"]


def test_a_full_mailbox_is_told_on_the_chat_port(clock):
    """/msg to a registered user who is not here, whose mailbox is full."""
    from mailsvc.core.passwords import Passwords
    from mailsvc.core.service import SharedService
    from mailsvc.store import Quotas
    from mailsvc.store.sqlite import SQLiteStorage

    service = SharedService(
        SQLiteStorage.inline(quotas=Quotas(messages=1)), Passwords.inline(), clock
    )
    service.startService()
    try:
        mail = MailFactory(service, clock=clock)
        register(Wire(mail), "alice")
        register(Wire(mail), "bob")
        chat = ChatFactory(service, clock=clock)
        alice = chat_join(chat, "alice", "pw")
        assert alice("/msg bob first") == [
            "* bob is not here: your message is in their mailbox"
        ]
        assert alice("/msg bob second") == [
            "* error: mailbox of bob is full: at most 1 messages"
        ]
        # A guest, whatever the mailbox, is told the nick is not here.
        guest = chat_join(chat, "guest")
        assert guest("/msg bob hi") == [
            "* error: bob is not here (mail to a mailbox needs a registered nickname)"
        ]
    finally:
        service.stopService()


def test_nick_passwords_are_never_logged(service, clock, mail_factory, chat_factory):
    """Planted: the NICK line logged in ChatProtocol._nick."""
    register(Wire(mail_factory), "alice", "Sesame-Right-1")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        good = chat_join(chat_factory, "alice", "Sesame-Right-1")
        bad = Wire(chat_factory, host="10.0.0.7")
        bad.replies()
        assert bad("NICK ALICE Sesame-Wrong-2") == ["RETRY nickname in use"]
        good("BYE")
        good.protocol.connectionLost(None)
        assert bad("NICK alice Sesame-Wrong-2") == ["RETRY wrong password for that nickname"]
        assert bad("NICK alice Sesame-Wrong-3 with spaces") == [
            "RETRY wrong password for that nickname"
        ]
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join((formatEvent(e) or "") + repr(e) for e in events)
    assert "failed chat login for account alice from 10.0.0.7" in text  # logged: a failure
    assert "Sesame" not in text


# 4, end to end: the limits given to twistd reach the running server.


@pytest.mark.e2e
def test_limit_options_reach_the_running_server(mailsvc_process):
    """Planted, one at a time: each option ignored in tap.assemble (its default used)."""
    import time

    server = mailsvc_process(
        "--nick-timeout", 1, "--chat-idle-timeout", 2, "--quota-bytes", 100,
        "--max-connections", 1,
    )
    with server.connect() as a:
        assert a("REGISTER alice pw")[0].startswith("OK ")
        # --max-connections: a second connection to the mail port is refused.
        with Client(server.port) as refused:
            assert refused.line() == "KO too many connections"
            refused.expect_eof()
        # --quota-bytes: 11 bytes fit, 201 more do not.
        assert a("SEND alice s\n0123456789\n.") == ["OK 1"]
        assert a("SEND alice s\n" + "y" * 200 + "\n.") == [
            "KO mailbox of alice is full: at most 100 bytes"
        ]
        assert a("COUNT") == ["COUNTED 1"]
    # --nick-timeout: a chat client that never sends NICK is cut off after 1 s
    # (the default is 30, far past the socket's timeout)...
    with server.connect_chat() as silent:
        assert silent.line() == "HELLO"
        # ...and --max-connections holds on the chat port too.
        with Client(server.chat_port) as refused:
            assert refused.line() == "* error: too many connections"
            refused.expect_eof()
        assert silent.line() == "* error: idle timeout"
        silent.expect_eof()
    # --chat-idle-timeout: a participant silent for 2 s is cut off (default 3600).
    with server.connect_chat() as bob:
        assert bob.line() == "HELLO"
        bob.send("NICK bob\n")
        assert bob.line() == "READY"
        ready = time.monotonic()
        assert bob.line() == "* error: idle timeout"
        assert time.monotonic() - ready > 1.5  # the idle timeout, not the nick's
        bob.expect_eof()
