"""
Several C{twistd -n mailsvc} nodes on one Redis (C{--bus redis://...}), each
with its own SQLite file (chat only): one room across them, spoken to over
raw sockets as netcat and an IRC client would.

As in test_e2e_chat.py, "nothing else arrived" is shown with a barrier (a
C{/who}, whose reply comes after whatever was on its way), and every wait
has a deadline.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require
from mailsvc.testing.process import Client
from mailsvc.testing.redis import unique_url
from test_e2e_chat import join, who
from test_irc_e2e import read_until

pytestmark = pytest.mark.e2e

LEASE = 3  # seconds: --node-lease of the nodes, short for the tests
UNAVAILABLE = "RETRY the chat is unavailable on this server for now: try again shortly"
S = "mailsvc"


@pytest.fixture
def start_node(mailsvc_process):
    """start_node(url, name, *options): a node of the cluster on Redis C{url},
    in a directory of its own (its own SQLite file and chat log)."""

    def start(url, name, *extra):
        return mailsvc_process(
            "--bus", url, "--node", name, "--node-lease", LEASE, *extra, fresh=True
        )

    return start


def irc_join(node, nick):
    c = node.connect(front="irc")
    c.send("NICK %s\r\nUSER %s 0 * :%s\r\n" % (nick, nick, nick))
    read_until(c, "376")
    c.send("JOIN #chat\r\n")
    return c, read_until(c, "366")


def test_line_chat_on_one_node_and_irc_on_another_are_one_room(redis_url, start_node):
    a, b = start_node(redis_url, "node-a"), start_node(redis_url, "node-b")
    nc = join(a, "netcat")
    irc, joined = irc_join(b, "ircuser")
    names = [line for line in joined if line.split()[1] == "353"]
    assert names and names[0].endswith(":ircuser netcat")
    assert nc.line() == "* ircuser joined"
    who(nc, "ircuser", "netcat")
    # WHOIS tells the node each is on, as IRC's server of a user.
    irc.send("WHOIS netcat\r\n")
    assert read_until(irc, "318")[1] == ":%s 312 ircuser netcat node-a :mailsvc" % (S,)
    # Both ways, in the order said.
    for n in range(15):
        nc.send("line %d from a\n" % (n,))
    for n in range(15):
        line = irc.line()
        assert line == ":netcat!netcat@%s PRIVMSG #chat :line %d from a" % (S, n)
    irc.send("PRIVMSG #chat :hello from b\r\n")
    assert nc.line() == "ircuser: hello from b"
    # /msg across nodes, both ways.
    nc.send("/msg ircuser psst\n")
    assert irc.line().endswith(":netcat!netcat@%s PRIVMSG ircuser :psst" % (S,))
    irc.send("PRIVMSG netcat :back\r\n")
    assert nc.line() == "*ircuser* back"
    # One nickname across the nodes, whatever the case.
    other = b.connect_chat()
    assert other.line() == "HELLO"
    other.send("NICK NETCAT\n")
    assert other.line() == "RETRY nickname in use"
    other.close()
    irc.send("QUIT :bye\r\n")
    assert nc.line() == "* ircuser left"
    who(nc, "netcat")
    irc.close()
    nc.close()


def test_the_history_is_the_same_on_every_node(redis_url, start_node):
    a = start_node(redis_url, "node-a", "--history", 2)
    alice = join(a, "alice")
    for n in range(3):
        alice.send("said %d\n" % (n,))
    who(alice, "alice")
    b = start_node(redis_url, "node-b", "--history", 2)
    c = b.connect_chat()
    assert c.line() == "HELLO"
    c.send("NICK bob\n")
    assert c.line() == "READY"
    shown = [c.line(), c.line()]
    assert [line.split(" ", 1)[1] for line in shown] == ["alice: said 1", "alice: said 2"]
    alice.close()
    c.close()


def test_a_node_killed_frees_its_nicknames_within_the_lease(redis_url, start_node):
    a, b = start_node(redis_url, "node-a"), start_node(redis_url, "node-b")
    alice = join(a, "alice")
    bob = join(b, "bob")
    assert alice.line() == "* bob joined"
    a.kill()
    killed = time.monotonic()
    assert bob.line() == "* alice left"
    assert time.monotonic() - killed <= LEASE
    who(bob, "bob")
    again = join(b, "alice")
    assert bob.line() == "* alice joined"
    again.close()
    bob.close()
    alice.close()


def test_a_redis_restart_under_chat_traffic_loses_and_doubles_no_line(own_redis, start_node):
    url = unique_url(own_redis.url)
    # A lease longer than the restart: nobody seems to leave meanwhile.
    fast = ["--flood-burst", 1000, "--flood-rate", 1000, "--node-lease", 30]
    a, b = start_node(url, "node-a", *fast), start_node(url, "node-b", *fast)
    alice = join(a, "alice")
    bob = join(b, "bob")
    assert alice.line() == "* bob joined"
    sent = 0

    def say(count):
        nonlocal sent
        for _ in range(count):
            alice.send("line %d\n" % (sent,))
            sent += 1

    say(50)
    own_redis.stop()
    say(50)
    # Cut off: no new members on either node, the others stay.
    for node in (a, b):
        refused = node.connect_chat()
        assert refused.line() == "HELLO"
        refused.send("NICK carol\n")
        assert refused.line() == UNAVAILABLE
        refused.close()
    own_redis.start()
    say(50)
    for n in range(150):
        assert bob.line() == "alice: line %d" % (n,)
    who(bob, "alice", "bob")  # and nothing doubled before it
    for node in (a, b):
        node.log.wait_for(r"redis publish: connected", 10)
    carol = join(b, "carol")
    assert alice.line() == "* carol joined"
    for c in (alice, bob, carol):
        c.close()


# Behind haproxy, with the example configuration as it is.

HAPROXY_CFG = Path(__file__).parent.parent / "examples" / "cluster" / "haproxy.cfg"
PROXIED = "haproxy:tcp:0:interface=127.0.0.1"


@pytest.fixture
def haproxy(tmp_path):
    """start(nodes): haproxy with examples/cluster/haproxy.cfg in front of
    two nodes; fire with {front: port} of haproxy's own addresses."""
    binary = require("haproxy", "haproxy")
    started = []

    def start(a, b):
        from mailsvc.testing.process import ServerLog
        from mailsvc.testing.redis import free_port

        ports = {front: free_port() for front in a.ports}
        env = dict(os.environ, HAPROXY_ADMIN=str(tmp_path / "haproxy.sock"))
        for front, port in ports.items():
            env["%s_BIND" % front.upper()] = "127.0.0.1:%d" % (port,)
            env["NODE_A_%s" % front.upper()] = str(a.ports[front])
            env["NODE_B_%s" % front.upper()] = str(b.ports[front])
        process = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        log = ServerLog(process.stdout, "[haproxy]")
        started.append((process, log))
        # haproxy binds its admin socket with its listeners: once that
        # answers, every front is there (polled, with a deadline).
        admin = tmp_path / "haproxy.sock"
        deadline = time.monotonic() + 10
        while not _answers(admin, "show info\n"):
            assert process.poll() is None and time.monotonic() < deadline, log.text()
            time.sleep(0.05)
        return ports

    yield start
    for process, log in started:
        process.terminate()
        process.wait(10)
        log.join(10)
        process.stdout.close()
        print(log.text())


def _answers(path, command):
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(command.encode())
            return bool(s.recv(100))
    except OSError:
        return False


def admin(path, command):
    """Send C{command} to haproxy's admin socket; return its answer."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        answer = b""
        while True:
            data = s.recv(4096)
            if not data:
                return answer.decode()
            answer += data


def test_two_nodes_behind_haproxy_are_one_server(redis_url, start_node, haproxy, tmp_path):
    proxied = [arg for front in ("mail", "chat", "irc", "smtp", "pop3", "web")
               for arg in ("--%s-port" % (front,), PROXIED)]
    a = start_node(redis_url, "node-a", *proxied)
    b = start_node(redis_url, "node-b", *proxied)
    ports = haproxy(a, b)
    # Drained as operations.md says: the line chat only to node-a, IRC only
    # to node-b, so the two users are surely on different nodes.
    assert admin(tmp_path / "haproxy.sock", "disable server chat/node-b").strip() == ""
    assert admin(tmp_path / "haproxy.sock", "disable server irc/node-a").strip() == ""
    alice = Client(ports["chat"])
    assert alice.line() == "HELLO"
    alice.send("NICK alice\n")
    assert alice.line() == "READY"
    bob, _ = irc_join(Through(ports), "bob")
    assert alice.line() == "* bob joined"
    alice.send("hi bob\n")
    assert bob.line() == ":alice!alice@%s PRIVMSG #chat :hi bob" % (S,)
    bob.send("PRIVMSG #chat :hi alice\r\n")
    assert alice.line() == "bob: hi alice"
    who(alice, "alice", "bob")
    # node-b knows bob by his own address (the PROXY protocol), not haproxy's.
    peer = "127.0.0.1:%d" % (bob.sock.getsockname()[1],)
    assert b.log.wait_for(r"IRC client bob registered from %s$" % (re.escape(peer),), 5)
    assert not a.log.wait_for(r"IRC client bob registered", 0)
    alice.close()
    bob.close()


class Through:
    """haproxy's ports, as a node's for L{irc_join}."""

    def __init__(self, ports):
        self.ports = ports

    def connect(self, front):
        return Client(self.ports[front])


def test_the_new_mail_notice_reaches_its_holder_on_another_node(redis_url, start_node, tmp_path):
    # One SQLite file for both (WAL lets two processes share it; the
    # PostgreSQL store is what a real cluster shares): mail sent on node A,
    # the account's holder in the chat of node B.
    shared = tmp_path / "shared.sqlite"
    a = start_node(redis_url, "node-a", "--db", shared)
    b = start_node(redis_url, "node-b", "--db", shared)
    mail = a.connect()
    assert mail("REGISTER erin secret")[0].startswith("OK")
    cookie = mail("REGISTER frank secret")[0].split()[-1]
    erin = b.connect_chat()
    assert erin.line() == "HELLO"
    erin.send("NICK erin secret\n")
    assert erin.line() == "READY"
    assert mail("SEND erin lunch? %s\nat noon\n." % (cookie,))[0].startswith("OK")
    assert erin.line() == "* new mail from frank: lunch?"
    mail.close()
    erin.close()


# The must-show, on one PostgreSQL database and one Redis, behind haproxy.


def test_two_nodes_behind_haproxy_share_the_chat_and_the_mail(
    redis_url, postgres_url, mailsvc_process, haproxy, tmp_path
):
    proxied = [arg for front in ("mail", "chat", "irc", "smtp", "pop3", "web")
               for arg in ("--%s-port" % (front,), PROXIED)]

    def node(name):
        return mailsvc_process(
            "--bus", redis_url, "--node", name, "--node-lease", LEASE, *proxied,
            fresh=True, db=postgres_url,
        )  # fmt: skip

    a, b = node("node-a"), node("node-b")
    ports = haproxy(a, b)
    socket_path = tmp_path / "haproxy.sock"
    # The line chat and the mail port to node A, IRC to node B.
    for command in ("disable server chat/node-b", "disable server mail/node-b",
                    "disable server irc/node-a"):
        assert admin(socket_path, command).strip() == ""
    nc = Client(ports["chat"])
    assert nc.line() == "HELLO"
    nc.send("NICK netcat\n")
    assert nc.line() == "READY"
    irc, _ = irc_join(Through(ports), "ircuser")
    assert nc.line() == "* ircuser joined"
    nc.send("hello from A\n")
    assert irc.line() == ":netcat!netcat@%s PRIVMSG #chat :hello from A" % (S,)
    irc.send("PRIVMSG #chat :hello from B\r\n")
    assert nc.line() == "ircuser: hello from B"
    # Mail sent through A ...
    mail = Client(ports["mail"])
    erin = mail("REGISTER erin secret")[0].split()[-1]
    frank = mail("REGISTER frank secret")[0].split()[-1]
    acknowledged = []
    for n in range(20):
        [reply] = mail("SEND erin note-%d %s\nbody %d\n." % (n, frank, n))
        assert reply.startswith("OK "), reply
        acknowledged.append(int(reply[3:]))
    mail.close()
    # ... is read through B.
    assert admin(socket_path, "enable server mail/node-b").strip() == ""
    assert admin(socket_path, "disable server mail/node-a").strip() == ""
    on_b = Client(ports["mail"])
    assert on_b("COUNT " + erin) == ["COUNTED 20"]
    # kill -9 of A: its nicknames are free within the lease, the IRC user on
    # B sees netcat leave, and nothing A acknowledged is lost.
    a.kill()
    killed = time.monotonic()
    assert irc.line() == ":netcat!netcat@%s PART #chat :left" % (S,)
    assert time.monotonic() - killed <= LEASE
    listing = on_b("LIST " + erin)
    assert listing[0] == "OK 20 messages"
    assert [int(line.split()[0]) for line in listing[1:-1]] == acknowledged
    # Drained by hand rather than waiting for haproxy's checks to find A gone.
    assert admin(socket_path, "enable server chat/node-b").strip() == ""
    assert admin(socket_path, "disable server chat/node-a").strip() == ""
    again = Client(ports["chat"])
    assert again.line() == "HELLO"
    again.send("NICK netcat\n")
    assert again.line() == "READY"
    for c in (nc, irc, on_b, again):
        c.close()
