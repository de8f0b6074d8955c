"""
mailsvc-client in a real pseudo-terminal (tmux), against the server in this
process: the chat's prompt that keeps a half-typed line while messages
arrive, completion, history, the reconnect, the chat through the IRC front,
and the mail shell's table, pager and editor.
"""

import re

import pytest
import pytest_twisted
from twisted.internet import defer

from conftest import within
from test_cli import CLIENT
from tmux import Terminal, prompt_line

STAMP = r"\d\d:\d\d "


@pytest.fixture
def terminal(tmp_path):
    terminal = Terminal(tmp_path)
    yield terminal
    pytest_twisted.blockon(within(terminal.close()))


def client_env(tmp_path, **extra):
    """A client's environment: its own (empty) profile directory, no pager or
    editor unless a test gives one, UTF-8."""
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "MAILSVC_PASSWORD": "",
        "PAGER": "",
        "EDITOR": "",
        "LC_ALL": "C.UTF-8",
    }
    env.update(extra)
    return env


async def next_event(events, kind="message"):
    """The next event of C{kind}, past joins and other notices."""
    while True:
        event = await within(events.__anext__())
        if event.kind == kind:
            return event


async def chat(terminal, tmp_path, name, address, *more):
    await terminal.start(
        name, [CLIENT, "chat", "--nick", name, "--connect", address, *more], client_env(tmp_path)
    )
    await terminal.shows(name, r"^\[%s\]$" % name)


@pytest_twisted.ensureDeferred
async def test_two_people_chat_while_messages_arrive_mid_typing(mailsvc_server, terminal, tmp_path):
    """alice in the line chat and bob through the IRC front, each in a
    terminal, and carol (a program) in the room: what is half typed survives
    the messages that arrive, on screen and on the wire."""
    from twisted.internet import reactor

    carol = await within(mailsvc_server.connect_chat("carol"))
    events = carol.events().__aiter__()
    await chat(terminal, tmp_path, "alice", mailsvc_server.chat)
    await chat(terminal, tmp_path, "bob", mailsvc_server.address("irc"), "--irc")

    await terminal.type("alice", "I was just about to")
    await terminal.shows("alice", r"^\[alice\] I was just about to$")
    await terminal.type("bob", "hello alice, still there?")
    await terminal.shows("bob", r"^\[bob\] hello alice, still there\?$")
    carol.say("three lines from carol: one")
    carol.say("two")
    carol.say("three")
    await terminal.keys("bob", "Enter")

    screen = await terminal.shows("alice", STAMP + r"<bob> hello alice, still there\?")
    await terminal.shows("alice", STAMP + r"<carol> three$")
    screen = await terminal.screen("alice")
    # What came is above the prompt, and the prompt still holds alice's words.
    assert prompt_line(screen, "[alice] ") == "I was just about to"
    assert screen.rstrip().splitlines()[-1] == "[alice] I was just about to"
    await terminal.line("alice", " say something ✓")

    said = await next_event(events)
    assert (said.nick, said.text) == ("bob", "hello alice, still there?")
    said = await next_event(events)
    assert (said.nick, said.text) == ("alice", "I was just about to say something ✓")
    await terminal.shows("bob", STAMP + r"<alice> I was just about to say something ✓$")
    await terminal.shows("alice", STAMP + r"<alice> I was just about to say something ✓$")

    # bob's name in alice's line is highlighted on bob's screen (bold yellow).
    await terminal.line("alice", "bob: lunch?")
    await terminal.shows("bob", r"<alice> bob: lunch\?$")
    coloured = await terminal._run("capture-pane", "-p", "-e", "-t", "test:bob")
    line = [l for l in coloured.splitlines() if "bob: lunch?" in l][0]
    assert re.search(r"\x1b\[[0-9;]*33[0-9;]*m[^\x1b]*bob: lunch\?", line), repr(line)

    # Private messages stand apart, both ways, over both fronts.
    await terminal.line("bob", "/msg alice psst")
    await terminal.shows("alice", STAMP + r"\*bob\* psst$")
    await terminal.shows("bob", STAMP + r"-> \*alice\* psst$")

    for name in ("alice", "bob"):
        await terminal.keys(name, "C-d")
        assert await terminal.exit_status(name) == 0
    left = {(await next_event(events, "notice")).text for _ in range(2)}
    assert left == {"alice left", "bob left"}
    await carol.bye()
    assert reactor.running


@pytest_twisted.ensureDeferred
async def test_chat_completion_history_and_the_shutdown_notice(mailsvc_server, terminal, tmp_path):
    carol = await within(mailsvc_server.connect_chat("carol"))
    events = carol.events().__aiter__()
    await chat(terminal, tmp_path, "alice", mailsvc_server.chat)

    # Tab completes a command first on the line...
    await terminal.type("alice", "/w")
    await terminal.keys("alice", "Tab")
    await terminal.shows("alice", r"^\[alice\] /who$")
    await terminal.keys("alice", "Enter")
    await terminal.shows("alice", STAMP + r"-!- here: alice, carol$")
    # ... and a nickname, with ": " to speak to them.
    await terminal.type("alice", "ca")
    await terminal.keys("alice", "Tab")
    await terminal.shows("alice", r"^\[alice\] carol:$")
    await terminal.line("alice", "hi")
    assert (await next_event(events)).text == "carol: hi"

    # History: Up brings back the last line, and the one before.
    await terminal.keys("alice", "Up")
    await terminal.shows("alice", r"^\[alice\] carol: hi$")
    await terminal.keys("alice", "Up")
    await terminal.shows("alice", r"^\[alice\] /who$")
    await terminal.keys("alice", "C-u")

    mailsvc_server.chat_factory.announce_shutdown(__import__(
        "mailsvc.core.events", fromlist=["Shutdown"]).Shutdown(5))
    await terminal.shows("alice", STAMP + r"\*\*\* the server is shutting down in 5 seconds$")
    await terminal.line("alice", "/quit")
    assert await terminal.exit_status("alice") == 0
    await carol.bye()


@pytest_twisted.ensureDeferred
async def test_the_chat_joins_again_when_the_connection_drops(mailsvc_server, terminal, tmp_path):
    carol = await within(mailsvc_server.connect_chat("carol"))
    events = carol.events().__aiter__()
    await chat(terminal, tmp_path, "alice", mailsvc_server.chat)
    assert (await next_event(events, "notice")).text == "alice joined"
    await terminal.type("alice", "typed before the drop")

    for connection in list(mailsvc_server.chat_factory.connections):
        if connection.nick == "alice":
            connection.transport.abortConnection()
    await terminal.shows("alice", r"-!- connection lost; joining again in 1 s")
    assert (await next_event(events, "notice")).text == "alice left"
    assert (await next_event(events, "notice")).text == "alice joined"
    await terminal.shows("alice", r"-!- joined again as alice$")
    screen = await terminal.screen("alice")
    assert prompt_line(screen, "[alice] ") == "typed before the drop"
    await terminal.keys("alice", "Enter")
    said = await next_event(events)
    assert (said.nick, said.text) == ("alice", "typed before the drop")
    await terminal.keys("alice", "C-d")
    assert await terminal.exit_status("alice") == 0
    await carol.bye()


def long_subject(n):
    return "Subject %d, long enough that a narrow terminal must cut it somewhere" % n


@pytest_twisted.ensureDeferred
async def test_the_mail_shell_table_pager_editor_completion(mailsvc_server, terminal, tmp_path):
    await within(mailsvc_server.add_user("alice", "pw"))
    await within(mailsvc_server.add_user("bob", "pw"))
    for n in range(1, 4):
        await within(mailsvc_server.deliver("alice", "bob", long_subject(n), "short body"))
    long_id = await within(mailsvc_server.deliver(
        "alice", "bob", "Long", "\n".join("line %d" % n for n in range(1, 80))
    ))
    paged = tmp_path / "paged.txt"
    pager = tmp_path / "pager.sh"
    pager.write_text("#!/bin/sh\ncat > %s\n" % paged)
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nprintf 'Written in the editor.\\n\\nBye.\\n' > \"$1\"\n")
    for script in (pager, editor):
        script.chmod(0o755)
    terminal.width = 72
    env = client_env(tmp_path, PAGER=str(pager), EDITOR=str(editor))
    await terminal.start("mail", [CLIENT, "mail", "--connect", mailsvc_server.mail], env)
    await terminal.shows("mail", r"login or register\? \[l/r\]$")
    await terminal.keys("mail", "l", "Enter")
    await terminal.shows("mail", r"^user:$")
    await terminal.line("mail", "alice")
    await terminal.shows("mail", r"^password:$")
    await terminal.line("mail", "pw")
    await terminal.shows("mail", r"^mail>$")

    # Completion of commands; the list as a table no wider than the terminal.
    await terminal.type("mail", "li")
    await terminal.keys("mail", "Tab")
    await terminal.shows("mail", r"^mail> list$")
    await terminal.keys("mail", "Enter")
    screen = await terminal.shows("mail", r"^4 messages$")
    rows = [line for line in screen.splitlines() if re.match(r"\s*\d+  bob ", line)]
    assert len(rows) == 4
    assert all(len(row) <= 72 for row in rows)
    assert rows[0].endswith("\N{HORIZONTAL ELLIPSIS}")
    assert len({row.index("bob") for row in rows} | {row.index(" 20") for row in rows}) == 2

    # A short message is printed; a long one goes through the pager.
    await terminal.line("mail", "read 1")
    await terminal.shows("mail", r"^short body$")
    assert not paged.exists()
    await terminal.line("mail", "read %d" % long_id)
    await terminal.shows("mail", r"^mail> read %d\nmail>$" % long_id)
    assert paged.read_text().splitlines()[-1] == "line 79"
    assert "Subject: Long" in paged.read_text()

    # History: Up brings back "read <id>".
    await terminal.keys("mail", "Up")
    await terminal.shows("mail", r"^mail> read %d$" % long_id)
    await terminal.keys("mail", "C-u")

    # send: the recipient completes from the names seen; the body from $EDITOR.
    await terminal.line("mail", "send")
    await terminal.shows("mail", r"^to:$")
    await terminal.type("mail", "b")
    await terminal.keys("mail", "Tab")
    await terminal.shows("mail", r"^to: bob$")
    await terminal.keys("mail", "Enter")
    await terminal.shows("mail", r"^subject:$")
    await terminal.line("mail", "From the editor")
    await terminal.shows("mail", r"^Sent message \d+ to bob\.$")
    [message] = await within(mailsvc_server.mailbox("bob"))
    assert (message.subject, message.body) == ("From the editor", "Written in the editor.\n\nBye.")

    await terminal.line("mail", "quit")
    assert await terminal.exit_status("mail") == 0


@pytest_twisted.ensureDeferred
async def test_the_profile_logs_the_mail_shell_in(mailsvc_server, terminal, tmp_path):
    await within(mailsvc_server.add_user("alice", "wonderland"))
    profile = tmp_path / "config" / "mailsvc" / "client.toml"
    profile.parent.mkdir(parents=True)
    profile.write_text(
        '[work]\nhost = "127.0.0.1"\nmail_port = %d\nuser = "alice"\npassword = "wonderland"\n'
        % mailsvc_server.mail_port
    )
    profile.chmod(0o600)
    await terminal.start("mail", [CLIENT, "--profile", "work", "mail"], client_env(tmp_path))
    await terminal.shows("mail", r"^Logged in as alice\.\nmail>$")
    await terminal.keys("mail", "C-d")
    assert await terminal.exit_status("mail") == 0

    # Readable by others: the password is ignored, with a warning.
    profile.chmod(0o644)
    await terminal.start("again", [CLIENT, "--profile", "work", "mail"], client_env(tmp_path))
    screen = await terminal.shows("again", r"login or register\? \[l/r\]$")
    assert "warning: %s may be read by others (mode 0644)" % profile in screen.replace("\n", "")
    await terminal.keys("again", "C-d")
    assert await terminal.exit_status("again") == 0
