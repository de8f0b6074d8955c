"""
A real IRC client from Debian: C{weechat-headless} connects to the IRC front
with its defaults (only the address, the nick and a FIFO to drive it are set),
joins #chat and talks with a netcat-style user of the line chat, both ways.
Skipped without the client on a developer's machine; in CI a failure.
"""

import os
import signal
import subprocess
import time

import pytest

from conftest import require

pytestmark = pytest.mark.e2e

TIMEOUT = 30


def wait_for_text(path, text, timeout=TIMEOUT):
    """Wait (bounded) for C{text} to appear in the file at C{path}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                if text in f.read():
                    return
        time.sleep(0.05)
    content = open(path).read() if os.path.exists(path) else "(no file)"
    raise AssertionError("%r not in %s within %ss:\n%s" % (text, path, timeout, content))


def wait_for_file(path, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "no %s within %ss" % (path, timeout)
        time.sleep(0.05)


def test_weechat_talks_with_a_netcat_user(server, tmp_path):
    weechat = require("weechat-headless", "weechat-headless")
    require("weechat-headless", "weechat-plugins")  # its fifo plugin
    home = tmp_path / "weechat"
    home.mkdir()
    fifo = home / "fifo"
    nc = server.connect_chat()
    assert nc.line() == "HELLO"
    nc.send("NICK netcat\n")
    assert nc.line() == "READY"
    commands = ";".join(
        [
            "/set fifo.file.path %s" % (fifo,),
            "/set fifo.file.enabled on",
            "/set logger.file.flush_delay 0",
            "/server add mailsvc 127.0.0.1/%d" % (server.ports["irc"],),
            "/set irc.server.mailsvc.nicks wee",
            "/set irc.server.mailsvc.autojoin #chat",
            "/connect mailsvc",
        ]
    )
    process = subprocess.Popen(
        [weechat, "--dir", str(home), "--run-command", commands],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The netcat user sees weechat join (a wait with the socket's timeout).
        assert nc.line() == "* wee joined"
        wait_for_file(str(fifo))
        # Registered is in the room; in the channel after weechat's autojoin.
        log = home / "logs" / "irc.mailsvc.#chat.weechatlog"
        wait_for_text(str(log), "wee (wee@mailsvc) has joined #chat")
        with open(fifo, "w") as f:
            f.write("irc.mailsvc.#chat *hello from weechat ☃\n")
        assert nc.line() == "wee: hello from weechat ☃"
        nc.send("hello from netcat\n")
        wait_for_text(str(log), "netcat\thello from netcat")
        # /msg both ways.
        with open(fifo, "w") as f:
            f.write("irc.server.mailsvc */msg netcat psst\n")
        assert nc.line() == "*wee* psst"
        with open(fifo, "w") as f:
            f.write("irc.server.mailsvc */quit\n")
        assert nc.line() == "* wee left"
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=TIMEOUT)
        nc.close()
