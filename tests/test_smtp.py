"""The SMTP submission front over StringTransport."""

import base64

import pytest

from conftest import fired
from mailsvc.fronts.smtp import SMTPFactory
from wire import Wire


@pytest.fixture
def factory(service, clock):
    for name, password in (("alice", "secret"), ("bob", "b"), ("carol", "c")):
        fired(service.register(name, password))
    return SMTPFactory(service, clock=clock, domain="example.org", max_body=200)


def plain(name, password):
    return base64.b64encode(b"\0%s\0%s" % (name.encode(), password.encode())).decode()


def session(factory, host="127.0.0.1"):
    w = Wire(factory, host=host)
    assert w.replies()[0].startswith("220 example.org ESMTP")
    ehlo = w("EHLO client")
    assert ehlo[-1].startswith("250 ")
    assert w("AUTH PLAIN " + plain("alice", "secret"))[0].startswith("235 2.7.0")
    return w


def codes(replies):
    return [r[:3] for r in replies]


def test_ehlo_extensions(factory):
    w = Wire(factory)
    w.replies()
    ehlo = w("EHLO me")
    words = {line[4:] for line in ehlo[1:]}
    assert {"AUTH PLAIN LOGIN", "SIZE 200", "ENHANCEDSTATUSCODES", "8BITMIME"} <= words
    assert not any("PIPELINING" in w or "CRAM" in w or "STARTTLS" in w for w in words)
    # From elsewhere, without TLS: no AUTH offered, none accepted.
    w = Wire(factory, host="192.0.2.9")
    w.replies()
    assert not any("AUTH" in line for line in w("EHLO me"))
    assert w("AUTH PLAIN " + plain("alice", "secret"))[0].startswith("538 5.7.11")


def test_a_message_to_two_mailboxes(factory, service):
    w = session(factory)
    assert codes(w("MAIL FROM:<alice@example.org>")) == ["250"]
    assert codes(w("RCPT TO:<bob@example.org>")) == ["250"]
    assert codes(w("RCPT TO:<Carol@EXAMPLE.org>")) == ["250"]
    assert codes(w("DATA")) == ["354"]
    reply = w.feed("Subject: =?utf-8?q?h=C3=A9?=\r\n\r\nline 1\r\n..dot\r\n.\r\n")
    assert reply[0].startswith("250 2.0.0 delivered to 2 mailboxes")
    for name in ("bob", "carol"):
        [m] = fired(service.mailbox(name))
        assert m.raw == b"Subject: =?utf-8?q?h=C3=A9?=\r\n\r\nline 1\r\n.dot\r\n"
        assert (m.sender, m.subject, m.body) == ("alice", "hé", "line 1\n.dot")


def test_refusals(factory, service):
    w = Wire(factory)
    w.replies()
    assert w("MAIL FROM:<alice@example.org>")[0].startswith("503 5.5.1")  # no EHLO
    w("EHLO me")
    assert w("MAIL FROM:<alice@example.org>")[0].startswith("530 5.7.0")  # no AUTH
    assert w("AUTH PLAIN " + plain("alice", "nope"))[0].startswith("535 5.7.8")
    assert w("AUTH PLAIN !!!")[0].startswith("501")
    w("AUTH PLAIN " + plain("alice", "secret"))
    assert w("MAIL FROM:<bob@example.org>")[0].startswith("553 5.7.1")
    assert w("MAIL FROM:<alice@elsewhere.net>")[0].startswith("553 5.7.1")
    assert w("MAIL FROM:")[0].startswith("501")
    assert w("MAIL FROM:<alice@example.org> SIZE=201")[0].startswith("552 5.3.4")
    assert w("DATA")[0].startswith("503 5.5.1")
    assert codes(w("MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME")) == ["250"]
    assert w("RCPT TO:<nobody@example.org>")[0].startswith("550 5.1.1")
    assert w("RCPT TO:<bob@gmail.com>")[0].startswith("550 5.7.1")  # never a relay
    assert w("DATA")[0].startswith("554")  # no valid recipient
    assert w("FROB")[0].startswith("500 5.5.2")
    assert w("X" * 9000)[0].startswith("500 5.5.6")
    assert codes(w("NOOP")) == ["250"]


def test_max_body_and_quota_answer_552(factory, service):
    w = session(factory)
    w("MAIL FROM:<alice@example.org>")
    w("RCPT TO:<bob@example.org>")
    w("DATA")
    # The body's lines are never read as commands, even after the limit.
    assert w.feed("Subject: big\r\n\r\n" + "x" * 100 + "\r\n" + "y" * 100 + "\r\nQUIT\r\n.\r\n")[0].startswith("552 5.3.4")
    assert fired(service.mailbox("bob")) == []
    assert codes(w("NOOP")) == ["250"]


def test_a_client_vanishing_mid_data_loses_nothing_accepted(factory, service):
    w = session(factory)
    w("MAIL FROM:<alice@example.org>")
    w("RCPT TO:<bob@example.org>")
    w("DATA")
    w.feed("Subject: one\r\n\r\nbody\r\n.\r\n")
    w("MAIL FROM:<alice@example.org>")
    w("RCPT TO:<bob@example.org>")
    w("DATA")
    w.feed("Subject: two\r\n\r\nhalf a bo")
    w.protocol.connectionLost(None)
    assert [m.subject for m in fired(service.mailbox("bob"))] == ["one"]


def test_pipelined_commands_answer_in_order(factory, service):
    w = session(factory)
    replies = w.feed(
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
        "RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: p\r\n\r\nb\r\n.\r\nQUIT\r\n"
    )
    assert codes(replies) == ["250", "550", "250", "354", "250", "221"]


def test_the_senders_limit_is_shared_with_the_other_fronts(factory, service, clock):
    from mailsvc.core.throttle import TokenBuckets

    service.sends = TokenBuckets(clock, rate=1.0, burst=2)
    cookie = fired(service.login("alice", "secret"))
    assert fired(service.send(cookie, "bob", "by SEND", "x")) > 0
    w = session(factory)

    def submit():
        w("MAIL FROM:<alice@example.org>")
        w("RCPT TO:<bob@example.org>")
        w("DATA")
        return w.feed("Subject: by SMTP\r\n\r\nbody\r\n.\r\n")[0]

    assert submit().startswith("250 2.0.0")
    # Temporary (4xx): a client tries again later, as it would for greylisting.
    assert submit() == "451 4.7.0 too many messages sent: try again in 1 second"
    clock.advance(1)
    assert submit().startswith("250 2.0.0")


def test_input_waits_while_the_output_is_full_and_the_socket_pauses(factory):
    """A client that sends commands and never reads the replies: bounded memory."""
    from mailsvc.fronts.lines import INPUT_BUFFER

    w = session(factory)
    w.transport.producer.pauseProducing()  # the write buffer is full
    requests = b"NOOP\r\n" * (INPUT_BUFFER // 6 + 100)
    w.protocol.dataReceived(requests)
    assert w.replies() == []
    assert w.transport.producerState == "paused"
    w.transport.producer.resumeProducing()
    assert w.replies() == ["250 2.0.0 OK"] * (len(requests) // 6)
    assert w.transport.producerState == "producing"


def test_an_unfinished_data_is_counted_as_it_arrives(factory, service):
    w = session(factory)
    w("MAIL FROM:<alice@example.org>")
    w("RCPT TO:<bob@example.org>")
    assert codes(w("DATA")) == ["354"]
    w.feed("Subject: big\r\n\r\n" + "y" * 60 + "\r\n")
    submission = w.protocol._submission
    for _ in range(1000):  # far past --max-body (200 here), never ended
        w.feed("z" * 60 + "\r\n")
    assert submission.lines == [] and submission.size > 200
    assert w.feed(".\r\n")[0].startswith("552 5.3.4 message too large")
    assert fired(service.mailbox("bob")) == []
