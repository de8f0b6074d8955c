"""
Issue 16, findings 3, 7 and 11 replayed against C{twistd mailsvc}: a chat log
that cannot be written (C{--chat-log /dev/full}), log forging through chat
text, and the modes of the files the server creates.
"""

import os
import re
import select
import signal
import stat
import subprocess
import time

import pytest

from mailsvc.testing.process import (
    ALL_LISTENING,
    LISTENING,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Client,
    TwistdServer,
    twistd_command,
)

pytestmark = pytest.mark.e2e

GRACE = 1
CLEAN_EXIT = (0, -signal.SIGTERM)
CANNOT_WRITE = r"cannot write chat log /dev/full"
# Each makes a new line for some reader of a log, or drives a terminal.
FORGERS = "a\rb\x85c\u2028d\u2029e\x1b[2J\x1b]0;owned\x07f\u202eg"
RAW = "\r\x85\u2028\u2029\x1b\x07\u202e"


def connect(port):
    c = Client(port)
    assert c.line() == "HELLO"
    return c


def join(port, nick):
    c = connect(port)
    c.send("NICK %s\n" % (nick,))
    assert c.line() == "READY"
    return c


def who(c, *nicks):
    """Assert who is here; a barrier for whatever was on its way to C{c}."""
    c.send("/who\n")
    assert c.line() == "* here: " + ", ".join(nicks)


@pytest.fixture
def twistd(tmp_path):
    """Starts C{twistd -n mailsvc} with extra arguments; errors in its log are
    for the test to judge (a failing chat log logs one on purpose)."""
    servers = []

    def start(*extra):
        server = TwistdServer(tmp_path, extra=extra)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


def test_a_chat_log_on_a_full_disk(twistd):
    server = twistd(
        "--chat-log", "/dev/full", "--shutdown-grace", GRACE, "--max-per-peer", 3, "--history", 0
    )
    port = server.chat_port
    alice = join(port, "alice")
    bob = join(port, "bob")
    assert alice.line() == "* bob joined"
    # Public lines: whoever says one stays, and is heard.
    for n in range(3):
        alice.send("hello %d\n" % (n,))
        assert bob.line() == "alice: hello %d" % (n,)
    assert server.log.wait_for(CANNOT_WRITE, SOCKET_TIMEOUT) is not None
    alice.send("still here\n")
    assert bob.line() == "alice: still here"
    who(alice, "alice", "bob")
    # Joins and leaves, more of them than one address may hold at once: each
    # leave frees its nickname and its connection slot.
    for n in range(5):
        carol = join(port, "carol")
        assert alice.line() == "* carol joined"
        carol.send("BYE\n")
        carol.expect_eof()
        carol.close()
        assert alice.line() == "* carol left"
        who(alice, "alice", "bob")
    # SIGTERM completes within its grace.
    signalled = time.monotonic()
    assert server.stop(GRACE + STOP_TIMEOUT) in CLEAN_EXIT
    assert time.monotonic() - signalled < GRACE + 6  # the grace, then at most 5 s
    assert alice.line() == "Server will shut down in %d seconds" % (GRACE,)
    for c in (alice, bob):
        c.close()
    assert server.log.wait_for(r"Server Shut Down", 0) is not None
    # Logged once for the whole run.
    problems = server.problems()
    assert len(problems) == 1 and re.search(CANNOT_WRITE, problems[0]), problems
    assert "Traceback" not in server.log.text()


def test_chat_text_cannot_forge_a_log_line(twistd, tmp_path):
    path = tmp_path / "chat-forged.log"
    server = twistd("--chat-log", path, "--shutdown-grace", 0, "--history", 0)
    alice = join(server.chat_port, "alice")
    bob = join(server.chat_port, "bob")
    assert alice.line() == "* bob joined"
    forged = "2023-11-14T22:13:20.000+00:00 root: forged"
    alice.send("%s\n" % (FORGERS,))
    alice.send("x\r%s\n" % (forged,))
    assert bob.line() == "alice: " + FORGERS  # the chat itself passes it on
    assert bob.line() == "alice: x\r" + forged
    # The other places user text arrives: names and nicknames refused.
    mail = server.connect()
    assert mail("LOGIN %s password" % (FORGERS,))[0].startswith("KO")
    # (Split on the whitespace among them: it registers "a".)
    assert mail("REGISTER %s password" % (FORGERS,))[0].startswith(("OK", "KO"))
    assert mail("LOGIN %s password" % (FORGERS,))[0].startswith(("OK", "KO"))
    mail.close()
    guest = connect(server.chat_port)
    guest.send("NICK %s\n" % (FORGERS,))
    assert guest.line().startswith("RETRY")
    guest.close()
    for c in (alice, bob):
        c.close()
    assert server.stop() in CLEAN_EXIT

    text = path.read_text(encoding="utf-8")
    for character in RAW:
        assert character not in text
    lines = text.split("\n")
    assert lines[-1] == "" and text.splitlines() == lines[:-1]
    entries = [line.split(" ", 1)[1] for line in lines[:-1]]
    assert entries[2:4] == [
        "alice: a\\x0db\\x85c\\u2028d\\u2029e\\x1b[2J\\x1b]0;owned\\x07f\\u202eg",
        "alice: x\\x0d" + forged,
    ]
    log = server.log.text()
    for character in RAW:
        assert character not in log
    assert server.problems() == []


# File modes


def wait_for_line(path, pattern, timeout):
    """The first match of C{pattern} in the file at C{path}, waiting up to
    C{timeout} seconds (None if none came): the file is read again every
    50 ms against the deadline, as nothing can be waited on for it."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(pattern)
    while True:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    found = pattern.search(line)
                    if found:
                        return found
        if time.monotonic() >= deadline:
            return None
        select.select([], [], [], 0.05)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        select.select([], [], [], 0.05)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def start_with_umask(directory, umask, twistd_options=()):
    """C{twistd [twistd_options] -n mailsvc} logging to a file, started with
    C{umask}; the process and its ports."""
    logfile = directory / "twistd.log"
    command = twistd_command(
        db=directory / "mailsvc.sqlite",
        logfile=logfile,
        extra=["--chat-log", directory / "chat.log", "--chat-log-size", 150,
               "--history", 0, "--shutdown-grace", 0],
    )
    command[1:1] = twistd_options
    process = subprocess.Popen(
        command,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        umask=umask,
    )
    if wait_for_line(logfile, ALL_LISTENING, START_TIMEOUT) is None:
        process.kill()
        process.wait(STOP_TIMEOUT)
        raise AssertionError("twistd did not start:\n" + logfile.read_text())
    ports = {}
    for line in logfile.read_text().splitlines():
        m = LISTENING.search(line)
        if m:
            ports[m.group("front")] = int(m.group("port"))
    return process, ports


# With no --umask, whatever umask twistd inherits; with twistd's own --umask
# (an option before the subcommand), that one: the way to share the logs with
# a group. The database is never the group's.
@pytest.mark.parametrize("twistd_options, expected", [((), 0o600), (("--umask=0027",), 0o640)])
def test_files_are_their_owners_only_whatever_the_umask(tmp_path, twistd_options, expected):
    process, ports = start_with_umask(tmp_path, 0, twistd_options)
    try:
        chat = join(ports["chat"], "alice")
        mail = Client(ports["mail"])
        assert mail("REGISTER alice password")[0].startswith("OK")
        for n in range(4):
            chat.send("line %d with some words to fill the log\n" % (n,))
        # A flush, then a line more: the next flush rotates the log.
        wait_for(lambda: os.path.getsize(tmp_path / "chat.log") > 150, SOCKET_TIMEOUT, "a flush")
        chat.send("one more line\n")
        wait_for(lambda: os.path.exists(tmp_path / "chat.log.1"), SOCKET_TIMEOUT, "a rotation")
        logs = ["chat.log", "chat.log.1", "twistd.log"]
        database = ["mailsvc.sqlite", "mailsvc.sqlite-wal", "mailsvc.sqlite-shm"]
        modes = {name: oct(mode(tmp_path / name)) for name in logs + database}
        assert modes == dict(
            {name: oct(expected) for name in logs}, **{name: oct(0o600) for name in database}
        )
        chat.close()
        mail.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
            raise
    assert status in CLEAN_EXIT
    log = (tmp_path / "twistd.log").read_text()
    assert "Traceback" not in log and "#error]" not in log, log
