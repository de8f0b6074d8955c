"""
End to end, the group chat: C{twistd mailsvc} in a subprocess, its chat port
spoken to over raw sockets as netcat would (the harness is in server.py).

A chat connection has no request/reply pairing, so "nothing else arrived" is
shown with a barrier instead of a wait: the server handles one connection's
lines in order, so once the reply to a C{/who} sent after X has arrived,
anything X caused for that connection has arrived before it.
"""

import datetime
import platform
import re
import signal
import socket
import struct
import threading
import time

import pytest

from mailsvc.fronts.chat import HELP
from mailsvc.testing.process import SOCKET_TIMEOUT, STOP_TIMEOUT

pytestmark = pytest.mark.e2e

DATE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
FIRST = "RETRY send NICK <name> first"
INVALID = "RETRY invalid nickname: use 1 to 32 letters, digits, _ or -"
TAKEN = "RETRY nickname in use"
RESERVED = "RETRY nickname belongs to a mail account: NICK <name> <password>"
WRONG_PASSWORD = "RETRY wrong password for that nickname"
# UTF-8 of one, two, three and four bytes, and a { for the log's format strings.
NON_ASCII = "héllo wörld — ☃ 日本語 🎉 {nick} 100%"

# The chat's shutdown notice gives this many seconds, then closes everything.
GRACE = 2
CLEAN_EXIT = (0, -signal.SIGTERM)




# Talking to the chat port.


def connect(server, **options):
    """A chat connection that got its greeting."""
    c = server.connect_chat(**options)
    assert c.line() == "HELLO"
    return c


def ask(c, line, end="\n"):
    """Send one line; return the next line the server sends."""
    c.send(line + end)
    return c.line()


def join(server, nick, **options):
    """A chat connection that is READY as C{nick} (the room had no history)."""
    c = connect(server, **options)
    assert ask(c, "NICK " + nick) == "READY"
    return c


def who(c, *nicks):
    """
    Assert who is here, and so (a barrier) that nothing else was on its way
    to C{c}: whatever arrived first would be read instead of the reply.
    """
    assert ask(c, "/who") == "* here: " + ", ".join(nicks)


def closed_by_server(c):
    """Assert the server closes C{c} (recv returns b"") with nothing more sent."""
    c.expect_eof()
    c.close()


def reset(c):
    """Close C{c} with an RST rather than a FIN, as a crashed peer may."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


# 1. Hello, and the nickname handshake.


def test_hello_then_nick_until_ready(server):
    a = connect(server)
    # Anything before a good NICK is refused, and the connection goes on.
    assert ask(a, "hello?") == FIRST
    assert ask(a, "/who") == FIRST
    assert ask(a, "NICK") == FIRST
    assert ask(a, "") == FIRST
    assert ask(a, "NICK b@d") == INVALID
    assert ask(a, "NICK ålice") == INVALID
    assert ask(a, "NICK " + "x" * 33) == INVALID
    assert ask(a, "NICK alice") == "READY"
    who(a, "alice")

    b = connect(server)
    # Taken, whatever the case; telnet's CRLF as well as netcat's LF.
    assert ask(b, "NICK alice") == TAKEN
    assert ask(b, "NICK ALICE", end="\r\n") == TAKEN
    assert ask(b, "nick Alice") == TAKEN
    # The CSC 328 client sends no space after NICK.
    assert ask(b, "NICKbob", end="\r\n") == "READY"
    assert a.line() == "* bob joined"
    who(b, "alice", "bob")

    # A 32-character nickname with _ and - is fine.
    longest = "Zz_-" * 8
    c = join(server, longest)
    for other in (a, b):
        assert other.line() == "* %s joined" % (longest,)
    who(c, longest, "alice", "bob")
    for client in (a, b, c):
        client.close()


# 2. Several clients in one room.


def test_broadcast_notices_and_commands(server):
    alice = join(server, "alice")
    bob = join(server, "bob")
    assert alice.line() == "* bob joined"
    carol = join(server, "carol")
    dave = join(server, "dave")
    assert [alice.line(), alice.line()] == ["* carol joined", "* dave joined"]
    assert [bob.line(), bob.line()] == ["* carol joined", "* dave joined"]
    assert carol.line() == "* dave joined"
    everyone = [alice, bob, carol, dave]
    names = ["alice", "bob", "carol", "dave"]
    for c in everyone:
        who(c, *names)  # and a newcomer is not told of itself

    # A message goes to everyone but its sender, UTF-8 intact.
    alice.send(NON_ASCII + "\n")
    for c in (bob, carol, dave):
        assert c.line() == "alice: " + NON_ASCII
    who(alice, *names)  # nothing came back to alice

    # Several lines from several senders: each sender's in its order.
    bob.send("one\r\ntwo\r\n")
    dave.send("three\n")
    for c in (alice, carol):
        got = [c.line() for _ in range(3)]
        assert [line for line in got if line != "dave: three"] == ["bob: one", "bob: two"]
    assert bob.line() == "dave: three"
    assert [dave.line(), dave.line()] == ["bob: one", "bob: two"]

    # An empty line is no message; //text is the message /text.
    alice.send("\n//etc/passwd is not a command\n")
    for c in (bob, carol, dave):
        assert c.line() == "alice: /etc/passwd is not a command"
    for c in everyone:
        who(c, *names)

    # /msg reaches its one recipient, and the sender gets no reply.
    alice.send("/msg carol psst, ☃ secret\n")
    assert carol.line() == "*alice* psst, ☃ secret"
    for c in everyone:
        who(c, *names)
    assert ask(alice, "/msg nobody hi").startswith("* error: nobody is not here")
    assert ask(alice, "/msg carol") == "* error: usage: /msg <nick> <text>"

    # /help, and errors for the sender alone.
    bob.send("/help\n")
    assert [bob.line() for _ in HELP] == HELP
    assert ask(bob, "/frob now") == "* error: unknown command /frob, try /help"
    assert ask(bob, "/WHO") == "* here: " + ", ".join(names)
    bob.send(b"bad \xff\xfe\n")
    assert bob.line() == "* error: line is not valid UTF-8"
    bob.send("x" * 9000 + "\n")
    assert bob.line() == "* error: line too long: at most 8192 bytes"
    for c in everyone:
        who(c, *names)

    # BYE and /quit: the server closes the connection; the others are told.
    dave.send("BYE\n")
    closed_by_server(dave)
    for c in (alice, bob, carol):
        assert c.line() == "* dave left"
    carol.send("/quit\r\n")
    closed_by_server(carol)
    for c in (alice, bob):
        assert c.line() == "* carol left"
    who(alice, "alice", "bob")
    who(bob, "alice", "bob")
    # BYE (in any case) works before NICK too.
    guest = connect(server)
    guest.send("bye\n")
    closed_by_server(guest)
    alice.close()
    bob.close()


# 3. A client that vanishes is removed at once.


def test_a_client_that_vanishes_is_removed_and_its_nick_freed(server):
    watcher = join(server, "watcher")
    quiet = join(server, "quiet")
    assert watcher.line() == "* quiet joined"
    # A half-sent line dies with its connection.
    quiet.send("half a line")
    quiet.close()
    assert watcher.line() == "* quiet left"
    again = join(server, "QUIET")
    assert watcher.line() == "* QUIET joined"

    crash = join(server, "crash")
    assert watcher.line() == "* crash joined"
    assert again.line() == "* crash joined"
    reset(crash)
    assert watcher.line() == "* crash left"
    assert again.line() == "* crash left"
    crash = join(server, "crash")
    assert watcher.line() == "* crash joined"
    assert again.line() == "* crash joined"
    for c in (watcher, again, crash):
        who(c, "QUIET", "crash", "watcher")
    for c in (watcher, again, crash):
        c.close()


# 4. History.


# These tests talk faster than anyone types: flood control would rightly stop them.
FAST = ("--flood-rate", 1e6, "--flood-burst", 100000)


def test_a_newcomer_gets_the_recent_history(mailsvc_process):
    server = mailsvc_process(*FAST)
    alice = join(server, "alice")
    carol = join(server, "carol")
    assert alice.line() == "* carol joined"
    said = ["message %d" % n for n in range(1, 23)] + ["//slash", NON_ASCII]
    for text in said:
        alice.send(text + "\n")
    said[-2] = "/slash"
    for text in said:
        assert carol.line() == "alice: " + text
    # Neither private messages nor commands are history.
    alice.send("/msg carol not for the record\n")
    assert carol.line() == "*alice* not for the record"
    who(alice, "alice", "carol")

    # The default is the last 20, right after READY, oldest first.
    bob = connect(server)
    bob.send("NICK bob\n")
    assert bob.line() == "READY"
    assert [bob.line() for _ in range(20)] == [
        "[history] alice: " + text for text in said[-20:]
    ]
    who(bob, "alice", "bob", "carol")
    for c in (alice, bob, carol):
        c.close()

    # --history 0: none.
    quiet = mailsvc_process("--history", 0, fresh=True)
    alice = join(quiet, "alice")
    alice.send("hello\n")
    who(alice, "alice")
    bob = join(quiet, "bob")
    who(bob, "alice", "bob")
    assert alice.line() == "* bob joined"
    for c in (alice, bob):
        c.close()


# 5. A graceful shutdown.


def test_sigterm_warns_the_chat_keeps_it_working_then_closes_everything(mailsvc_process):
    server = mailsvc_process("--shutdown-grace", GRACE)
    alice = join(server, "alice")
    bob = join(server, "bob")
    carol = join(server, "carol")
    assert [alice.line(), alice.line(), bob.line()] == [
        "* bob joined", "* carol joined", "* carol joined",
    ]
    for c in (alice, bob, carol):
        who(c, "alice", "bob", "carol")
    hello_only = connect(server)
    mail = server.connect()
    assert mail("COUNT") == ["KO you should log in first"]  # accepted, now idle
    chat = [alice, bob, carol, hello_only]

    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    notice = "Server will shut down in %d seconds" % (GRACE,)
    for c in chat:
        assert c.line() == notice
    # The listeners stopped first: no newcomer now.
    with pytest.raises(ConnectionRefusedError):
        server.connect_chat()

    # The grace period: the chat still works.
    alice.send("still here ☃\n")
    assert bob.line() == "alice: still here ☃"
    assert carol.line() == "alice: still here ☃"
    who(alice, "alice", "bob", "carol")

    # Then the server closes every connection, and says nothing more: not
    # even that the others, closed at the same time, left.
    closed = None
    for c in chat:
        assert c.replies_until_eof() == []
        closed = closed or time.monotonic()
        assert c.eof
    mail.expect_eof()
    for c in chat + [mail]:
        c.close()
    assert closed - signalled >= GRACE - 0.2, "closed before the grace period ended"
    status = server.process.wait(STOP_TIMEOUT)
    assert status in CLEAN_EXIT
    server.log.join(STOP_TIMEOUT)
    assert server.log.wait_for(r"Server Shut Down", 0) is not None
    assert server.problems() == []


# 6. The chat log.


def test_the_chat_log_records_joins_messages_and_leaves(mailsvc_process, tmp_path):
    path = tmp_path / "chat-record.log"
    began = datetime.datetime.now(datetime.timezone.utc)
    server = mailsvc_process("--chat-log", path, "--shutdown-grace", 1)
    peers = {}

    def logged_join(nick):
        c = join(server, nick)
        peers[nick] = "127.0.0.1:%d" % (c.sock.getsockname()[1],)
        return c

    alice = logged_join("alice")
    bob = logged_join("bob")
    assert alice.line() == "* bob joined"
    # Neither a refused nickname nor a guest that never joins is logged.
    guest = connect(server)
    assert ask(guest, "NICK Alice") == TAKEN
    alice.send(NON_ASCII + "\n")
    assert bob.line() == "alice: " + NON_ASCII
    bob.send("//slash\n/msg alice not for the log\n/who\n")
    assert alice.line() == "bob: /slash"
    assert alice.line() == "*bob* not for the log"
    assert bob.line() == "* here: alice, bob"
    bob.send("BYE\n")
    closed_by_server(bob)
    assert alice.line() == "* bob left"
    carol = logged_join("carol")
    assert alice.line() == "* carol joined"
    carol.send("gone soon\n")
    assert alice.line() == "carol: gone soon"
    reset(carol)
    assert alice.line() == "* carol left"
    who(alice, "alice")

    # alice is still here at the stop: her leave is logged as she is closed.
    assert server.stop() in CLEAN_EXIT
    assert alice.line() == "Server will shut down in 1 seconds"
    closed_by_server(alice)
    guest.close()
    ended = datetime.datetime.now(datetime.timezone.utc)

    lines = path.read_text(encoding="utf-8").splitlines()
    stamps, entries = [], []
    for line in lines:
        stamp, entry = line.split(" ", 1)
        when = datetime.datetime.fromisoformat(stamp)
        assert when.tzinfo is not None, line
        stamps.append(when)
        entries.append(entry)
    assert entries == [
        "alice joined from " + peers["alice"],
        "bob joined from " + peers["bob"],
        "alice: " + NON_ASCII,
        "bob: /slash",
        "bob left",
        "carol joined from " + peers["carol"],
        "carol: gone soon",
        "carol left",
        "alice left",
    ]
    assert stamps == sorted(stamps)
    slack = datetime.timedelta(seconds=1)
    assert began - slack <= stamps[0] and stamps[-1] <= ended + slack, (began, stamps, ended)


# 7. Both ports of one server: reserved nicknames, chat to mail, mail to chat.


def test_accounts_reserve_nicks_and_chat_meets_mail(server):
    with server.connect() as mail:
        assert mail("REGISTER alice s3cret")[0].startswith("OK ")
        assert mail("REGISTER bob bobs pass phrase")[0].startswith("OK ")

    # An account's name is its owner's nickname, in any case.
    alice = connect(server)
    assert ask(alice, "NICK alice") == RESERVED
    assert ask(alice, "NICK Alice") == RESERVED
    assert ask(alice, "NICK alice wrong") == WRONG_PASSWORD
    assert ask(alice, "NICK alice s3cret") == "READY"
    carol = join(server, "carol")  # a guest
    assert alice.line() == "* carol joined"
    who(carol, "alice", "carol")

    # A guest can't mail an absent account's mailbox; alice can.
    assert ask(carol, "/msg bob hello").startswith("* error: bob is not here")
    assert ask(alice, "/msg bob hello from the chat ☃") == (
        "* bob is not here: your message is in their mailbox"
    )
    assert ask(alice, "/msg nobody hi") == "* error: no such nickname or mailbox: nobody"
    # To someone here, /msg stays in the chat, account or not.
    alice.send("/msg carol in the chat\n")
    assert carol.line() == "*alice* in the chat"
    who(alice, "alice", "carol")

    with server.connect() as mail:
        assert mail("LOGIN bob bobs pass phrase")[0].startswith("OK ")
        listing = mail("LIST")
        assert listing[0] == "OK 1 messages" and listing[2] == ".", listing
        match = re.fullmatch(r"(\d+) alice %s Chat message from alice" % (DATE,), listing[1])
        assert match, listing[1]
        message = mail("READ " + match.group(1))
        assert message[2] == "From: alice"
        assert message[4:] == [
            "Subject: Chat message from alice", "", "hello from the chat ☃", ".",
        ]

        # Mail to alice while she is in the chat under her nickname: she is
        # told (and carol, a guest, is told nothing).
        mail.send("SEND alice Lunch at noon? ☃\nbody\n.\n")
        assert re.fullmatch(r"OK \d+", mail.line())
        assert alice.line() == "* new mail from bob: Lunch at noon? ☃"
        who(carol, "alice", "carol")
        who(alice, "alice", "carol")

    # bob's password, spaces and all, gets him his nickname.
    bob = connect(server)
    assert ask(bob, "NICK BOB bobs pass phrase") == "READY"
    for c in (alice, carol):
        assert c.line() == "* bob joined"
    who(bob, "alice", "bob", "carol")
    for c in (alice, bob, carol):
        c.close()


# 8. A client that never reads.

MAX_SENDQ = 64 * 1024
LINE_BYTES = 8000  # each flood line, within the 8192-byte limit
BATCH = 4  # flood lines per send
# Flood lines sent and not yet read: 128 kB, less than the server may hold for
# the reader (its socket buffers, then 64 kB before Twisted pauses, then
# MAX_SENDQ), so the reader is never dropped for being behind.
WINDOW = 16
MIN_FLOOD = 12 * 1024 * 1024
MAX_FLOOD = 20 * 1024 * 1024
RSS_GROWTH = 4 * 1024 * 1024  # a third of the smallest flood
if platform.python_implementation() == "PyPy":
    # PyPy's RSS grows by some 35 MB over the first 25 MB of any flood, then
    # stays flat: the JIT compiles the chat path and the GC lets its heap grow
    # before a major collection. A flood four times that long still shows a
    # server that keeps half of it.
    MIN_FLOOD = 96 * 1024 * 1024
    MAX_FLOOD = 104 * 1024 * 1024
    RSS_GROWTH = 48 * 1024 * 1024  # the warmup, and less than half the smallest flood
FLOOD_DEADLINE = 60


class Reader(threading.Thread):
    """Reads a chat connection's lines as they come, counting the flood's."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client = client
        self.lines = []
        self.flood = 0
        self.error = None
        self.changed = threading.Condition()

    def run(self):
        try:
            while True:
                line = self.client.line()
                with self.changed:
                    self.lines.append(line)
                    self.flood += line.startswith("flood: ")
                    self.changed.notify_all()
        except EOFError:
            pass
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            with self.changed:
                self.flood = None
                self.changed.notify_all()

    def wait(self, predicate, timeout):
        with self.changed:
            return self.changed.wait_for(lambda: self.flood is None or predicate(), timeout)


def flood_line(n):
    head = "%07d " % (n,)
    return head + "x" * (LINE_BYTES - len(head))


def test_a_client_that_never_reads_is_dropped_and_memory_stays_flat(mailsvc_process):
    server = mailsvc_process("--max-sendq", MAX_SENDQ, *FAST)
    stalled = join(server, "stalled", rcvbuf=4096)
    reader = join(server, "reader")
    flood = join(server, "flood")
    assert reader.line() == "* flood joined"
    who(reader, "flood", "reader", "stalled")
    mark = len(server.log.lines)
    before = server.rss()

    watcher = Reader(reader)
    watcher.start()
    sent = 0
    deadline = time.monotonic() + FLOOD_DEADLINE
    try:
        while sent * LINE_BYTES < MAX_FLOOD:
            if sent * LINE_BYTES >= MIN_FLOOD and "* stalled left" in watcher.lines:
                break
            assert watcher.wait(
                lambda: watcher.flood >= sent + BATCH - WINDOW, deadline - time.monotonic()
            ), "the reader fell behind"
            assert watcher.flood is not None, "the reader was closed: %r" % (watcher.error,)
            flood.send("".join(flood_line(n) + "\n" for n in range(sent, sent + BATCH)))
            sent += BATCH
        assert watcher.wait(lambda: watcher.flood == sent, deadline - time.monotonic())
        assert watcher.flood == sent, "the reader was closed: %r" % (watcher.error,)
        after = server.rss()
    finally:
        # BYE ends the reader thread: the server closes its connection.
        reader.send("BYE\n")
        watcher.join(SOCKET_TIMEOUT)
    assert not watcher.is_alive() and watcher.error is None, watcher.error
    print(
        "flood of %d bytes, stalled dropped after %s lines; RSS %d -> %d kB"
        % (sent * LINE_BYTES, watcher.lines.index("* stalled left")
           if "* stalled left" in watcher.lines else None, before >> 10, after >> 10)
    )

    # The server never buffered the flood.
    assert after - before < RSS_GROWTH, (before, after)

    # The reader got everything, in order, and the notice that stalled left.
    assert watcher.lines.count("* stalled left") == 1
    watcher.lines.remove("* stalled left")
    assert watcher.lines == ["flood: " + flood_line(n) for n in range(sent)]
    assert server.log.wait_for(
        r"SendQ exceeded: disconnecting stalled", SOCKET_TIMEOUT, start=mark
    )
    assert [flood.line(), flood.line()] == ["* stalled left", "* reader left"]
    who(flood, "flood")

    # The stalled client got a beginning of it all, then was cut off.
    expected = ["* reader joined", "* flood joined"] + [
        "flood: " + flood_line(n) for n in range(sent)
    ]
    got = stalled.read_until_closed()
    stalled.close()
    lines = got.decode("utf-8").split("\r\n")[:-1]
    assert len(lines) < len(expected) and lines == expected[: len(lines)]
