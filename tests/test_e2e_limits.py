"""The limits against the real twistd, over raw sockets: each answered clearly,
the connection (where it is kept) and the server still usable."""

import pytest

from mailsvc.testing.process import Client

pytestmark = pytest.mark.e2e


def test_limits_end_to_end(mailsvc_process):
    server = mailsvc_process(
        "--max-per-peer", 3, "--idle-timeout", 1, "--quota-messages", 2,
        "--max-line", 100, "--max-body", 50, "--max-staged", 1,
    )
    with server.connect() as a, server.connect() as b:
        # Each connection beyond the per-address limit: one line, then close.
        with server.connect() as c:
            with Client(server.port) as refused:
                assert refused.line() == "KO too many connections from your address"
                refused.expect_eof()
            assert a("REGISTER alice pw")[0].startswith("OK ")
            assert a("HELP " + "x" * 100) == ["KO line too long: at most 100 bytes"]
            assert a("SEND alice big\n" + "y" * 60 + "\n.") == [
                "KO message too large: at most 50 bytes"
            ]
            assert a("MESSAGE one") == ["OK"]
            assert a("MESSAGE two") == [
                "KO too many staged messages: at most 1, STORE some first"
            ]
            assert a("STORE alice") == ["OK"]
            assert a("SEND alice s\nbody\n.")[0].startswith("OK ")
            assert a("SEND alice s\nbody\n.") == ["KO mailbox of alice is full: at most 2 messages"]
            assert a("COUNT") == ["COUNTED 2"]
            # Idle past --idle-timeout: told, then closed. (b and c said nothing.)
            assert b.line() == "KO idle timeout"
            b.expect_eof()
            assert c.line() == "KO idle timeout"
        # Room again once connections closed.
        with server.connect() as d:
            assert d("HELP")[0] == "OK commands"


def test_brute_force_is_locked_out_end_to_end(server):
    with server.connect() as c:
        assert c("REGISTER bob Right-Pass-1")[0].startswith("OK ")
        for _ in range(3):
            assert c("LOGIN bob Guess-Pass-2") == ["KO wrong user name or password"]
        [locked] = c("LOGIN bob Right-Pass-1")
        assert locked.startswith("KO too many failed attempts: try again in ")
    assert server.log.wait_for(r"failed login for account bob from 127\.0\.0\.1; locked out", 5)
    assert "-Pass-" not in server.log.text()


def test_chat_flood_is_warned_then_cut_off_end_to_end(mailsvc_process):
    server = mailsvc_process("--flood-rate", 1, "--flood-burst", 5)
    with Client(server.chat_port) as flooder, Client(server.chat_port) as reader:
        for client, nick in ((flooder, "flooder"), (reader, "reader")):
            assert client.line() == "HELLO"
            client.send("NICK %s\n" % nick)
            assert client.line() == "READY"
        assert flooder.line() == "* reader joined"
        flooder.send("".join("line %d\n" % i for i in range(20)))
        assert flooder.line().startswith("* error: you are sending too fast")
        assert flooder.line() == "* error: flooding: disconnected"
        flooder.expect_eof()
        assert [reader.line() for _ in range(5)] == ["flooder: line %d" % i for i in range(5)]
        assert reader.line() == "* flooder left"
