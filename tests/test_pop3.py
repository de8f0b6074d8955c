"""The POP3 front over StringTransport: commands, logins, deletions at QUIT."""

import base64

import pytest

from conftest import fired
from mailsvc.fronts.pop3 import POP3Factory
from wire import Wire


@pytest.fixture
def factory(service, clock):
    fired(service.register("alice", "secret"))
    fired(service.register("bob", "hunter2"))
    return POP3Factory(service, clock=clock, domain="example.org")


def login(factory, host="127.0.0.1"):
    w = Wire(factory, host=host)
    assert w.replies()[0].startswith("+OK")
    assert w("USER alice") == ["+OK send PASS"]
    assert w("PASS secret")[0].startswith("+OK logged in")
    return w


def test_capa_user_pass_stat_list_uidl_retr(factory, service):
    one = fired(service.deliver("alice", "bob", "Grüße", "line\n.dot"))
    two = fired(service.deliver("alice", "bob", "two", "x"))
    w = Wire(factory)
    w.replies()
    capa = w("CAPA")
    assert capa[0].startswith("+OK") and capa[-1] == "."
    assert {"USER", "SASL PLAIN", "UIDL", "TOP", "PIPELINING"} <= set(capa)
    assert "STLS" not in capa  # no TLS configured
    assert w("STAT")[0].startswith("-ERR")  # not logged in
    w("USER alice")
    assert w("PASS secret") == ["+OK logged in, 2 messages"]
    stat = w("STAT")[0].split()
    assert stat[:2] == ["+OK", "2"]
    listing = w("LIST")
    assert listing[0] == "+OK 2 messages" and listing[-1] == "."
    sizes = [int(line.split()[1]) for line in listing[1:-1]]
    assert sum(sizes) == int(stat[2])
    assert w("UIDL") == ["+OK ", "1 %d" % one, "2 %d" % two, "."]
    assert w("UIDL 2") == ["+OK 2 %d" % two]
    retr = w("RETR 1")
    assert retr[0] == "+OK %d octets" % sizes[0]
    assert "..dot" in retr and retr[-1] == "."
    body = "\r\n".join(line[1:] if line.startswith(".") else line for line in retr[1:-1]) + "\r\n"
    assert len(body.encode("utf-8")) == sizes[0]
    assert "From: bob@example.org" in retr and "To: alice@example.org" in retr
    top = w("TOP 1 0")
    assert top[0].startswith("+OK") and top[-2] == "" and "line" not in top
    assert w("RETR 3")[0].startswith("-ERR")
    assert w("RETR x")[0].startswith("-ERR")


def test_deletions_happen_at_quit_only(factory, service):
    for i in range(3):
        fired(service.deliver("alice", "bob", "s%d" % i, "b"))
    w = login(factory)
    assert w("DELE 1")[0].startswith("+OK")
    assert w("DELE 1")[0].startswith("-ERR")  # already marked
    assert w("RETR 1")[0].startswith("-ERR")
    assert w("STAT")[0].startswith("+OK 2 ")
    assert w("RSET")[0].startswith("+OK")
    assert w("STAT")[0].startswith("+OK 3 ")
    w("DELE 2")
    # A session that ends without QUIT deletes nothing.
    w.transport.loseConnection()
    w.protocol.connectionLost(None)
    assert len(fired(service.mailbox("alice"))) == 3
    w = login(factory)
    w("DELE 2")
    assert w("QUIT") == ["+OK bye"]
    assert [m.subject for m in fired(service.mailbox("alice"))] == ["s0", "s2"]


def test_a_message_deleted_meanwhile_answers_err(factory, service):
    one = fired(service.deliver("alice", "bob", "s", "b"))
    w = login(factory)
    fired(service.storage.delete("alice", one))
    assert w("RETR 1") == ["-ERR message 1 was deleted meanwhile"]
    assert w("NOOP") == ["+OK "]


def test_plaintext_login_refused_unless_loopback_or_tls(factory):
    w = Wire(factory, host="192.0.2.7")
    w.replies()
    assert "USER" not in w("CAPA")
    assert w("USER alice")[0].startswith("-ERR [AUTH] plaintext login refused")
    assert w("AUTH PLAIN")[0].startswith("-ERR [AUTH] plaintext login refused")


def test_auth_plain_and_wrong_passwords(factory, service, logged_errors):
    w = Wire(factory)
    w.replies()
    token = base64.b64encode(b"\0alice\0secret").decode()
    assert w("AUTH PLAIN " + token)[0].startswith("+OK logged in")
    w = Wire(factory)
    w.replies()
    assert w("AUTH PLAIN") == ["+ "]
    assert w(base64.b64encode(b"\0bob\0hunter2").decode())[0].startswith("+OK")
    w = Wire(factory)
    w.replies()
    w("USER alice")
    assert w("PASS wrong") == ["-ERR [AUTH] wrong user name or password"]
    assert w("AUTH PLAIN !!!") == ["-ERR malformed AUTH PLAIN response"]
    # The shared throttle counts POP3's failures with the others.
    for _ in range(5):
        w("USER alice")
        w("PASS wrong")
    w("USER alice")
    assert w("PASS secret") == ["-ERR [AUTH] too many failed attempts: try again later"]


def test_pipelined_commands_answer_in_order(factory, service):
    fired(service.deliver("alice", "bob", "s", "b"))
    w = Wire(factory)
    w.replies()
    replies = w.feed("USER alice\r\nPASS secret\r\nSTAT\r\nUIDL 1\r\nQUIT\r\n")
    assert [r.split()[0] for r in replies] == ["+OK"] * 5
    assert replies[1].startswith("+OK logged in") and replies[-1] == "+OK bye"


def test_unknown_commands_and_long_lines(factory):
    w = Wire(factory)
    w.replies()
    assert w("FROB") == ["-ERR log in first (USER/PASS or AUTH PLAIN)"]
    w = login(factory)
    assert w("FROB") == ["-ERR unknown command"]
    assert w("") == ["-ERR unknown command"]
    assert w("X" * 10000) == ["-ERR line too long"]
    assert w("NOOP") == ["+OK "]


def test_a_login_reads_sizes_not_messages(factory, service):
    """The snapshot is ids and sizes; each message is read when it is asked for."""
    long_line = "x" * 1500  # over RFC 5322's 998: sent quoted-printable
    fired(service.deliver("alice", "bob", "plain", "a\n.b"))
    fired(service.deliver("alice", "bob", "Grüße", long_line + "\nend"))
    fired(service.submit("bob", ["alice"], b"Subject: raw\r\n\r\nsource\r\n"))
    read = []
    storage_messages, storage_message = service.storage.messages, service.storage.message
    service.storage.messages = lambda *a: read.append(("messages",) + a) or storage_messages(*a)
    service.storage.message = lambda *a: read.append(("message",) + a) or storage_message(*a)
    w = login(factory)
    assert read == []
    assert vars(w.protocol.mbox).keys() == {"service", "account", "domain", "ids", "sizes", "deleted"}
    listing = w("LIST")
    for number, size in (line.split() for line in listing[1:-1]):
        retr = w("RETR " + number)
        sent = b"".join(
            (line[1:] if line.startswith(".") else line).encode("utf-8") + b"\r\n"
            for line in retr[1:-1]
        )
        assert retr[0] == "+OK %s octets" % size and len(sent) == int(size)
    assert [r[0] for r in read] == ["message"] * 3


def test_output_full_input_waits_and_the_socket_is_paused(factory, service):
    """A client that asks for messages and never reads them: bounded memory."""
    from mailsvc.fronts.lines import INPUT_BUFFER

    fired(service.deliver("alice", "bob", "s", "b" * 1000))
    w = login(factory)
    watch = w.transport.producer
    watch.pauseProducing()  # the write buffer is past its high-water mark
    requests = b"RETR 1\r\n" * (INPUT_BUFFER // 8 + 100)
    w.protocol.dataReceived(requests[: INPUT_BUFFER // 2])
    assert w.replies() == []  # nothing answered while the output is full
    assert w.transport.producerState == "producing"
    w.protocol.dataReceived(requests[INPUT_BUFFER // 2 :])
    assert w.transport.producerState == "paused"  # the socket is not read
    assert len(w.protocol._input) <= len(requests)
    watch.resumeProducing()  # drained: the waiting lines are answered
    replies = w.replies()
    assert replies[0].startswith("+OK ")
    assert sum(r.endswith(" octets") for r in replies) == len(requests) // 8
    assert w.transport.producerState == "producing"
