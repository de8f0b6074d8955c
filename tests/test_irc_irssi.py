"""
A real IRC client from Debian: irssi, in tmux, connects to the IRC front with
its defaults (only the address, the port, the nick and a password on its
command line), joins #chat and talks with a netcat-style user of the line
chat, both ways; a mail account's nick needs its password. tmux is driven with
send-keys and read with capture-pane. Skipped without irssi or tmux on a
developer's machine; in CI a failure.
"""

import os
import subprocess
import time

import pytest

from conftest import require

pytestmark = pytest.mark.e2e

TIMEOUT = 30


class Tmux:
    """A tmux server of its own (its own socket), one session per client."""

    def __init__(self, tmux, name):
        self.tmux = tmux
        self.socket = name

    def run(self, *args):
        return subprocess.run(
            [self.tmux, "-L", self.socket, "-f", os.devnull] + list(args),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout

    def start(self, session, command):
        self.run("new-session", "-d", "-s", session, "-x", "200", "-y", "50", command)

    def type(self, session, text):
        """Type C{text} and Enter, as a user would."""
        self.run("send-keys", "-t", session, "-l", text)
        self.run("send-keys", "-t", session, "Enter")

    def screen(self, session):
        """What the session shows, with its scrollback, wrapped lines joined."""
        return self.run("capture-pane", "-p", "-J", "-S", "-500", "-t", session)

    def wait_for(self, session, text, timeout=TIMEOUT):
        """Wait (bounded) until the session shows C{text}."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(session)
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError("%r not shown within %ss:\n%s" % (text, timeout, screen))
            time.sleep(0.1)

    def alive(self, session):
        done = subprocess.run(
            [self.tmux, "-L", self.socket, "has-session", "-t", session],
            capture_output=True,
            timeout=TIMEOUT,
        )
        return done.returncode == 0

    def kill(self):
        subprocess.run(
            [self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=TIMEOUT
        )


@pytest.fixture
def tmux(tmp_path):
    tmux = Tmux(require("tmux", "tmux"), "mailsvc-test-%d" % os.getpid())
    yield tmux
    tmux.kill()


def irssi(path, home, port, nick, password=None):
    home.mkdir()
    command = "%s --home=%s -c 127.0.0.1 -p %d -n %s" % (path, home, port, nick)
    return command + (" -w %s" % password if password else "")


def test_irssi_talks_with_a_netcat_user(server, tmux, tmp_path):
    path = require("irssi", "irssi")
    port = server.ports["irc"]
    nc = server.connect_chat()
    assert nc.line() == "HELLO"
    nc.send("NICK netcat\n")
    assert nc.line() == "READY"
    tmux.start("irssi", irssi(path, tmp_path / "irssi", port, "irssi"))
    # Registered is in the room; in the channel after /join.
    assert nc.line() == "* irssi joined"
    tmux.type("irssi", "/join #chat")
    tmux.wait_for("irssi", "irssi [irssi@mailsvc] has joined #chat")
    tmux.wait_for("irssi", "Topic for #chat: ")
    tmux.type("irssi", "hello from irssi ☃")
    assert nc.line() == "irssi: hello from irssi ☃"
    nc.send("hello from netcat\n")
    tmux.wait_for("irssi", "netcat> hello from netcat")
    # /msg both ways; irssi opens a query window for the one it receives.
    tmux.type("irssi", "/msg netcat psst")
    assert nc.line() == "*irssi* psst"
    nc.send("/msg irssi psst back\n")
    tmux.type("irssi", "/query netcat")
    tmux.wait_for("irssi", "netcat> psst back")
    # A change of case alone, as on any IRC server.
    tmux.type("irssi", "/window 2")
    tmux.type("irssi", "/nick Irssi")
    assert nc.line() == "* irssi is now known as Irssi"
    tmux.wait_for("irssi", "You're now known as Irssi")
    assert nc("/who") == ["* here: Irssi, netcat"]
    tmux.type("irssi", "/quit bye")
    assert nc.line() == "* Irssi left"
    nc.close()


def test_irssi_needs_the_password_of_a_mail_accounts_nick(server, tmux, tmp_path):
    path = require("irssi", "irssi")
    port = server.ports["irc"]
    mail = server.connect()
    assert mail("REGISTER carol secret123")[0].startswith("OK")
    mail.close()
    nc = server.connect_chat()
    assert nc.line() == "HELLO"
    nc.send("NICK netcat\n")
    assert nc.line() == "READY"
    # A wrong password: 464, and the nick is not taken.
    tmux.start("wrong", irssi(path, tmp_path / "wrong", port, "carol", "wrongpass"))
    tmux.wait_for("wrong", "Password incorrect")
    assert nc("/who") == ["* here: netcat"]
    tmux.type("wrong", "/quit")
    # The right one: the nick is held.
    tmux.start("right", irssi(path, tmp_path / "right", port, "carol", "secret123"))
    assert nc.line() == "* carol joined"
    tmux.wait_for("right", "Welcome to the mailsvc IRC network carol!")
    assert nc("/who") == ["* here: carol, netcat"]
    tmux.type("right", "/join #chat")
    tmux.wait_for("right", "carol [carol@mailsvc] has joined #chat")
    tmux.type("right", "/quit")
    assert nc.line() == "* carol left"
    nc.close()
