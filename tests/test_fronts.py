"""Fronts come from the registry: a toy one, added by a test or a plugin,
gets its option, its listener and its place in the testing kit and harness."""

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import pytest_twisted

from conftest import within
from mailsvc.fronts import registry
from mailsvc.tap import Options
from mailsvc.testing import start_server
from mailsvc.testing.process import TWISTD, SOCKET_TIMEOUT, TwistdServer, neutral_env

TOY = Path(__file__).parent / "toyfront"


def toy_module():
    path = TOY / "twisted" / "plugins" / "echo_who_front.py"
    spec = importlib.util.spec_from_file_location("echo_who_front", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def echo_who():
    front = toy_module().echo_who
    registry.register(front)
    yield front
    registry.unregister(front)


def read_all(port):
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as s:
        received = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return received.decode()
            received += chunk


def test_a_registered_front_has_its_option(echo_who):
    options = Options()
    options.parseOptions(["--echo-who-port", "tcp:9999", "--chat-port", "none"])
    assert options["echo-who-port"] == "tcp:9999"
    assert options["chat-port"] == "none"
    assert "--echo-who-port=" in str(options)
    assert [f.name for f in options.fronts][:2] == ["mail", "chat"]


def test_without_it_there_is_no_such_option():
    with pytest.raises(Exception, match="echo-who-port"):
        Options().parseOptions(["--echo-who-port", "tcp:9999"])


@pytest_twisted.ensureDeferred
async def test_the_testing_kit_serves_a_registered_front(echo_who):
    from twisted.internet.threads import deferToThread

    server = await within(start_server())
    try:
        await within(server.connect_chat("alice"))
        assert await within(deferToThread(read_all, server.port("echo-who"))) == "here: alice\r\n"
        assert server.address("echo-who") == "tcp:127.0.0.1:%d" % server.port("echo-who")
    finally:
        await within(server.stop())


@pytest_twisted.ensureDeferred
async def test_a_front_turned_off_is_not_served():
    server = await within(start_server(chat_port="none"))
    try:
        assert set(server.ports) == {"mail", "irc", "smtp", "pop3", "web"}
    finally:
        await within(server.stop())


@pytest.mark.e2e
def test_twistd_and_the_harness_pick_up_a_plugin_front(tmp_path):
    env = neutral_env(PYTHONPATH=str(TOY))
    help_text = __import__("subprocess").run(
        [str(TWISTD), "mailsvc", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--echo-who-port=" in help_text.stdout
    server = TwistdServer(tmp_path, extra=["--echo-who-port", "tcp:0:interface=127.0.0.1"])
    try:
        server.start(env=env)
        assert set(server.ports) == {"mail", "chat", "irc", "smtp", "pop3", "web", "echo-who"}
        with server.connect_chat() as chat:
            assert chat.line() == "HELLO"
            assert chat("NICK bob") == ["READY"]
            assert read_all(server.ports["echo-who"]) == "here: bob\r\n"
        server.stop()
    finally:
        server.close()
    assert server.problems() == []


@pytest.mark.e2e
def test_a_busy_port_ends_twistd_with_one_line_that_says_what_to_do(tmp_path):
    import subprocess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(TWISTD), "-n", "mailsvc", "--chat-port", "tcp:%d:interface=127.0.0.1" % port,
             "--mail-port", "tcp:0:interface=127.0.0.1"],
            cwd=tmp_path, env=neutral_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert (
        "mailsvc: cannot serve the chat front on tcp:%d:interface=127.0.0.1:"
        " [Errno 98] Address already in use; choose another with --chat-port" % port
    ) in output
