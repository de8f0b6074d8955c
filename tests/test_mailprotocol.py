"""The mail port's parser and replies, over StringTransport with a synchronous service."""

import pytest

from mailsvc.core.names import COOKIE
from wire import Wire, signed


@pytest.fixture
def wire(mail_factory):
    return Wire(mail_factory)


def login(wire, name="alice", password="s3cret"):
    [reply] = wire("REGISTER %s %s" % (name, password))
    verb, cookie = reply.split()
    assert verb == "OK" and COOKIE.match(cookie)
    return cookie


def test_register_gives_a_session_cookie(wire):
    cookie = login(wire)
    assert len(cookie) == 43


def test_register_refuses_a_taken_or_invalid_name(wire):
    login(wire)
    assert wire("REGISTER alice other") == ["KO user name already taken"]
    assert wire("REGISTER ALICE other") == ["KO user name already taken"]
    assert wire("REGISTER bad-name pw")[0].startswith("KO invalid user name")
    assert wire("REGISTER %s pw" % ("a" * 33))[0].startswith("KO invalid user name")
    assert wire("REGISTER alice") == ["KO usage: REGISTER <user> <password>"]


def test_login_and_bad_credentials(wire, mail_factory):
    login(wire)
    other = Wire(mail_factory)
    assert other("LOGIN alice wrong") == ["KO wrong user name or password"]
    assert other("LOGIN nobody s3cret") == ["KO wrong user name or password"]
    assert other("LOGIN no#body s3cret") == ["KO wrong user name or password"]
    [reply] = other("login alice s3cret")
    assert reply.startswith("OK ") and COOKIE.match(reply[3:])


def test_password_is_the_rest_of_the_line(wire, mail_factory):
    wire("REGISTER bob two words")
    assert Wire(mail_factory)("LOGIN bob two words")[0].startswith("OK ")
    assert Wire(mail_factory)("LOGIN bob two")[0] == "KO wrong user name or password"


def test_commands_need_a_session(wire):
    assert wire("MESSAGE hello") == ["You should log in first."]
    assert wire("COUNT") == ["KO you should log in first"]
    assert wire("LIST") == ["KO you should log in first"]
    assert wire("LOGOUT") == ["KO you are not logged in"]
    assert wire("COUNT " + "x" * 43) == ["KO unknown or expired session"]


def test_stage_and_store_most_recent_first(wire):
    login(wire, "bob")
    login(wire, "alice")
    assert wire("MESSAGE first one") == ["OK"]
    assert wire("MESSAGE second one") == ["OK"]
    assert wire("STORE bob") == ["OK"]
    assert wire("STORE bob") == ["OK"]
    assert wire("STORE bob")[0].startswith("KO no staged message")
    wire("LOGIN bob s3cret")
    assert wire("COUNT") == ["COUNTED 2"]
    reply = wire("GETMSG")
    assert reply[0].startswith("OK message ")
    assert reply[2:] == ["From: alice", reply[3], "Subject: ", "", "second one", "."]
    assert reply[3].startswith("Date: 2023-11-14T")


def test_store_to_unknown_user_keeps_the_message_staged(wire):
    login(wire)
    wire("MESSAGE keep me")
    assert wire("STORE nobody") == ["KO no such user: nobody"]
    assert wire("STORE alice") == ["OK"]
    assert wire("GETMSG")[-2:] == ["keep me", "."]


def test_staging_is_per_session(wire, mail_factory):
    login(wire, "alice")
    other = Wire(mail_factory)
    login(other, "bob")
    wire("MESSAGE from alice")
    assert other("STORE alice")[0].startswith("KO no staged message")
    assert wire("STORE bob") == ["OK"]


def test_explicit_cookie_works_from_another_connection(wire, mail_factory):
    cookie = login(wire)
    other = Wire(mail_factory)
    assert other("MESSAGE hi there " + cookie) == ["OK"]
    assert other("STORE alice " + cookie) == ["OK"]
    assert other("COUNT " + cookie) == ["COUNTED 1"]
    assert other("GETMSG " + cookie)[-2:] == ["hi there", "."]
    assert other("DELMSG " + cookie) == ["OK"]
    assert other("COUNT " + cookie) == ["COUNTED 0"]
    assert other("LOGOUT " + cookie) == ["OK"]
    assert wire("COUNT") == ["KO unknown or expired session"]


def test_getmsg_and_delmsg_on_an_empty_mailbox(wire):
    login(wire)
    assert wire("GETMSG") == ["KO mailbox is empty"]
    assert wire("DELMSG") == ["KO mailbox is empty"]


def test_delmsg_removes_the_oldest(wire):
    login(wire)
    for text in ("one", "two"):
        wire("MESSAGE " + text)
        wire("STORE alice")
    assert wire("DELMSG") == ["OK"]
    assert wire("GETMSG")[-2:] == ["two", "."]


def test_send_list_read_delete(wire):
    login(wire, "bob")
    login(wire, "alice")
    assert wire.feed("SEND bob Lunch plans\r\nNoon?\r\n\r\nA.\r\n.\r\n") == ["OK 1"]
    assert wire.feed("SEND bob Other\nbody\n.\n") == ["OK 2"]
    assert wire("LOGIN bob s3cret")[0].startswith("OK ")
    listing = wire("LIST")
    assert listing[0] == "OK 2 messages"
    assert listing[1].startswith("1 alice 2023-") and listing[1].endswith(" Lunch plans")
    assert listing[2].endswith(" Other") and listing[3] == "."
    assert wire("LIST FROM ALICE")[0] == "OK 2 messages"
    assert wire("LIST FROM carol") == ["OK 0 messages", "."]
    message = wire("READ 1")
    assert message[0] == "OK message 1"
    assert message[1:3] == ["Id: 1", "From: alice"]
    assert message[4:] == ["Subject: Lunch plans", "", "Noon?", "", "A.", "."]
    assert wire("DELETE SUBJECT Other") == ["OK deleted 1"]
    assert wire("DELETE SUBJECT Other") == ["KO no message with that subject"]
    assert wire("DELETE 1") == ["OK deleted 1"]
    assert wire("READ 1") == ["KO no such message: 1"]
    assert wire("DELETE 1") == ["KO no such message: 1"]


def test_message_ids_are_never_reused(wire):
    login(wire)
    assert wire.feed("SEND alice a\n.\n") == ["OK 1"]
    assert wire("DELETE 1") == ["OK deleted 1"]
    assert wire.feed("SEND alice b\n.\n") == ["OK 2"]


def test_no_one_reads_another_users_message(wire, mail_factory):
    login(wire, "bob")
    login(wire, "alice")
    wire.feed("SEND bob private\nsecret\n.\n")
    assert wire("READ 1") == ["KO no such message: 1"]
    assert wire("DELETE 1") == ["KO no such message: 1"]


def test_send_body_is_dot_stuffed_both_ways(wire):
    login(wire)
    wire.feed("SEND alice dots\r\n..leading dot\r\n...\r\nCOUNT\r\n.\r\n")
    reply = wire("READ 1")
    # On the wire each body line that begins with '.' gets one more.
    assert reply[-4:] == ["..leading dot", "...", "COUNT", "."]


def test_send_body_is_never_run_as_commands(wire):
    login(wire)
    assert wire.feed("SEND nobody x\nDELMSG\nQUIT\n.\n") == ["KO no such user: nobody"]
    assert not wire.transport.disconnecting
    assert wire.feed("SEND\nQUIT\n.\n")[0].startswith("KO usage: SEND")
    assert wire("COUNT") == ["COUNTED 0"]


def test_send_without_session_reads_the_body_first(wire):
    assert wire.feed("SEND bob hi\nLOGIN x y\n.\n") == ["KO you should log in first"]


def test_send_body_too_large(service, clock):
    from mailsvc.fronts.mail import MailFactory

    wire = Wire(MailFactory(service, max_body=10, clock=clock))
    login(wire)
    assert wire.feed("SEND alice big\n12345\n67890\n.\n") == [
        "KO message too large: at most 10 bytes"
    ]
    assert wire.feed("SEND alice ok\n1234\n.\n") == ["OK 1"]


def test_checksums(wire):
    login(wire)
    assert wire(signed("COUNT")) == ["COUNTED 0"]
    assert wire(signed("MESSAGE héllo")) == ["OK"]
    assert wire("COUNT#" + "0" * 40) == ["KO checksum mismatch"]
    assert wire("MESSAGE x#" + "0" * 40) == ["KO checksum mismatch"]
    # A corrupted SEND still has its body read to the dot.
    assert wire.feed("SEND alice s#%s\nCOUNT\n.\n" % ("0" * 40,)) == ["KO checksum mismatch"]
    assert wire(signed("COUNT")) == ["COUNTED 0"]
    # A '#' that is not followed by 40 hex digits is just text.
    assert wire("MESSAGE issue #42") == ["OK"]


def test_verbs_are_case_insensitive_and_lf_or_crlf(wire):
    assert wire.feed("register alice pw\n")[0].startswith("OK ")
    assert wire.feed("count\r\n") == ["COUNTED 0"]
    assert wire.feed("Count\n") == ["COUNTED 0"]


def test_unknown_and_empty_requests(wire):
    assert wire("FROB") == ["KO unknown command, try HELP"]
    assert wire("") == ["KO empty request, try HELP"]
    assert wire("   ") == ["KO empty request, try HELP"]
    assert wire("READ") == ["KO usage: READ <id>"]
    assert wire("READ x") == ["KO usage: READ <id>"]
    assert wire("READ ١") == ["KO usage: READ <id>"]
    assert wire("READ 99999999999999999999") == [
        "KO no such message: 99999999999999999999"
    ]
    assert wire("COUNT extra") == ["KO usage: COUNT [<cookie>]"]
    assert wire("LIST BY bob") == ["KO usage: LIST [FROM <sender>]"]
    assert wire("STORE a b") == ["KO usage: STORE <user> [<cookie>]"]


def test_invalid_utf8_and_binary_garbage(wire):
    assert wire.feed(b"\xff\xfe\r\n") == ["KO request is not valid UTF-8"]
    assert wire.feed(b"\x00\x01\x02\n") == ["KO unknown command, try HELP"]
    login(wire)
    assert wire.feed(b"SEND alice x\n\xff\n.\n") == ["KO message is not valid UTF-8"]
    assert wire("COUNT") == ["COUNTED 0"]


def test_overlong_line_is_answered_and_skipped(wire):
    limit = wire.protocol.LINE_LIMIT
    assert wire.feed("X" * (limit + 10) + "\nHELP\n")[0] == (
        "KO line too long: at most %d bytes" % limit
    )
    # Arriving in pieces, with no newline for a long time.
    assert wire.feed("Y" * (limit + 5)) == ["KO line too long: at most %d bytes" % limit]
    assert wire.feed("Y" * limit) == []
    assert wire.feed("YYY\nCOUNT\n") == ["KO you should log in first"]


def test_help_lists_every_command(wire):
    reply = wire("HELP")
    assert reply[0] == "OK commands" and reply[-1] == "."
    text = "\n".join(reply)
    for verb in ("REGISTER", "LOGIN", "LOGOUT", "MESSAGE", "STORE", "COUNT", "GETMSG",
                 "DELMSG", "SEND", "LIST", "READ", "DELETE", "DUMP", "HELP", "QUIT"):
        assert "\n" + verb + " " in text


def test_dump_logs_a_summary_without_secrets(wire):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        login(wire, "alice", "hunter2")
        wire.feed("SEND alice hi\nsecret body\n.\n")
        assert wire("DUMP") == ["OK"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    [dump] = [formatEvent(e) for e in events if "DUMP" in (formatEvent(e) or "")]
    assert "1 accounts" in dump and "1 messages" in dump
    assert "hunter2" not in dump and "secret body" not in dump


def test_logout_and_logoff(wire):
    login(wire)
    assert wire("LOGOUT") == ["OK"]
    assert wire("COUNT") == ["KO you should log in first"]
    wire("LOGIN alice s3cret")
    assert wire("LOGOFF") == ["OK"]
    assert wire("LOGOFF") == ["KO you are not logged in"]


def test_quit(wire):
    assert wire("QUIT") == ["BYE"]
    assert wire.transport.disconnecting


def test_pipelined_requests_are_answered_in_order(wire):
    replies = wire.feed(
        "REGISTER alice pw\nMESSAGE one\nSTORE alice\nCOUNT\nFROB\nGETMSG\nQUIT\nCOUNT\n"
    )
    assert replies[1:5] == ["OK", "OK", "COUNTED 1", "KO unknown command, try HELP"]
    assert replies[-2:] == [".", "BYE"]


class HeldExecutor:
    """Runs storage work at once but holds each result until release()."""

    def __init__(self, inner):
        self.inner = inner
        self.held = []

    def start(self):
        pass

    def stop(self):
        return self.inner.stop()

    def submit(self, work, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.held.append((self.inner.submit(work, *args), d))
        return d

    def release(self):
        while self.held:
            result, d = self.held.pop(0)
            result.chainDeferred(d)


@pytest.fixture
def held(clock):
    from mailsvc.fronts.mail import MailFactory
    from mailsvc.core.passwords import Passwords
    from mailsvc.core.service import SharedService
    from mailsvc.store.sqlite import InlineExecutor, SQLiteStorage, connect

    executor = HeldExecutor(InlineExecutor(connect(":memory:")))
    service = SharedService(SQLiteStorage(executor), Passwords.inline(), clock)
    wire = Wire(MailFactory(service, clock=clock))
    yield wire, executor
    executor.stop()


def release_all(executor):
    while executor.held:
        executor.release()


def test_slow_storage_keeps_replies_in_order(held):
    wire, executor = held
    assert wire.feed("REGISTER alice pw\nCOUNT\nFROB\n") == []
    assert wire.protocol.paused
    release_all(executor)
    replies = wire.replies()
    assert replies[0].startswith("OK ")
    assert replies[1:] == ["COUNTED 0", "KO unknown command, try HELP"]
    assert not wire.protocol.paused and wire.transport.producerState == "producing"


def test_half_close_waits_for_every_reply(held):
    wire, executor = held
    wire.feed("REGISTER alice pw\nCOUNT\nMESSAGE no newline at the end")
    wire.protocol.readConnectionLost()
    assert not wire.transport.disconnecting
    release_all(executor)
    replies = wire.replies()
    assert replies[1:] == ["COUNTED 0", "OK"]
    assert wire.transport.disconnecting


def test_half_close_when_idle_closes_at_once(wire):
    wire.protocol.readConnectionLost()
    assert wire.transport.disconnecting


def test_the_line_limit_does_not_count_the_line_ending(wire):
    limit = wire.protocol.LINE_LIMIT
    longest = "MESSAGE " + "x" * (limit - len("MESSAGE "))
    too_long = "KO line too long: at most %d bytes" % limit
    for ending in ("\n", "\r\n"):
        assert wire.feed(longest + ending) == ["You should log in first."]
        assert wire.feed(longest + "x" + ending) == [too_long]


def test_a_client_that_does_not_read_replies_is_not_read_either(wire):
    from mailsvc.fronts.lines import INPUT_BUFFER

    # The transport says its write buffer is full: requests wait, unanswered,
    # instead of piling replies up in memory...
    wire.transport.producer.pauseProducing()
    assert wire.feed("HELP\nHELP\n") == []
    assert wire.transport.producerState == "producing"
    # ...and past a bound, the socket is not read either.
    wire.feed("COUNT\n" * (INPUT_BUFFER // 6 + 1))
    assert wire.transport.producerState == "paused"
    wire.transport.producer.resumeProducing()
    replies = wire.replies()
    assert replies.count("OK commands") == 2
    assert replies.count("KO you should log in first") == INPUT_BUFFER // 6 + 1
    assert wire.transport.producerState == "producing"


def test_output_and_a_slow_reply_hold_reading_together(held):
    wire, executor = held
    wire.transport.producer.pauseProducing()
    wire.protocol.hold("reply")
    wire.transport.producer.resumeProducing()
    assert wire.protocol.paused
    wire.protocol.release("reply")
    assert not wire.protocol.paused


def test_a_client_gone_in_the_middle_of_a_send_leaves_nothing(wire, service, mail_factory):
    cookie = login(wire, "bob")
    wire("MESSAGE staged, not sent")
    wire.feed("SEND bob half\r\nfirst line\r\nsecond li")
    wire.protocol.connectionLost(None)
    other = Wire(mail_factory)
    assert other("COUNT " + cookie) == ["COUNTED 0"]
    summary = service.storage.summary().result
    assert (summary["messages"], summary["staged"]) == (0, 1)


def test_replies_to_the_requests_of_one_read_leave_in_one_write(wire):
    writes = []
    write = wire.transport.write
    wire.transport.write = lambda data: (writes.append(data), write(data))
    wire("REGISTER alice pw")
    writes.clear()
    assert wire.feed("COUNT\nHELP\nCOUNT\n")[0] == "COUNTED 0"
    # Three replies, one write: the socket gets one send() for them.
    assert len(writes) == 1 and writes[0].count(b"COUNTED 0\r\n") == 2
