"""mailsvc-client as a subprocess, against the real server on port 0."""

import os
import sys
from pathlib import Path

import pytest_twisted
from mailsvc.core.events import Shutdown
from twisted.internet import defer, protocol

from conftest import within
from mailsvc import client as mc

CLIENT = str(Path(sys.executable).parent / "mailsvc-client")


class Captured(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self._waiting = []

    def outReceived(self, data):
        self.out += data
        for text, d in list(self._waiting):
            if text in self.out.decode("utf-8", "replace"):
                self._waiting.remove((text, d))
                d.callback(None)

    def errReceived(self, data):
        self.err += data

    def printed(self, text):
        """Fire once C{text} has appeared on the command's output."""
        d = defer.Deferred()
        self._waiting.append((text, d))
        self.outReceived(b"")
        return within(d)

    def processEnded(self, reason):
        self.ended.callback(
            (self.out.decode("utf-8"), self.err.decode("utf-8"), reason.value.exitCode)
        )


def start(*args, password="pw", stdin=None, command=(CLIENT,)):
    from twisted.internet import reactor

    env = {k: v for k, v in os.environ.items() if k != "MAILSVC_PASSWORD"}
    if password is not None:
        env["MAILSVC_PASSWORD"] = password
    captured = Captured()
    command = list(command)
    process = reactor.spawnProcess(
        captured, command[0], command + list(args), env=env, usePTY=False
    )
    if stdin is not None:
        process.write(stdin.encode("utf-8"))
        process.closeStdin()
    return captured, process


async def run(*args, **kwargs):
    captured, _ = start(*args, **kwargs)
    return await within(captured.ended, 30)


def port_of(address):
    return address.rsplit(":", 1)[1]


@pytest_twisted.ensureDeferred
async def test_one_shot_commands(mailsvc_server):
    mail = ["--connect", mailsvc_server.mail]
    assert await run("register", "--user", "bob", *mail) == ("registered bob\n", "", 0)
    await run("register", "--user", "alice", *mail)
    out, err, status = await run(
        "send", "--user", "alice", *mail, "bob", "Hello", "Bob", stdin="one\n.two\n"
    )
    assert (out, err, status) == ("sent message 1 to bob\n", "", 0)
    assert await run("count", "--user", "bob", *mail) == ("1\n", "", 0)
    out, _, _ = await run("list", "--user", "bob", "--host", "127.0.0.1", "--port",
                          port_of(mailsvc_server.mail))
    assert "alice" in out and "Hello Bob" in out and out.endswith("1 message\n")
    out, _, status = await run("read", "--user", "bob", *mail, "1")
    assert status == 0 and out.splitlines()[-2:] == ["one", ".two"]
    assert "Subject: Hello Bob" in out
    assert await run("delete", "--user", "bob", *mail, "1") == ("deleted message 1\n", "", 0)


@pytest_twisted.ensureDeferred
async def test_one_shot_failures(mailsvc_server):
    mail = ["--connect", mailsvc_server.mail]
    await run("register", "--user", "alice", *mail)
    out, err, status = await run("send", "--user", "alice", *mail, "nobody", "x", stdin="")
    assert (out, status) == ("", 1) and err == "mailsvc-client: no such user: nobody\n"
    _, err, status = await run("count", "--user", "alice", *mail, password="wrong")
    assert status == 1 and "wrong user name or password" in err
    _, err, status = await run("count", "--user", "alice", *mail, password=None, stdin="")
    assert status == 2 and "MAILSVC_PASSWORD" in err
    _, err, status = await run("count", "--user", "alice", "--connect", "tcp:127.0.0.1:1")
    assert status == 3 and "cannot connect" in err
    _, err, status = await run("read", "--user", "alice", *mail, "x")
    assert status == 2 and "message id must be a number" in err
    _, err, status = await run()
    assert status == 2 and "a command is required" in err


@pytest_twisted.ensureDeferred
async def test_an_interactive_mail_session(mailsvc_server):
    mail = ["--connect", mailsvc_server.mail]
    await run("register", "--user", "alice", *mail)
    session = "\n".join([
        "register", "bob", "pw",
        "send", "alice", "Lunch?", "Are you free", "at noon?", ".",
        "logout",
    ]) + "\n"
    out, err, status = await run("mail", *mail, stdin=session)
    assert status == 0 and err == ""
    assert "Logged in as bob." in out and "Sent message 1 to alice." in out
    session = "\n".join([
        "l", "alice", "bad", "l", "alice", "pw", "help", "count", "list",
        "read 1", "delete 1", "read 1", "frob", "quit",
    ]) + "\n"
    out, err, status = await run("mail", *mail, stdin=session)
    assert status == 0 and err == ""
    assert "error: wrong user name or password" in out
    assert "Logged in as alice." in out
    assert "\n1 message\n" in out and "Lunch?" in out
    assert "Are you free\nat noon?\nmail> " in out
    assert "Deleted message 1." in out and "error: no such message: 1" in out
    assert "unknown command frob; type help" in out


@pytest_twisted.ensureDeferred
async def test_a_chat_session_through_stdin(mailsvc_server):
    from twisted.internet import reactor

    carol = await within(mc.connect_chat(reactor, mailsvc_server.chat, "carol"))
    events = carol.events().__aiter__()
    captured, process = start("chat", "--connect", mailsvc_server.chat, "--nick", "carol")
    await captured.printed("nickname: ")
    process.write(b"dave\n")
    await captured.printed("Joined as dave.")
    assert (await within(events.__anext__())).text == "dave joined"
    carol.say("hi dave ✓")
    await captured.printed("carol: hi dave ✓")
    process.write(b"hello carol\n/msg carol psst\n")
    said = await within(events.__anext__())
    private = await within(events.__anext__())
    assert (said.nick, said.text) == ("dave", "hello carol")
    assert (private.kind, private.text) == ("private", "psst")
    mailsvc_server.chat_factory.announce_shutdown(Shutdown(5))
    await captured.printed("shutting down in 5 seconds")
    assert (await within(events.__anext__())).kind == "shutdown"
    process.closeStdin()  # end of input: BYE
    assert (await within(events.__anext__())).text == "dave left"
    out, err, status = await within(captured.ended)
    assert status == 0 and err == ""
    assert "nickname refused: nickname in use" in out
    carol.transport.loseConnection()
    await within(carol.closed)


@pytest_twisted.ensureDeferred
async def test_python_dash_m_mailsvc_cli_runs_the_same_command(mailsvc_server):
    await run("register", "--user", "bob", "--connect", mailsvc_server.mail)
    out, err, status = await run(
        "count", "--user", "bob", "--connect", mailsvc_server.mail,
        command=(sys.executable, "-m", "mailsvc.cli"),
    )
    assert (out, err, status) == ("0\n", "", 0)


@pytest_twisted.ensureDeferred
async def test_a_bad_address_is_a_usage_error(mailsvc_server):
    out, err, status = await run("count", "--user", "bob", "--connect", "bogus:thing")
    assert (out, status) == ("", 2) and err.startswith("mailsvc-client: bad address bogus:thing")


@pytest_twisted.ensureDeferred
async def test_the_shell_says_so_when_the_server_closes(mailsvc_server):
    from twisted.internet import reactor

    await run("register", "--user", "erin", "--connect", mailsvc_server.mail)
    captured, process = start("mail", "--connect", mailsvc_server.mail)
    process.write(b"l\nerin\npw\n")
    await captured.printed("Logged in as erin.")
    await within(mailsvc_server.mail_factory.closeAll(reactor))
    process.write(b"count\n")
    out, err, status = await within(captured.ended)
    assert status == 0 and err == ""
    assert out.endswith("mail> The server closed the connection.\n")


@pytest_twisted.ensureDeferred
async def test_a_newline_in_a_subject_is_a_usage_error(mailsvc_server):
    await run("register", "--user", "fay", "--connect", mailsvc_server.mail)
    out, err, status = await run(
        "send", "--user", "fay", "--connect", mailsvc_server.mail, "fay", "two\nlines", stdin="b"
    )
    assert (out, status) == ("", 2) and "a request is one line" in err
    assert "Traceback" not in err
