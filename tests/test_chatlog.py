"""
The chat log (mailsvc.core.chatlog): a file that fails never breaks the chat
or the shutdown; rotation by size; escaping of whatever could forge a line.
"""

import errno
import os

import pytest
from twisted.logger import formatEvent

from mailsvc.core.chatlog import ChatLog, open_log_file
from mailsvc.core.passwords import Passwords
from mailsvc.core.room import ChatRoom
from mailsvc.core.service import SharedService
from mailsvc.fronts.chat import ChatFactory
from mailsvc.logtext import escape
from mailsvc.store.sqlite import SQLiteStorage
from wire import Wire

STAMP = "2023-11-14T22:13:20.000+00:00 "
# Each of these starts a new line for some reader of the log, or drives the
# terminal of whoever watches it.
FORGERS = "a\rb\x85c\u2028d\u2029e\x1b[2J\x1b]0;owned\x07f\x9bg\u202eh\x00i"


class Disk:
    """A file that fails with ENOSPC while C{full}; keeps what it was given."""

    def __init__(self):
        self.full = False
        self.data = bytearray()
        self.closed = False
        self.opened = 0

    def open(self):
        self.opened += 1
        self.closed = False
        return self

    def write(self, data):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += data

    def flush(self):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.closed = True
        self.flush()

    def lines(self):
        return self.data.decode("utf-8").splitlines()


@pytest.fixture
def disk():
    return Disk()


@pytest.fixture
def chat_log(disk, clock):
    log = ChatLog("chat.log", clock, opener=disk.open)
    log.startService()
    yield log
    if log.running:
        log.stopService()


@pytest.fixture
def chat(chat_log, clock):
    service = SharedService(
        SQLiteStorage.inline(), Passwords.inline(), clock, ChatRoom(chat_log, history=0)
    )
    service.startService()
    factory = ChatFactory(service, clock=clock, max_per_peer=2)
    yield factory
    service.stopService()


def join(chat, nick, port):
    wire = Wire(chat, port=port)
    assert wire.replies() == ["HELLO"]
    assert wire("NICK " + nick) == ["READY"]
    return wire


def entries(disk):
    """The lines of the log without their timestamps."""
    return [line.split(" ", 1)[1] for line in disk.lines()]


def problems(logged_errors):
    """The errors logged, as text; the list is emptied (they were expected)."""
    texts = [formatEvent(e) for e in logged_errors]
    logged_errors.clear()
    return texts


# A file that cannot be written


def test_a_full_disk_breaks_neither_the_chat_nor_the_room(chat, chat_log, disk, clock,
                                                          logged_errors):
    disk.full = True
    alice = join(chat, "alice", 50001)
    bob = join(chat, "bob", 50002)
    assert alice.replies() == ["* bob joined"]
    for _ in range(3):
        clock.advance(0.5)  # flushes that fail
    # Whoever says a public line stays connected, and is heard.
    assert alice("hello") == []
    assert bob.replies() == ["alice: hello"]
    assert not alice.transport.disconnecting
    clock.advance(0.5)
    # A join, refused or not, leaves no ghost: a leave frees the nickname
    # and the address's connection slot.
    bob.protocol.connectionLost(None)
    assert alice.replies() == ["* bob left"]
    assert alice("/who") == ["* here: alice"]
    assert chat.admission._per_peer == {"127.0.0.1": 1}
    again = join(chat, "bob", 50003)
    assert alice.replies() == ["* bob joined"]
    assert chat.admission._per_peer == {"127.0.0.1": 2}
    again.protocol.connectionLost(None)
    alice.protocol.connectionLost(None)
    assert chat.admission.connections == set()
    assert disk.data == b""
    # Logged once, counted every time.
    assert chat_log.errors >= 4
    texts = problems(logged_errors)
    assert len(texts) == 1
    assert "cannot write chat log chat.log: [Errno 28] No space left on device" in texts[0]


def test_lines_wait_and_the_flush_resumes_once_the_file_works(chat_log, disk, clock,
                                                              logged_errors):
    chat_log.said("alice", "before")
    disk.full = True
    clock.advance(0.5)
    chat_log.said("alice", "during")
    clock.advance(5)
    assert disk.data == b""
    disk.full = False
    clock.advance(0.5)
    assert entries(disk) == ["alice: before", "alice: during"]
    assert len(problems(logged_errors)) == 1
    # A second failure is logged again: the first one was over.
    disk.full = True
    chat_log.said("alice", "later")
    clock.advance(1)
    assert len(problems(logged_errors)) == 1
    disk.full = False
    clock.advance(0.5)
    assert entries(disk)[-1] == "alice: later"
    assert chat_log.lost == 0


def test_a_file_that_stays_broken_costs_a_bounded_memory(disk, clock, logged_errors):
    chat_log = ChatLog("chat.log", clock, opener=disk.open, max_pending=1000)
    chat_log.startService()
    disk.full = True
    for i in range(1000):
        chat_log.said("alice", "line %04d" % (i,))
        clock.advance(0.01)
    assert len(chat_log._pending) <= 1000
    disk.full = False
    clock.advance(0.5)
    lines = disk.lines()
    # The newest lines were kept, whole; the others counted as lost.
    assert lines[-1].endswith("alice: line 0999")
    assert all(line.startswith("2023-11-14T") for line in lines)
    assert chat_log.lost + len(lines) == 1000
    chat_log.stopService()
    problems(logged_errors)


def test_a_part_written_line_is_finished_first(clock, tmp_path, logged_errors):
    class Cramped:
        """Takes 10 bytes, then is full until room is made."""

        written = 0
        room = 10
        data = b""

        def write(self, data):
            if not self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            taken = data[: self.room]
            self.data += taken
            self.written += len(taken)
            self.room -= len(taken)
            if len(taken) < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    cramped = Cramped()
    chat_log = ChatLog("chat.log", clock, opener=lambda: cramped)
    chat_log.startService()
    chat_log.said("alice", "hello")
    clock.advance(0.5)
    cramped.room = 1000
    clock.advance(0.5)
    assert cramped.data.decode() == STAMP + "alice: hello\n"
    chat_log.stopService()
    assert len(problems(logged_errors)) == 1


def test_a_file_that_cannot_be_opened_again(clock, logged_errors):
    attempts = []

    def opener():
        attempts.append(1)
        raise PermissionError(errno.EACCES, "Permission denied")

    chat_log = ChatLog("chat.log", clock, opener=opener)
    chat_log.startService()
    chat_log.said("alice", "hello")
    for _ in range(4):
        clock.advance(0.5)
    assert len(attempts) == 5  # at the start, then at each flush
    chat_log.stopService()
    texts = problems(logged_errors)
    assert len(texts) == 1 and "cannot open chat log" in texts[0]


def test_stopping_completes_whatever_the_file_does(chat_log, disk, clock, logged_errors):
    chat_log.said("alice", "last words")
    disk.full = True
    assert chat_log.stopService() is None  # no Deferred left waiting
    assert not chat_log.running and not chat_log._flusher.running
    assert disk.closed
    assert chat_log.errors == 1
    problems(logged_errors)


def test_the_shutdown_of_a_whole_server_completes_on_a_full_disk(disk, clock, logged_errors):
    # The leaves of a shutdown reach the log after the listeners stop: a
    # failing log must still let the store stop (the tree's last child).
    from twisted.application import service as app_service

    from mailsvc.application import OneByOne

    top = OneByOne()
    stopped = []

    class Store(app_service.Service):
        def stopService(self):
            stopped.append("store")

    Store().setServiceParent(top)
    chat_log = ChatLog("chat.log", clock, opener=disk.open)
    chat_log.setServiceParent(top)
    top.startService()
    chat_log.said("alice", "bye")
    disk.full = True
    done = []
    top.stopService().addBoth(done.append)
    assert done == [None] and stopped == ["store"]
    problems(logged_errors)


# Rotation


def test_rotates_by_size_and_keeps_so_many(tmp_path, clock):
    path = tmp_path / "chat.log"
    chat_log = ChatLog(str(path), clock, rotate_length=200, max_rotated=2)
    chat_log.startService()
    for i in range(12):
        chat_log.said("alice", "message %02d %s" % (i, "x" * 40))  # 84 bytes a line
        clock.advance(0.5)
    chat_log.stopService()
    names = sorted(os.listdir(tmp_path))
    assert names == ["chat.log", "chat.log.1", "chat.log.2"]
    for name in names:
        assert os.path.getsize(tmp_path / name) <= 200 + 84
    kept = [
        line
        for name in ("chat.log.2", "chat.log.1", "chat.log")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    # The newest lines, in order, none cut; the oldest ones rotated away.
    numbers = [int(line.split()[3]) for line in kept]
    assert numbers == list(range(12 - len(numbers), 12))
    assert len(numbers) >= 6


def test_a_device_is_never_rotated(tmp_path):
    log_file = open_log_file(os.devnull, rotate_length=1)
    try:
        log_file.write(b"x" * 10)
        log_file.write(b"y")
        assert not log_file.shouldRotate()
    finally:
        log_file.close()
    assert os.path.exists(os.devnull) and not os.path.exists(os.devnull + ".1")


# Escaping


def test_escape():
    assert escape("héllo wörld ☃ 日本語 🎉 {nick} 100%") == "héllo wörld ☃ 日本語 🎉 {nick} 100%"
    assert escape(FORGERS) == (
        "a\\x0db\\x85c\\u2028d\\u2029e\\x1b[2J\\x1b]0;owned\\x07f\\x9bg\\u202eh\\x00i"
    )
    assert escape("C:\\temp\\x1b") == "C:\\\\temp\\\\x1b"
    assert escape("tab\there") == "tab\\x09here"


def test_nothing_said_can_make_a_line_of_its_own(chat_log, disk, clock):
    room = ChatRoom(chat_log)

    class Participant:
        format = staticmethod(lambda event: b"")
        peer = "127.0.0.1:4242"

        def send(self, data):
            pass

    alice = Participant()
    room.join(alice, "alice")
    room.say(alice, FORGERS)
    room.say(alice, "2023-11-14T22:13:20.000+00:00 root: forged\r\nnext")
    room.leave(alice)
    clock.advance(0.5)
    text = disk.data.decode("utf-8")
    # One entry a line, whichever line breaks a reader knows.
    assert text.splitlines() == text.split("\n")[:-1]
    assert len(text.split("\n")) == 5
    for character in "\r\x85\u2028\u2029\x1b\x9b\x07\x00\u202e":
        assert character not in text
    assert text.split("\n")[2] == (
        STAMP + "alice: 2023-11-14T22:13:20.000+00:00 root: forged\\x0d\\x0anext"
    )
