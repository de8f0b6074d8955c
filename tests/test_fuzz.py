"""
Fuzzing both ports: property tests of the parsers over StringTransport
(hypothesis), and random bytes thrown at a real server over sockets.

Longer runs: MAILSVC_FUZZ_EXAMPLES (hypothesis examples per property, default
200), MAILSVC_FUZZ_SECONDS (the network fuzz's duration, default 3) and
MAILSVC_FUZZ_SEED (replays one network fuzz run; each run prints its seed).
"""

import collections
import contextlib
import hashlib
import os
import random
import re
import socket
import string
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from conftest import describe, errors_logged
from mailsvc.fronts.chat import ChatFactory
from mailsvc.fronts.mail import HELP, MailFactory, MailProtocol
from mailsvc.core.passwords import Passwords
from mailsvc.core.service import SharedService
from mailsvc.store.sqlite import SQLiteStorage
from mailsvc.testing.process import MULTILINE, SOCKET_TIMEOUT
from wire import Wire

# Hypothesis caches what it learns even without an example database: not in
# the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / ("mailsvc-hypothesis-%d" % os.getuid()))

EXAMPLES = int(os.environ.get("MAILSVC_FUZZ_EXAMPLES") or 200)
SECONDS = float(os.environ.get("MAILSVC_FUZZ_SECONDS") or 3)

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No example database: nothing is written into the repository.
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# A small line limit, so that random input often crosses it, and the default.
LIMIT = 200
LIMITS = st.sampled_from([LIMIT, LIMIT, 8192])

HELP_REPLY = ["OK commands"] + HELP + ["."]
# The first line of every reply the mail port sends (docs/protocol.md, Replies).
FIRST_LINE = re.compile(r"(OK|OK .*|KO .+|COUNTED \d+|BYE|You should log in first\.)\Z")
CHECKSUM = re.compile(r"#([0-9A-Fa-f]{40})\Z")
COOKIE_ALPHABET = string.ascii_letters + string.digits + "_-"
# The verbs the mail port knows, read from the protocol so new ones are fuzzed too.
MAIL_VERBS = sorted(
    {name[3:] for name in dir(MailProtocol) if name.startswith("do_")} | {"SEND"}
)
# Byte sequences that are not UTF-8: a stray continuation byte, a truncated
# sequence, an overlong encoding, an encoded surrogate, bytes never valid.
NOT_UTF8 = [b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\xfe"]
ENDINGS = [b"\n", b"\r\n", b"\n", b"\r\n", b"\r", b"", b"\r\r\n", b"\n\n"]

# Shared by every example: only its decoy hash costs anything to build.
PASSWORDS = Passwords.inline()


# Helpers


@contextlib.contextmanager
def fresh_service():
    """A started synchronous service on a new in-memory database, and its clock."""
    clock = Clock()
    clock.advance(1_700_000_000)
    service = SharedService(SQLiteStorage.inline(), PASSWORDS, clock)
    service.startService()
    try:
        yield service, clock
    finally:
        service.stopService()


@contextlib.contextmanager
def no_errors_logged():
    """
    Fail the example (so that hypothesis shrinks it) if anything logged an error
    or a failure while it ran. The autouse logged_errors fixture fails the test
    too, but only once all examples have run.
    """
    with errors_logged() as seen:
        yield
    assert not seen, describe(seen)


def pieces(data, cuts):
    """C{data} cut at the offsets in C{cuts}."""
    bounds = sorted({0, len(data), *(c for c in cuts if 0 < c < len(data))})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def mail_replies(lines):
    """
    Group reply lines into replies: a line, or a multi-line reply up to its
    "." line. Every reply must be whole: the server writes each in one write.
    """
    replies = []
    i = 0
    while i < len(lines):
        assert FIRST_LINE.match(lines[i]), "not a reply: %r" % (lines[i],)
        if MULTILINE.match(lines[i]):
            assert "." in lines[i + 1 :], "unterminated reply: %r" % (lines[i:],)
            end = lines.index(".", i + 1)
        else:
            end = i
        replies.append(lines[i : end + 1])
        i = end + 1
    return replies


def mail_line(raw, in_body, limit):
    """
    What the mail port owes one complete line (C{raw}, without its LF), from
    docs/protocol.md: C{"reply"} (one reply), C{"silent"} (a SEND line or a
    body line: no reply of its own), or C{"quit"} (BYE, then the close).
    Returns that and whether a SEND body is being read after the line.
    """
    line = raw[:-1] if raw.endswith(b"\r") else raw
    if in_body:
        return ("reply", False) if line == b"." else ("silent", True)
    if len(line) > limit:
        return "reply", False
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "reply", False
    content, intact = text, True
    match = CHECKSUM.search(text)
    if match:
        content = text[: match.start()]
        digest = hashlib.sha1(content.encode("utf-8")).hexdigest()
        intact = digest == match.group(1).lower()
    words = content.split(None, 1)
    verb = words[0].upper() if words else ""
    if verb == "SEND":
        # The body is read whatever the SEND line says, checksum included.
        return "silent", True
    if verb == "QUIT" and intact:
        return "quit", False
    return "reply", False


def mail_end_state(data, limit):
    """Whether a SEND body is open at the end of C{data}, and its last partial line."""
    in_body = False
    *complete, partial = data.split(b"\n")
    for raw in complete:
        _, in_body = mail_line(raw, in_body, limit)
    return in_body, partial


def make_mail_factory(service, clock, limit=LIMIT):
    return MailFactory(service, clock=clock, line_limit=limit)


def make_chat_factory(service, clock, limit=LIMIT):
    return ChatFactory(service, clock=clock, line_limit=limit)


# 1a. The mail port's parser


def check_mail_stream(data, cuts, half_close, limit):
    """
    Feed C{data} to a mail connection in the pieces C{cuts} makes. After every
    piece, each complete request line outside a SEND body has had exactly one
    reply (a line still arriving may have had its "line too long" already),
    and QUIT has had BYE and closed the connection. Then either the client
    half-closes (every request, the last partial one too, gets its reply and
    the server closes), or a HELP after everything gets its reply, last.
    """
    with fresh_service() as (service, clock), no_errors_logged():
        wire = Wire(make_mail_factory(service, clock, limit))
        assert wire.protocol.LINE_LIMIT == limit
        if not half_close:
            in_body, partial = mail_end_state(data, limit)
            if partial:
                data += b"\n"
                in_body, _ = mail_end_state(data, limit)
            data += (b".\n" if in_body else b"") + b"HELP\n"
        got = []
        owed = 0
        in_body = False
        start = 0  # where the line being read begins
        fed = 0
        for piece in pieces(data, cuts):
            wire.protocol.dataReceived(piece)
            fed += len(piece)
            got += mail_replies(wire.replies())
            quit = False
            while not quit:
                end = data.find(b"\n", start, fed)
                if end < 0:
                    break
                kind, in_body = mail_line(data[start:end], in_body, limit)
                start = end + 1
                owed += kind != "silent"
                quit = kind == "quit"
            if quit:
                assert len(got) == owed and got[-1] == ["BYE"], got
                assert wire.transport.disconnecting
                return
            if wire.transport.disconnecting:
                # Not today's behaviour, but a limit may end a connection: it
                # must say why, in one refusal, as its last words.
                assert got and len(got[-1]) == 1 and got[-1][0].startswith("KO "), got
                return
            # A line longer than the limit is refused without waiting for its LF.
            early = 1 if not in_body and fed - start > limit else 0
            assert owed <= len(got) <= owed + early, (owed, got)
        if half_close:
            if start < len(data):
                kind, _ = mail_line(data[start:], in_body, limit)
                owed += kind != "silent"
            wire.protocol.readConnectionLost()
            got += mail_replies(wire.replies())
            assert len(got) == owed, (owed, got)
            assert wire.transport.disconnecting
        else:
            assert len(got) == owed, (owed, got)
            assert got[-1] == HELP_REPLY
            assert not wire.transport.disconnecting


# Preambles that give the connection a session and some mail, so that the
# requests after them reach the mailbox code, not only the session check.
MAIL_PREAMBLES = [
    b"",
    b"REGISTER alice pw\n",
    b"REGISTER bob pw\nREGISTER alice pw\nMESSAGE hi\nSTORE alice\nSTORE bob\n",
    b"REGISTER alice pw\nSEND alice hello\n..dot\nbody\n.\nSEND alice second\n.\n",
]


@st.composite
def chunked(draw, stream, half_close=st.booleans()):
    """(stream, where to cut it, whether the client half-closes, the line limit)"""
    limit = draw(LIMITS)
    data = draw(stream(limit) if callable(stream) else stream)
    half = draw(half_close)
    cuts = draw(st.lists(st.integers(0, len(data) + 40), max_size=24))
    return data, cuts, half, limit


def mail_words():
    return st.one_of(
        st.sampled_from(
            [
                "alice", "bob", "Alice", "BOB", "nobody", "bad-name", "a" * 33,
                "pw", "two words", "FROM", "from", "SUBJECT", "subject", "hello",
                "0", "1", "2", "3", "007", "-1", "+1", "1.5", "0x10",
                "9223372036854775807", "9223372036854775808", "1" * 30,
                "\u0661\u0662", "\u00b2", ".", "..", "#", "", " ", "\t", "\x00",
                "\u2028", "\x85", "\u017f",
            ]
        ),
        st.text(COOKIE_ALPHABET, min_size=43, max_size=43),
        st.text(max_size=12),
        st.integers(0, 2**70).map(str),
        # Ids longer than Python converts to an int (4300 digits), and ids
        # padded with zeros beyond that.
        st.integers(19, 8000).map(lambda n: "9" * n),
        st.integers(1, 8000).map(lambda n: "0" * n + "1"),
    )


@st.composite
def mail_request(draw):
    verb = draw(st.sampled_from(MAIL_VERBS + ["", "HELO", "QUITE", "SENDX", "\u017fend", "quıt"]))
    verb = draw(st.sampled_from([str, str.lower, str.title, str.swapcase]))(verb)
    args = draw(st.lists(mail_words(), max_size=4))
    separator = draw(st.sampled_from([" ", "  ", "\t", "", " \t "]))
    text = verb + separator + " ".join(args) if args else verb
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    suffix = draw(
        st.sampled_from(
            [
                "",
                "",
                "#" + digest,
                "#" + digest.upper(),
                "#" + "0" * 40,
                "#" + digest[:39],
                " #" + digest,
            ]
        )
    )
    raw = (text + suffix).encode("utf-8")
    if draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(NOT_UTF8)) + raw[at:]
    return raw


def mail_line_strategy(limit):
    return st.one_of(
        mail_request(),
        # Body lines and terminators.
        st.sampled_from([b".", b"..", b".x", b"", b" ", b"body", b". ", b".\r"]),
        # Around the line limit, rendered once the limit is known.
        st.tuples(st.integers(-2, 3), st.sampled_from([b"", b"\r"])).map(
            lambda t: b"x" * (limit + t[0]) + t[1]
        ),
        st.binary(max_size=40),
    )


@st.composite
def mail_stream(draw, limit):
    preamble = draw(st.sampled_from(MAIL_PREAMBLES))
    lines = draw(
        st.lists(st.tuples(mail_line_strategy(limit), st.sampled_from(ENDINGS)), max_size=14)
    )
    return preamble + b"".join(line + ending for line, ending in lines)


@FUZZ
@given(chunked(st.binary(max_size=600)))
def test_mail_port_survives_any_bytes(case):
    check_mail_stream(*case)


@FUZZ
@given(chunked(mail_stream))
def test_mail_port_answers_every_request_once(case):
    check_mail_stream(*case)


@FUZZ
@given(
    chunked(
        st.tuples(st.sampled_from(MAIL_PREAMBLES), st.binary(max_size=300)).map(b"".join)
    )
)
def test_mail_port_survives_any_bytes_after_login(case):
    check_mail_stream(*case)


def huge_id_replies(verb, digits, logged_errors):
    """The replies to C{verb} with a huge id, then HELP; and what was logged."""
    with fresh_service() as (service, clock):
        # The default line limit, which such a line fits in.
        wire = Wire(MailFactory(service, clock=clock))
        replies = mail_replies(wire.feed("%s %s\r\nHELP\r\n" % (verb, digits)))
    errors = [formatEvent(e) for e in logged_errors]
    # Emptied, so that an xfail covers it: the fixture would fail the teardown.
    del logged_errors[:]
    return replies, errors


@pytest.mark.parametrize("verb", ["READ", "DELETE"])
def test_huge_message_id_is_no_such_message(verb, logged_errors):
    # More digits than Python converts to an int (4300, since 3.11).
    [reply, help_reply], errors = huge_id_replies(verb, "9" * 4301, logged_errors)
    assert errors == []
    assert len(reply) == 1 and reply[0].startswith("KO no such message: "), reply
    assert help_reply == HELP_REPLY


@pytest.mark.parametrize("verb", ["READ", "DELETE"])
def test_huge_message_id_with_leading_zeros_is_no_such_message(verb, logged_errors):
    [reply, help_reply], errors = huge_id_replies(verb, "0" * 4400 + "7", logged_errors)
    assert help_reply == HELP_REPLY
    assert errors == []
    assert len(reply) == 1 and reply[0].startswith("KO "), reply
    assert reply != ["KO internal error"]


# 1b. The chat port's parser


CHAT_LINES = [
    "NICK", "nick x", "NICKfuzz", "NICK fuzz", "NICK fuzz extra words", "NICK watcher",
    "NICK WATCHER", "NICK alice", "NICK alice pw", "NICK ALICE pw", "NICK alice wrong",
    "NICK bad*nick", "NICK " + "n" * 33, "NICKNAME bob", "NICK \u00e9", "nick\tfuzz",
    "/who", "/WHO", "/who extra", "/help", "/msg", "/msg watcher", "/msg watcher psst",
    "/msg WATCHER hi there", "/msg alice hi", "/msg bob mail for you", "/msg nobody hi",
    "/msg fuzz self", "/quit now", "/frob", "/", "//", "//slash", "///x", "", " ",
    "hello", "gr\u00fc\u00df dich", "* fake notice", "[history] fake", "BYE", " bye ",
    "/quit", "/QUIT ", "HELLO", "READY", "\x00", "a\rb", "x\r",
]


def chat_line_strategy(limit):
    return st.one_of(
        st.sampled_from(CHAT_LINES).map(lambda s: s.encode("utf-8")),
        st.tuples(
            st.sampled_from(["NICK", "NICK ", "/msg ", "/who ", "//", "/", "BYE"]),
            st.text(max_size=12),
        ).map(lambda t: "".join(t).encode("utf-8")),
        st.text(max_size=20).map(lambda s: s.encode("utf-8")),
        st.tuples(st.integers(-2, 3), st.sampled_from([b"", b"\r"])).map(
            lambda t: b"y" * (limit + t[0]) + t[1]
        ),
        st.binary(max_size=24),
    )


@st.composite
def chat_stream(draw, limit):
    lines = draw(
        st.lists(st.tuples(chat_line_strategy(limit), st.sampled_from(ENDINGS)), max_size=16)
    )
    return b"".join(line + ending for line, ending in lines)


def chat_text(raw, limit):
    """The text of a complete chat line, or None if it is refused as it is."""
    line = raw[:-1] if raw.endswith(b"\r") else raw
    if len(line) > limit:
        return None
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_chat_stream(data, cuts, limit):
    """
    Feed C{data} to a chat connection line by line, each line in the pieces
    C{cuts} makes of it, checking each line's effect once its LF is in against
    docs/protocol.md (The chat port); a "watcher" in the room sees exactly what
    the fuzzed client says. (The mail tests cut across lines: the line reading
    below both ports is the same.)
    Then, unless the client left, it can still join and /who answers.
    """
    with fresh_service() as (service, clock), no_errors_logged():
        for name in ("alice", "bob"):
            service.register(name, "pw").addErrback(pytest.fail)
        factory = make_chat_factory(service, clock, limit)
        watcher = Wire(factory, port=50001)
        assert watcher.replies() == ["HELLO"]
        assert watcher("NICK watcher") == ["READY"]
        fuzz = Wire(factory, port=50002)
        assert fuzz.replies() == ["HELLO"]
        assert fuzz.protocol.LINE_LIMIT == limit
        in_partial = data.rsplit(b"\n", 1)[-1]
        if in_partial:
            data += b"\n"
        nick = None
        start = 0
        ends = [m.end() for m in re.finditer(b"\n", data)]
        for end in ends:
            # Flood control allows some lines a second: one line a second stays
            # within any sensible rate.
            clock.advance(1)
            for piece in pieces(data[start:end], [c - start for c in cuts]):
                fuzz.protocol.dataReceived(piece)
            text = chat_text(data[start : end - 1], limit)
            start = end
            said, heard = fuzz.replies(), watcher.replies()
            if fuzz.transport.disconnecting:
                fuzz.protocol.connectionLost(Failure(ConnectionError("closed")))
                heard += watcher.replies()
                if text is not None and (
                    text.strip().upper() == "BYE" or text.strip().lower() == "/quit"
                ):
                    assert said == []
                else:
                    # Not today's behaviour, but a limit may end a connection:
                    # it must say why, in one refusal.
                    assert said and said[-1].startswith(("RETRY ", "* error: ")), said
                assert heard == (["* %s left" % (nick,)] if nick else []), heard
                return
            if text is None:
                assert len(said) == 1, said
                assert said[0].startswith("* error: " if nick else "RETRY "), said
                assert heard == []
            elif nick is None:
                assert len(said) == 1, said
                if said == ["READY"]:
                    [joined] = heard
                    nick = re.fullmatch(r"\* ([A-Za-z0-9_-]{1,32}) joined", joined).group(1)
                    assert nick.lower() in text.lower()
                else:
                    assert said[0].startswith("RETRY "), said
                    assert heard == []
            elif text.startswith("//"):
                assert (said, heard) == ([], ["%s: %s" % (nick, text[1:])])
            elif text.startswith("/"):
                assert all(line.startswith("*") for line in said), said
                assert all(line.startswith("*%s* " % (nick,)) for line in heard), heard
                if text.partition(" ")[0].lower() == "/who":
                    assert said == ["* here: " + ", ".join(sorted([nick, "watcher"]))]
            elif text:
                assert (said, heard) == ([], ["%s: %s" % (nick, text)])
            else:
                assert (said, heard) == ([], [])
        clock.advance(1)
        if nick is None:
            nick = "fuzzbot"
            assert fuzz("NICK fuzzbot") == ["READY"]
            assert watcher.replies() == ["* fuzzbot joined"]
        clock.advance(1)
        assert fuzz("/who") == ["* here: " + ", ".join(sorted([nick, "watcher"]))]
        clock.advance(1)
        assert watcher("/who") == ["* here: " + ", ".join(sorted([nick, "watcher"]))]


@FUZZ
@given(chunked(st.binary(max_size=400), half_close=st.just(None)))
def test_chat_port_survives_any_bytes(case):
    data, cuts, _, limit = case
    check_chat_stream(data, cuts, limit)


@FUZZ
@given(chunked(chat_stream, half_close=st.just(None)))
def test_chat_port_keeps_answering(case):
    data, cuts, _, limit = case
    check_chat_stream(data, cuts, limit)


# 3. Random and malformed bytes at a real server


class Fuzzer:
    """
    Random traffic at both ports of a running server from a seeded
    random.Random: several connections at once, each sent a payload in pieces,
    interleaved, then closed one of several ways.
    """

    def __init__(self, rng, ports):
        self.rng = rng
        self.ports = ports
        self.stats = collections.Counter()
        self.registered = 0

    # Payloads

    def mail_request(self):
        rng = self.rng
        verb = rng.choice(MAIL_VERBS + ["", "HELO", "\u017fend"])
        if verb in ("REGISTER", "LOGIN"):
            # A password hash costs the server ~0.1 s of CPU: keep them rare.
            verb = "COUNT"
        verb = rng.choice([verb, verb.lower(), verb.title()])
        words = [self.word() for _ in range(rng.randint(0, 4))]
        text = " ".join([verb] + words)
        roll = rng.random()
        if roll < 0.1:
            text += "#" + hashlib.sha1(text.encode("utf-8")).hexdigest()
        elif roll < 0.15:
            text += "#" + "%040x" % rng.getrandbits(160)
        return text.encode("utf-8")

    def word(self):
        rng = self.rng
        return rng.choice(
            [
                lambda: rng.choice(["FROM", "SUBJECT", "fuzz", "alice", "bob", ".", "#"]),
                lambda: str(rng.randint(0, 2**64)),
                lambda: "9" * rng.randint(1, 8000),
                lambda: "0" * rng.randint(1, 8000) + "1",
                lambda: "".join(rng.choice(COOKIE_ALPHABET) for _ in range(43)),
                lambda: "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 8))),
            ]
        )()

    def chat_request(self):
        rng = self.rng
        # Never a name of letters and digits alone that may be an account: a
        # reserved nickname costs a password check.
        name = rng.choice(["c_", "n-", "x_"]) + str(rng.randint(0, 50))
        return rng.choice(
            [
                lambda: b"NICK " + name.encode(),
                lambda: b"NICK" + name.encode(),
                lambda: b"NICK " + rng.choice([b"bad*", b"", b"x" * 40, b"\xff"]),
                lambda: rng.choice([b"/who", b"/help", b"/frob", b"//x", b"", b"BYE", b"/quit"]),
                lambda: b"/msg " + name.encode() + b" hi",
                lambda: "said %s" % self.word(),
            ]
        )()

    def lines(self, port):
        rng = self.rng
        make = self.mail_request if port == "mail" else self.chat_request
        out = []
        for _ in range(rng.randint(1, 150)):
            line = make()
            if isinstance(line, str):
                line = line.encode("utf-8")
            if rng.random() < 0.1:
                at = rng.randint(0, len(line))
                line = line[:at] + rng.choice(NOT_UTF8) + line[at:]
            out.append(line + rng.choice(ENDINGS))
        if port == "mail" and rng.random() < 0.2:
            # Rarely a QUIT: the rest is then never read.
            out.insert(rng.randint(0, len(out)), b"QUIT\n")
        return b"".join(out)

    def payload(self, port):
        rng = self.rng
        kind = rng.choice(
            ["random", "lines", "lines", "overlong", "half line", "not utf-8"]
            + (["send", "session"] if port == "mail" else ["nick flood"])
        )
        self.stats[port + " " + kind] += 1
        if kind == "random":
            return rng.randbytes(rng.randint(1, 4096))
        if kind == "lines":
            return self.lines(port)
        if kind == "overlong":
            size = rng.choice([8191, 8192, 8193, 8194, 8195, 20000, 200_000])
            return b"Z" * size + rng.choice([b"", b"\n", b"\r\n", b"\nHELP\n", b"\n/who\n"])
        if kind == "half line":
            # Lines whose last one never ends: the connection closes mid-line.
            return self.lines(port).rstrip(b"\r\n")
        if kind == "not utf-8":
            return b"".join(
                rng.choice(NOT_UTF8) + rng.randbytes(rng.randint(0, 20)) + b"\n"
                for _ in range(rng.randint(1, 50))
            )
        if kind == "nick flood":
            return b"".join(
                b"NICK %s\n" % rng.choice([b"flood", b"Flood", b"f%d" % rng.randint(0, 9), b"*"])
                for _ in range(rng.randint(50, 500))
            ) + b"/who\n" + b"spam\n" * rng.randint(0, 200)
        if kind == "send":
            body = b"".join(
                rng.choice([b".", b"..", b"line", rng.randbytes(10), b"QUIT", b"x" * 9000])
                + rng.choice(ENDINGS)
                for _ in range(rng.randint(0, 40))
            )
            end = rng.choice([b".\n", b".\r\n", b""])
            return b"SEND fuzz subject\n" + body + end + self.lines(port)
        if kind == "session":
            # A fuzz account of its own, then requests that reach its mailbox.
            if self.registered >= 3:
                return self.lines(port)
            self.registered += 1
            name = b"fz%d" % rng.getrandbits(40)
            return (
                b"REGISTER %s pw\nSEND %s hi\nbody\n.\nMESSAGE m\nSTORE %s\n" % (name, name, name)
                + self.lines(port)
                + b"LIST\nGETMSG\nREAD 1\nDELETE SUBJECT hi\nDELMSG\n"
            )
        raise AssertionError(kind)

    # Connections

    def connect(self, port):
        sock = socket.create_connection(("127.0.0.1", self.ports[port]), timeout=SOCKET_TIMEOUT)
        sock.settimeout(0.5)
        self.stats["connections"] += 1
        return FuzzConnection(port, sock)

    def finish(self, connection):
        how = self.rng.choice(["close", "reset", "half-close", "drain and close"])
        self.stats["ended by " + how] += 1
        sock = connection.sock
        try:
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "half-close":
                sock.shutdown(socket.SHUT_WR)
                connection.read_to_end()
            elif how == "drain and close":
                connection.drain()
        except OSError:
            # The server closed first, with data unread (after QUIT, or a
            # limit): a reset, which is fine.
            pass
        finally:
            sock.close()

    def round(self):
        """A few connections at once, their payloads interleaved."""
        rng = self.rng
        active = []
        for _ in range(rng.randint(1, 6)):
            port = rng.choice(["mail", "chat"])
            data = self.payload(port)
            cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))
            connection = self.connect(port)
            connection.pending.extend(pieces(data, cuts))
            active.append(connection)
        while active:
            connection = rng.choice(active)
            try:
                if connection.pending:
                    data = connection.pending.popleft()
                    connection.sock.sendall(data)
                    self.stats["bytes sent"] += len(data)
                if rng.random() < 0.5:
                    connection.drain()
            except OSError:
                # The server closed (after QUIT, BYE, or a limit), or stopped
                # reading while we did not read its replies: both are fine.
                connection.pending.clear()
            if not connection.pending:
                active.remove(connection)
                self.finish(connection)


class FuzzConnection:
    def __init__(self, port, sock):
        self.port = port
        self.sock = sock
        self.pending = collections.deque()
        self.received = bytearray()

    def drain(self):
        """Read whatever has arrived, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.received += data
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.5)

    def read_to_end(self):
        """
        After a half-close: the server ends the connection (the mail port once
        it has answered every request). What it sent is whole lines, and on the
        mail port whole replies.
        """
        self.sock.settimeout(SOCKET_TIMEOUT)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(
                    "the %s port did not close a half-closed connection within %ss"
                    % (self.port, SOCKET_TIMEOUT)
                )
            if not data:
                break
            self.received += data
        received = bytes(self.received)
        assert received == b"" or received.endswith(b"\r\n"), received[-200:]
        lines = [line.decode("utf-8") for line in received.split(b"\r\n")[:-1]]
        if self.port == "mail":
            mail_replies(lines)


def cookie_of(reply):
    [line] = reply
    assert re.fullmatch(r"OK [A-Za-z0-9_-]{43}", line), reply
    return line[3:]


def snapshot(server, users):
    """What each seeded user's mailbox holds, as the mail port tells it."""
    state = {}
    with server.connect() as client:
        client("HELP")
        for name, password in users.items():
            cookie = cookie_of(client("LOGIN %s %s" % (name, password)))
            listing = client("LIST %s" % (cookie,))
            ids = [line.split()[0] for line in listing[1:-1]]
            state[name] = {
                "count": client("COUNT %s" % (cookie,)),
                "list": listing,
                "read": [client("READ %s %s" % (i, cookie)) for i in ids],
                "getmsg": client("GETMSG %s" % (cookie,)),
            }
            assert client("LOGOUT %s" % (cookie,)) == ["OK"]
    return state


def seed_state(server, rng):
    """Two users who mailed each other; fuzz traffic never learns their names."""
    users = {
        "keep%08x%s" % (rng.getrandbits(32), suffix): "%032x" % rng.getrandbits(128)
        for suffix in ("a", "b")
    }
    (first, first_pw), (second, second_pw) = users.items()
    with server.connect() as client:
        one = cookie_of(client("REGISTER %s %s" % (first, first_pw)))
        two = cookie_of(client("REGISTER %s %s" % (second, second_pw)))
        for sender, recipient, subject in [
            (one, second, "hello there"),
            (two, first, "re: hello"),
            (one, second, ".dotted #subject"),
        ]:
            client.send("SEND %s %s %s\n" % (recipient, subject, sender))
            client.send("gr\u00fc\u00df\n..a dot line\n\n#%s\n.\n" % ("f" * 40,))
            [reply] = client.reply()
            assert re.fullmatch(r"OK \d+", reply), reply
        assert client("MESSAGE staged text %s" % (two,)) == ["OK"]
        assert client("STORE %s %s" % (first, two)) == ["OK"]
    return users


def check_still_serving(server, users):
    with server.connect() as client:
        assert client("HELP") == HELP_REPLY
        name, password = next(iter(users.items()))
        cookie = cookie_of(client("LOGIN %s %s" % (name, password)))
        assert re.fullmatch(r"COUNTED \d+", client("COUNT")[0])
        assert client("LOGOUT %s" % (cookie,)) == ["OK"]
    with server.connect_chat() as chat:
        assert chat.line() == "HELLO"
        assert chat("NICK checker_%d" % (os.getpid(),)) == ["READY"]
        chat.send("/who\n")
        # The history of what the fuzz said, and what its last connections
        # still say, may come first.
        line = chat.line()
        while not line.startswith("* here: "):
            line = chat.line()
        assert "checker_%d" % (os.getpid(),) in line.split(": ", 1)[1].split(", ")


@pytest.mark.e2e
def test_network_fuzz_leaves_the_server_serving(server):
    seed = int(os.environ.get("MAILSVC_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
    print("network fuzz seed %d: MAILSVC_FUZZ_SEED=%d replays it" % (seed, seed))
    rng = random.Random(seed)
    try:
        users = seed_state(server, rng)
        before = snapshot(server, users)
        fuzzer = Fuzzer(rng, {"mail": server.port, "chat": server.chat_port})
        deadline = time.monotonic() + SECONDS
        with server.connect() as pacer:
            while time.monotonic() < deadline and fuzzer.stats["connections"] < 700 * SECONDS:
                fuzzer.round()
                # Once the server answers this, it has caught up with the
                # round (the fuzz never outruns it by much), and it still serves.
                assert pacer("HELP") == HELP_REPLY
        print("network fuzz: %s" % (dict(fuzzer.stats),))
        assert server.running(), "the server exited"
        check_still_serving(server, users)
        assert snapshot(server, users) == before
        assert server.problems() == []
    except Exception as e:
        raise AssertionError("network fuzz seed %d: %s" % (seed, e)) from e
