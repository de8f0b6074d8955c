"""
End to end: C{twistd mailsvc} in a subprocess, spoken to over raw sockets as
netcat would, and the install that lets twistd find the plugin at all.

These are plain synchronous tests (no reactor in this process), marked e2e.
Each server's whole log is printed at teardown, which pytest shows with a
failing test.
"""

import calendar
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import site
import socket
import sqlite3
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest

from mailsvc.fronts.mail import HELP
from mailsvc.testing.process import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    TWISTD,
    Client,
    is_twistd,
    neutral_env,
    process_alive,
    twistd_command,
    unstuffed,
    wait_for_exit,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
COOKIE = r"[A-Za-z0-9_-]{43}"
DATE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
HELP_REPLY = ["OK commands"] + HELP + ["."]
LOGIN_FIRST = "KO you should log in first"
TOO_LONG = "KO line too long: at most 8192 bytes"
NOT_UTF8 = "KO request is not valid UTF-8"
UNKNOWN = "KO unknown command, try HELP"




def cookie_of(reply):
    [line] = reply
    assert re.fullmatch("OK " + COOKIE, line), line
    return line[3:]


def message_id(reply):
    [line] = reply
    assert re.fullmatch(r"OK \d+", line), line
    return int(line[3:])


def signed(line):
    return "%s#%s" % (line, hashlib.sha1(line.encode("utf-8")).hexdigest())


def assert_recent(date):
    """A reply's date is now, give or take a minute."""
    assert re.fullmatch(DATE, date), date
    then = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(then - time.time()) < 60, date


# 1. One long session that uses every command.


def test_a_whole_session_uses_every_command(server):
    a = server.connect()
    assert a("HELP") == HELP_REPLY
    bob = cookie_of(a("REGISTER bob bobs pass phrase"))
    alice = cookie_of(a("REGISTER alice s3cret"))
    # A connection that registered is logged in as that account.
    assert a("COUNT") == ["COUNTED 0"]
    assert a(signed("COUNT")) == ["COUNTED 0"]

    # The Simple Mail Server commands.
    assert a("MESSAGE hello bob") == ["OK"]
    assert a("STORE bob") == ["OK"]
    assert a("STORE bob") == ["KO no staged message: send MESSAGE <text> first"]

    # SEND, the body dot-stuffed: '..hidden' is '.hidden', '...' is '..'.
    # Telnet's CRLF here, netcat's LF elsewhere.
    a.send("SEND bob Lunch plans\r\nNoon?\r\n\r\n..hidden\r\n...\r\nCOUNT\r\n.\r\n")
    lunch = message_id(a.reply())
    a.send("SEND alice Note to self\nremember\n.\n")
    note = message_id(a.reply())
    assert note > lunch

    assert a("COUNT") == ["COUNTED 1"]
    oldest = a("GETMSG")
    assert oldest[:3] == ["OK message %d" % note, "Id: %d" % note, "From: alice"]
    assert oldest[3].startswith("Date: ")
    assert_recent(oldest[3][len("Date: ") :])
    assert oldest[4:] == ["Subject: Note to self", "", "remember", "."]
    assert a("READ %d" % note) == oldest
    listing = a("LIST")
    assert listing[0] == "OK 1 messages" and listing[2] == "."
    assert re.fullmatch(r"%d alice %s Note to self" % (note, DATE), listing[1])
    assert a("LIST FROM ALICE") == listing
    assert a("LIST FROM bob") == ["OK 0 messages", "."]
    assert a("DELMSG") == ["OK"]
    assert a("COUNT") == ["COUNTED 0"]
    assert a("GETMSG") == ["KO mailbox is empty"]
    assert a("DELMSG") == ["KO mailbox is empty"]
    assert a("LOGOUT") == ["OK"]
    assert a("COUNT") == [LOGIN_FIRST]
    assert a("COUNT " + alice) == ["KO unknown or expired session"]
    assert a("MESSAGE hello") == ["You should log in first."]

    # Now bob, on the same connection.
    bob_again = cookie_of(a("LOGIN bob bobs pass phrase"))
    assert bob_again != bob
    assert a("COUNT") == ["COUNTED 2"]
    listing = a("LIST")
    assert listing[0] == "OK 2 messages" and listing[3] == "."
    stored = int(listing[1].split()[0])
    # STORE's message has an empty subject: the line ends in the date's space.
    assert re.fullmatch(r"%d alice %s " % (stored, DATE), listing[1]), listing[1]
    assert re.fullmatch(r"%d alice %s Lunch plans" % (lunch, DATE), listing[2])
    assert a("LIST FROM alice") == listing
    message = a("READ %d" % lunch)
    assert message[:3] == ["OK message %d" % lunch, "Id: %d" % lunch, "From: alice"]
    assert message[4:] == [
        "Subject: Lunch plans", "", "Noon?", "", "..hidden", "...", "COUNT", ".",
    ]
    assert unstuffed(message[6:-1]) == ["Noon?", "", ".hidden", "..", "COUNT"]
    assert a("GETMSG")[4:] == ["Subject: ", "", "hello bob", "."]
    assert a("DELETE SUBJECT Lunch plans") == ["OK deleted 1"]
    assert a("DELETE SUBJECT Lunch plans") == ["KO no message with that subject"]
    assert a("READ %d" % lunch) == ["KO no such message: %d" % lunch]
    assert a("DELETE %d" % stored) == ["OK deleted 1"]
    assert a("DELETE %d" % stored) == ["KO no such message: %d" % stored]
    assert a("COUNT") == ["COUNTED 0"]

    # DUMP answers OK and logs a summary, never a password.
    mark = len(server.log.lines)
    assert a("DUMP") == ["OK"]
    dump = server.log.wait_for(r"DUMP: .*", STOP_TIMEOUT, start=mark)
    assert dump is not None, "DUMP logged nothing"
    assert "2 accounts, 2 sessions" in dump.group(0)
    assert re.search(r"\b0 messages\b", dump.group(0)), dump.group(0)
    assert "s3cret" not in server.log.text() and "pass phrase" not in server.log.text()
    assert a("LOGOFF") == ["OK"]
    assert a("LOGOFF") == ["KO you are not logged in"]

    alice = cookie_of(a("login alice s3cret"))

    # A second connection, with no session of its own, uses cookies.
    with server.connect() as b:
        assert b("COUNT") == [LOGIN_FIRST]
        assert b("MESSAGE via a cookie " + bob) == ["OK"]
        assert b("STORE alice " + bob) == ["OK"]
        b.send("SEND alice Second %s\nbody\n.\n" % (bob,))
        second = message_id(b.reply())
        assert b("COUNT " + alice) == ["COUNTED 2"]
        got = b("GETMSG " + alice)
        assert got[2] == "From: bob"
        assert got[4:] == ["Subject: ", "", "via a cookie", "."]
        assert b("READ %d %s" % (second, alice))[4:] == ["Subject: Second", "", "body", "."]
        assert b("LIST FROM bob " + alice)[0] == "OK 2 messages"
        assert b("DELMSG " + alice) == ["OK"]
        assert b("DELETE %d %s" % (second, alice)) == ["OK deleted 1"]
        assert b("COUNT " + alice) == ["COUNTED 0"]
        assert b("LOGOUT " + bob) == ["OK"]
        assert b("COUNT " + bob) == ["KO unknown or expired session"]
        assert b("COUNT " + bob_again) == ["KO unknown or expired session"]
        assert b("COUNT") == [LOGIN_FIRST]

    # The first connection is still logged in as alice; QUIT ends it.
    assert a("COUNT") == ["COUNTED 0"]
    assert a("QUIT") == ["BYE"]
    a.expect_eof()
    a.close()


# 2. Bad input is answered, and the connection goes on.

# (what, bytes sent, the reply): each followed at once by COUNT on one connection.
BAD_ANONYMOUS = [
    ("binary garbage", bytes(b for b in range(256) if b != 0x0A) + b"\n", NOT_UTF8),
    ("control bytes", b"\x00\x01\x02\x7f\n", UNKNOWN),
    ("NUL after a verb", b"COUNT\x00\n", UNKNOWN),
    ("invalid UTF-8", b"COUNT \xc3\x28\r\n", NOT_UTF8),
    ("lone continuation byte", b"\x80HELP\n", NOT_UTF8),
    ("overlong UTF-8 encoding", b"\xc0\xafHELP\n", NOT_UTF8),
    ("UTF-8 surrogate", b"HELP \xed\xa0\x80\n", NOT_UTF8),
    ("overlong line", b"X" * 9000 + b"\n", TOO_LONG),
    ("overlong line of a known verb", b"HELP " + b"x" * 20000 + b"\r\n", TOO_LONG),
    (
        "100 kB of random bytes",
        random.Random(1).randbytes(100_000).replace(b"\n", b"x") + b"\n",
        TOO_LONG,
    ),
    ("unknown verb", b"FROB\n", UNKNOWN),
    ("SMTP", b"HELO example.org\r\n", UNKNOWN),
    ("HTTP", b"GET / HTTP/1.0\r\n", UNKNOWN),
    ("empty line", b"\n", "KO empty request, try HELP"),
    ("blank line", b" \t \r\n", "KO empty request, try HELP"),
    ("bad checksum", b"COUNT#" + b"0" * 40 + b"\n", "KO checksum mismatch"),
    ("bad upper-case checksum", b"HELP#" + b"ABCDEF0123" * 4 + b"\n", "KO checksum mismatch"),
    ("another line's checksum", signed("COUNT").replace("COUNT", "HELP").encode() + b"\n",
     "KO checksum mismatch"),
    ("REGISTER without a password", b"REGISTER alice\n", "KO usage: REGISTER <user> <password>"),
    ("LOGIN alone", b"LOGIN\n", "KO usage: LOGIN <user> <password>"),
    ("REGISTER a bad name", b"REGISTER b@d pw\n",
     "KO invalid user name: use 1 to 32 letters or digits"),
    ("REGISTER a non-ASCII name", "REGISTER ålice pw\n".encode(),
     "KO invalid user name: use 1 to 32 letters or digits"),
    ("REGISTER a long password", b"REGISTER bob " + b"p" * 1025 + b"\n",
     "KO invalid password: 1 to 1024 characters"),
    ("LOGIN an unknown user", b"LOGIN nobody pw\n", "KO wrong user name or password"),
    ("MESSAGE alone", b"MESSAGE\n", "KO usage: MESSAGE <text> [<cookie>]"),
    ("MESSAGE without a session", b"MESSAGE hi there\n", "You should log in first."),
    ("STORE alone", b"STORE\n", "KO usage: STORE <user> [<cookie>]"),
    ("STORE without a session", b"STORE bob\n", LOGIN_FIRST),
    ("READ alone", b"READ\n", "KO usage: READ <id>"),
    ("READ a word", b"READ one\n", "KO usage: READ <id>"),
    ("DELETE alone", b"DELETE\n", "KO usage: DELETE <id> | DELETE SUBJECT <subject>"),
    ("DELETE SUBJECT alone", b"DELETE SUBJECT\n",
     "KO usage: DELETE <id> | DELETE SUBJECT <subject>"),
    ("LIST FROM alone", b"LIST FROM\n", "KO usage: LIST [FROM <sender>]"),
    ("LIST BY", b"LIST BY bob\n", "KO usage: LIST [FROM <sender>]"),
    ("COUNT with junk", b"COUNT junk\n", "KO usage: COUNT [<cookie>]"),
    ("LOGOUT without a session", b"LOGOUT\n", "KO you are not logged in"),
    ("an unknown cookie", b"COUNT " + b"x" * 43 + b"\n", "KO unknown or expired session"),
    ("SEND alone", b"SEND\nQUIT\n.\n",
     "KO usage: SEND <user> <subject...>, then the body, then ."),
    ("SEND without a session", b"SEND bob hi\nDELMSG\n.\n", LOGIN_FIRST),
]

BAD_LOGGED_IN = [
    ("REGISTER a taken name", b"REGISTER ALICE other\n", "KO user name already taken"),
    ("LOGIN a wrong password", b"LOGIN alice wrong\n", "KO wrong user name or password"),
    ("STORE with nothing staged", b"STORE alice\n",
     "KO no staged message: send MESSAGE <text> first"),
    ("GETMSG an empty mailbox", b"GETMSG\n", "KO mailbox is empty"),
    ("DELMSG an empty mailbox", b"DELMSG\n", "KO mailbox is empty"),
    ("READ a missing message", b"READ 999\n", "KO no such message: 999"),
    # Beyond SQLite's 64-bit integers (it once answered 'KO internal error').
    ("READ a 20-digit id", b"READ " + b"9" * 20 + b"\n", "KO no such message: " + "9" * 20),
    ("DELETE a 20-digit id", b"DELETE " + b"9" * 20 + b"\n",
     "KO no such message: " + "9" * 20),
    ("READ an Arabic-Indic digit", "READ ١\n".encode(), "KO usage: READ <id>"),
    ("DELETE a missing message", b"DELETE 999\n", "KO no such message: 999"),
    ("DELETE SUBJECT no match", b"DELETE SUBJECT nothing\n", "KO no message with that subject"),
    ("SEND to no one", b"SEND nobody hi\nQUIT\n.\n", "KO no such user: nobody"),
    ("SEND over the 1 MiB default --max-body",
     b"SEND alice big\n" + (b"z" * 8000 + b"\n") * 132 + b".\n",
     "KO message too large: at most 1048576 bytes"),
    ("SEND invalid UTF-8", b"SEND alice x\n\xff\xfe\n.\n", "KO message is not valid UTF-8"),
    ("SEND an overlong body line", b"SEND alice x\n" + b"y" * 9000 + b"\n.\n", TOO_LONG),
    ("SEND a bad checksum", b"SEND alice x#" + b"0" * 40 + b"\nDELMSG\n.\n",
     "KO checksum mismatch"),
    ("MESSAGE a bad checksum", b"MESSAGE x#" + b"1" * 40 + b"\n", "KO checksum mismatch"),
]


def test_bad_input_is_answered_and_the_connection_goes_on(server):
    with server.connect() as c:
        for what, data, expected in BAD_ANONYMOUS:
            c.send(data + b"COUNT\n")
            assert [c.reply(), c.reply()] == [[expected], [LOGIN_FIRST]], what
        cookie_of(c("REGISTER alice pw"))
        for what, data, expected in BAD_LOGGED_IN:
            c.send(data + b"COUNT\n")
            assert [c.reply(), c.reply()] == [[expected], ["COUNTED 0"]], what

        # An overlong line is answered as soon as it is known to be too long,
        # before its end arrives; the rest of it is skipped.
        c.send(b"Y" * 8200)
        assert c.reply() == [TOO_LONG]
        c.send(b"Y" * 100_000)
        c.send(b"YYY\nCOUNT\n")
        assert c.reply() == ["COUNTED 0"]
        # The limit is 8192 bytes, LF or CRLF not counted (a CRLF line was once
        # refused a byte earlier than an LF one).
        assert c("X" * 8192, end="\n") == [UNKNOWN]
        assert c("X" * 8192, end="\r\n") == [UNKNOWN]
        assert c("X" * 8193, end="\n") == [TOO_LONG]
        assert c("X" * 8193, end="\r\n") == [TOO_LONG]

        # Nothing of the above went in the mailbox or closed the connection.
        assert c("HELP") == HELP_REPLY
        assert c("LIST") == ["OK 0 messages", "."]


# 3. Pipelining, as `nc host port < requests.txt` does.


def test_a_piped_file_gets_every_reply_in_order(server):
    requests, expected = [], []

    def ask(lines, *reply):
        requests.extend(lines if isinstance(lines, list) else [lines])
        expected.append(list(reply))

    ask("REGISTER carol pw", "OK " + COOKIE)
    ask("MESSAGE staged one", "OK")
    ask("STORE carol", "OK")
    ask("COUNT", "COUNTED 1")
    ask("FROB", re.escape(UNKNOWN))
    for n in range(2, 22):
        ask(["SEND carol piped %d" % n, "line %d" % n, "..dotted", "."], r"OK \d+")
        ask("COUNT", "COUNTED %d" % n)
    ask("LIST FROM carol", r"OK 21 messages", *[r"\d+ carol %s .*" % DATE] * 21, r"\.")
    # A slow request (argon2) in the middle: what follows must wait for it.
    ask("LOGIN carol pw", "OK " + COOKIE)
    ask("GETMSG", r"OK message \d+", r"Id: \d+", "From: carol", "Date: " + DATE,
        "Subject: ", "", "staged one", r"\.")
    ask("DELMSG", "OK")
    ask("DELETE SUBJECT piped 2", "OK deleted 1")
    for n in range(19, 0, -1):
        ask("DELMSG", "OK")
        ask("COUNT", "COUNTED %d" % (n - 1))
    ask("HELP", *[re.escape(line) for line in HELP_REPLY])
    ask("COUNT", "COUNTED 0")
    # The file's last line has no newline: it is still read, at the end of input.
    ask("MESSAGE the end", "OK")

    piped = "\n".join(requests).encode("utf-8")
    with server.connect() as c:
        c.sock.sendall(piped)
        c.sock.shutdown(socket.SHUT_WR)
        replies = c.replies_until_eof()
    assert len(replies) == len(expected)
    for request, (reply, patterns) in enumerate(zip(replies, expected)):
        assert len(reply) == len(patterns), (request, reply, patterns)
        for line, pattern in zip(reply, patterns):
            assert re.fullmatch(pattern, line), (request, line, pattern)
    ids = [int(r[0][3:]) for r in replies if re.fullmatch(r"OK \d+", r[0])]
    assert ids == sorted(ids) and len(set(ids)) == 20


def test_a_piped_quit_ends_the_replies(server):
    with server.connect() as c:
        c.sock.sendall(b"COUNT\nQUIT\nCOUNT\nHELP\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.replies_until_eof() == [[LOGIN_FIRST], ["BYE"]]


def test_a_half_close_with_nothing_sent_closes(server):
    with server.connect() as c:
        c.sock.shutdown(socket.SHUT_WR)
        c.expect_eof()


# 4. A restart keeps everything.


# SIGTERM starts twistd's graceful shutdown: the chat gets a notice and this
# many seconds, then every connection is closed.
GRACE = ["--shutdown-grace", "1"]
CLEAN_EXIT = (0, -signal.SIGTERM)


def test_a_restart_keeps_accounts_sessions_and_mail(mailsvc_process):
    first = mailsvc_process(*GRACE)
    with first.connect() as c:
        alice = cookie_of(c("REGISTER alice s3cret"))
        bob = cookie_of(c("REGISTER bob hunter2"))
        c.send("SEND alice Before restart\nline one\n..two\n.\n")
        before = message_id(c.reply())
        assert c("MESSAGE staged text") == ["OK"]  # as bob, not yet stored
        gone = cookie_of(c("LOGIN bob hunter2"))
        assert c("LOGOUT") == ["OK"]
    # An idle connection does not hold up the shutdown, and is closed by it.
    idle = first.connect()
    assert first.stop() in CLEAN_EXIT
    idle.expect_eof()
    idle.close()
    assert first.log.wait_for(r"Server Shut Down", 0) is not None

    second = mailsvc_process(*GRACE)
    with second.connect() as c:
        assert c("REGISTER alice other") == ["KO user name already taken"]
        # Both sessions outlive the restart; the one logged out stays out.
        assert c("COUNT " + alice) == ["COUNTED 1"]
        assert c("COUNT " + gone) == ["KO unknown or expired session"]
        # bob's staged text is still staged in his session.
        assert c("STORE alice " + bob) == ["OK"]
        assert c("LOGIN alice s3cret")[0].startswith("OK ")
        listing = c("LIST")
        assert listing[0] == "OK 2 messages"
        assert re.fullmatch(r"%d bob %s Before restart" % (before, DATE), listing[1])
        assert c("READ %d" % before)[4:] == [
            "Subject: Before restart", "", "line one", "..two", ".",
        ]
        # Ids go on from where they were.
        c.send("SEND alice After\n.\n")
        assert message_id(c.reply()) > before + 1
    assert second.stop() in CLEAN_EXIT
    assert second.log.wait_for(r"Server Shut Down", 0) is not None


# 5. kill -9 in the middle of a burst loses nothing that was acknowledged.

# Each connection runs one request at a time, so a transaction holds at most
# one SEND per client: many clients and big bodies make each COMMIT write
# megabytes, which takes long enough that a kill sent the moment an OK arrives
# lands inside it if that OK was sent before its COMMIT was written.
CLIENTS = 32
WINDOW = 1  # requests in flight on each connection
BODY_LINES = 64  # of about 1000 bytes each
KILL_AFTER = 100  # acknowledgements before the kill
BURST_DEADLINE = 30  # seconds, a bound that a healthy run stays far below


def test_kill_9_loses_no_acknowledged_mail(mailsvc_process):
    # Durability, not a sender's rate: --max-sends out of the way.
    server = mailsvc_process("--max-per-peer", CLIENTS + 1, "--max-sends", 1_000_000)
    with server.connect() as c:
        cookie = cookie_of(c("REGISTER alice pw"))

    clients = [server.connect() for _ in range(CLIENTS)]
    by_socket = {c.sock: c for c in clients}
    buffers = {c: b"" for c in clients}
    # Per connection, the subjects sent and not yet answered, in order: replies
    # come in request order, so each OK <id> is the oldest one's.
    pending = {c: deque() for c in clients}
    sent = set()
    acknowledged = {}  # id -> subject
    serial = iter(range(10**9))

    def top_up(c):
        batch = []
        while len(pending[c]) < WINDOW:
            subject = "c%d-%d" % (clients.index(c), next(serial))
            pending[c].append(subject)
            sent.add(subject)
            line = "%s %s\n" % (subject, "x" * 990)
            batch.append("SEND alice %s %s\n%s.\n" % (subject, cookie, line * BODY_LINES))
        c.send("".join(batch))

    reader = sqlite3.connect("file:%s?mode=ro" % (server.db,), uri=True, timeout=5)

    def committed(numbers):
        rows = reader.execute(
            "SELECT id FROM messages WHERE id IN (%s)" % ",".join("?" * len(numbers)), numbers
        )
        return {number for (number,) in rows}

    for c in clients:
        top_up(c)
    open_clients = set(clients)
    killed = False
    deadline = time.monotonic() + BURST_DEADLINE
    try:
        while open_clients:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the burst did not finish in time"
            readable, _, _ = select.select([c.sock for c in open_clients], [], [], remaining)
            for c in map(by_socket.get, readable):
                try:
                    data = c.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                buffers[c] += data
                *lines, buffers[c] = buffers[c].split(b"\r\n")
                numbers = []
                for line in lines:
                    line = line.decode()
                    assert re.fullmatch(r"OK \d+", line), line
                    number = int(line[3:])
                    assert number not in acknowledged, "id %d acknowledged twice" % number
                    acknowledged[number] = pending[c].popleft()
                    numbers.append(number)
                if numbers and not killed:
                    # The moment its OK arrives, a message is in the database
                    # for any reader (committed, not merely about to be).
                    missing = set(numbers) - committed(numbers)
                    assert not missing, "acknowledged before its commit: %r" % (missing,)
                if not killed and len(acknowledged) >= KILL_AFTER and lines:
                    # At once, the moment an OK arrives: were it sent before
                    # its transaction was written, the kill would land inside
                    # the COMMIT.
                    server.kill()
                    killed = True
                if not data:
                    open_clients.discard(c)
                elif not killed:
                    top_up(c)
    finally:
        reader.close()
        for c in clients:
            c.close()
    in_flight = sum(len(p) for p in pending.values())
    assert killed and in_flight > 0, "the kill came after the burst, not during it"

    again = mailsvc_process()
    with again.connect() as c:
        assert c("LOGIN alice pw")[0].startswith("OK ")
        listing = c("LIST")
    assert listing[0] == "OK %d messages" % (len(listing) - 2,)
    stored = {}
    for line in listing[1:-1]:
        number, sender, date, subject = line.split(" ", 3)
        assert sender == "alice" and re.fullmatch(DATE, date), line
        assert int(number) not in stored, "id %s listed twice" % number
        stored[int(number)] = subject
    subjects = list(stored.values())
    assert len(subjects) == len(set(subjects)), "a message was delivered twice"
    assert set(subjects) <= set(sent)
    lost = {n: s for n, s in acknowledged.items() if stored.get(n) != s}
    assert not lost, "acknowledged but not stored (id: subject): %r" % (lost,)
    print(
        "sent %d, acknowledged %d, stored %d, unanswered at the kill %d"
        % (len(sent), len(acknowledged), len(stored), in_flight)
    )


# 6. twistd finds the plugin, installed either way.


def run(command, cwd, env=None, timeout=60):
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env or neutral_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print("$", " ".join(map(str, command)), "->", result.returncode)
    print(result.stdout, result.stderr)
    return result


LISTED = re.compile(r"^\s+mailsvc\s", re.MULTILINE)


def test_twistd_lists_mailsvc_from_a_neutral_directory(tmp_path):
    # The install `make test` made (editable), not the checkout, must provide
    # the plugin: tmp_path is not the repo, and PYTHONPATH is cleared.
    result = run([TWISTD, "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert LISTED.search(result.stdout), "mailsvc is not among twistd's commands"


def test_the_default_ports_are_valid_endpoints(tmp_path):
    # A bare `twistd mailsvc` once failed: usage.Options does not coerce
    # defaults, and '8025' is no endpoint description. Checked here without
    # listening, since the defaults would bind every interface.
    check = (
        "from twisted.internet import endpoints, reactor\n"
        "from mailsvc.tap import Options\n"
        "options = Options()\n"
        "options.parseOptions(['--db', 'x.sqlite'])\n"
        "for front in options.fronts:\n"
        "    endpoints.serverFromString(reactor, options[front.option])\n"
    )
    result = run([sys.executable, "-c", check], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_twistd_mailsvc_help_documents_the_options(tmp_path):
    result = run([TWISTD, "mailsvc", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for option in ("-p, --mail-port=", "--port=", "-c, --chat-port=", "--db="):
        assert option in result.stdout, option


# Run under `python -S`, printing what an installed mailsvc looks like.
PROBE = r"""
import json, sys
from twisted.plugin import getPlugins
from twisted.application.service import IServiceMaker
report = {"path": sys.path}
try:
    import mailsvc, twisted, twisted.plugins
    report["mailsvc"] = mailsvc.__file__
    report["twisted"] = twisted.__file__
    report["plugins"] = sorted(p.tapname for p in getPlugins(IServiceMaker))
except ImportError as e:
    report["error"] = repr(e)
    report["plugins"] = sorted(p.tapname for p in getPlugins(IServiceMaker))
print(json.dumps(report))
"""


def test_a_non_editable_install_is_found_by_twistd(tmp_path):
    # Build from a copy of the working tree, so pip's build/ and *.egg-info
    # never land in the checkout that others are editing.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
            ".pytest_cache", "dropin.cache", "*.sqlite*", "*.log", "*.pid",
        ),
    )
    target = tmp_path / "target"
    result = run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", target, source],
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 0
    assert (target / "twisted" / "plugins" / "mailsvc_plugin.py").is_file()
    assert (target / "mailsvc" / "__init__.py").is_file()
    # Either of these would shadow Twisted's own packages.
    assert not (target / "twisted" / "__init__.py").exists()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()

    # The editable install puts the repo on sys.path through a .pth file in
    # site-packages, and `python -I` still runs site, so it would still find
    # mailsvc in the checkout. `python -S` skips site, and with it every .pth;
    # the site-packages directories on PYTHONPATH then give Twisted and the
    # dependencies, without the .pth lines in them. A control run without
    # <target> proves that this hides the editable install.
    neutral = tmp_path / "elsewhere"
    neutral.mkdir()
    packages = [p for p in site.getsitepackages() if os.path.isdir(p)]

    def probe(*path):
        env = neutral_env(PYTHONPATH=os.pathsep.join(map(str, path)))
        result = run([sys.executable, "-S", "-c", PROBE], cwd=neutral, env=env)
        assert result.returncode == 0
        report = json.loads(result.stdout)
        assert not any(
            p and Path(p).resolve() == REPO for p in report["path"]
        ), "the repo is on sys.path"
        return report, env

    control, _ = probe(*packages)
    assert "mailsvc" not in control["plugins"] and "error" in control, control

    report, env = probe(target, *packages)
    assert "mailsvc" in report["plugins"]
    assert Path(report["mailsvc"]).resolve().is_relative_to(target.resolve())
    assert not Path(report["twisted"]).resolve().is_relative_to(target.resolve())

    # And the venv's twistd itself, run the same way.
    result = run([sys.executable, "-S", TWISTD, "--help"], cwd=neutral, env=env)
    assert result.returncode == 0
    assert LISTED.search(result.stdout)


# 7. Daemon mode.


def test_daemon_mode(tmp_path):
    pidfile = tmp_path / "twistd.pid"
    logfile = tmp_path / "twistd.log"
    command = twistd_command(daemon=True, pidfile=pidfile, logfile=logfile,
                             db=tmp_path / "mailsvc.sqlite", extra=GRACE)
    try:
        # twistd's first process returns once the daemon has started its
        # services (it waits for the daemon's report on a pipe).
        result = run(command, cwd=tmp_path, env=dict(os.environ), timeout=START_TIMEOUT)
        assert result.returncode == 0
        pid = int(pidfile.read_text())
        assert process_alive(pid) and is_twistd(pid)
        started = re.search(r"\] front mail listening on .*:(\d+)", logfile.read_text())
        assert started, "no 'front mail listening on' in the log file"
        with Client(int(started.group(1))) as c:
            assert c("COUNT") == [LOGIN_FIRST]
            assert c("HELP") == HELP_REPLY
            # The daemon's threads (password hashing, storage) work after the fork.
            assert c("REGISTER daemon pw")[0].startswith("OK ")
            assert c("SEND daemon hi\nbody\n.") == ["OK 1"]
            assert c("COUNT") == ["COUNTED 1"]
        os.kill(pid, signal.SIGTERM)
        assert wait_for_exit(pid, STOP_TIMEOUT), "the daemon ignored SIGTERM"
        assert not pidfile.exists(), "the daemon left its pidfile behind"
        assert "Server Shut Down" in logfile.read_text()
    finally:
        # Whatever failed, no daemon outlives the test.
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and process_alive(pid) and is_twistd(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, STOP_TIMEOUT)
        if logfile.exists():
            print("[daemon log]\n" + logfile.read_text())
