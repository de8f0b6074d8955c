"""
Two C{twistd -n mailsvc} nodes on one PostgreSQL database (a new one for
each test: conftest's postgres_url), talked to as netcat and a POP3 client
would: what one node commits, the other serves at once.
"""

import poplib
import re
import select
import time
from collections import deque

import psycopg
import pytest

from mailsvc.testing.process import TwistdServer


pytestmark = pytest.mark.e2e

COOKIE = r"[A-Za-z0-9_-]{43}"


@pytest.fixture
def nodes(mailsvc_process, postgres_url):
    """Start a node on the test's database: a function of its extra arguments."""
    return lambda *extra: mailsvc_process(*extra, fresh=True, db=postgres_url)


def cookie_of(reply):
    [line] = reply
    assert re.fullmatch("OK " + COOKIE, line), line
    return line[3:]


def test_two_nodes_serve_one_state(nodes):
    a, b = nodes("--mail-domain", "example.org"), nodes("--mail-domain", "example.org")
    with a.connect() as on_a, b.connect() as on_b:
        alice = cookie_of(on_a("REGISTER alice s3cret"))
        bob = cookie_of(on_a("REGISTER bob pw"))
        # A cookie issued by A works on B.
        assert on_b("COUNT " + alice) == ["COUNTED 0"]
        # What A acknowledged, B sees at once: COUNT, LIST, READ.
        on_a.send("SEND alice Lunch %s\nNoon?\n.\n" % (bob,))
        [sent] = on_a.reply()
        assert re.fullmatch(r"OK \d+", sent), sent
        number = int(sent[3:])
        assert on_b("COUNT " + alice) == ["COUNTED 1"]
        listing = on_b("LIST " + alice)
        assert listing[0] == "OK 1 messages" and listing[1].startswith("%d bob " % number)
        assert on_b("READ %d %s" % (number, alice))[-3:] == ["", "Noon?", "."]
        # POP3 on B fetches it.
        pop = poplib.POP3("127.0.0.1", b.port_of("pop3"), timeout=10)
        try:
            pop.user("alice")
            pop.pass_("s3cret")
            assert pop.stat()[0] == 1
            assert b"Noon?" in pop.retr(1)[1]
            pop.quit()
        except BaseException:
            pop.close()
            raise
        # LOGOUT on A ends the session on B at once.
        assert on_b("COUNT " + bob) == ["COUNTED 0"]
        assert on_a("LOGOUT " + bob) == ["OK"]
        assert on_b("COUNT " + bob) == ["KO unknown or expired session"]


def test_failed_logins_on_two_nodes_count_together(nodes):
    a, b = nodes(), nodes()
    with a.connect() as on_a, b.connect() as on_b:
        cookie_of(on_a("REGISTER carol right"))
        for node in (on_a, on_b, on_a):
            assert node("LOGIN carol wrong") == ["KO wrong user name or password"]
        # Three failures, two of them on A: B locks the name out all the same.
        [locked] = on_b("LOGIN carol right")
        assert locked.startswith("KO too many failed attempts"), locked


# kill -9 of a node during SENDs: nothing it acknowledged is lost.
CLIENTS = 16
KILL_AFTER = 100  # acknowledgements before the kill
DEADLINE = 60  # seconds, a bound that a healthy run stays far below


def test_kill_9_of_a_node_loses_nothing_it_acknowledged(nodes, postgres_url):
    a = nodes("--max-per-peer", CLIENTS + 1, "--max-sends", 1_000_000)
    b = nodes()
    with a.connect() as c:
        cookie = cookie_of(c("REGISTER alice pw"))
    clients = [a.connect() for _ in range(CLIENTS)]
    by_socket = {c.sock: c for c in clients}
    buffers = {c: b"" for c in clients}
    pending = {c: deque() for c in clients}
    acknowledged = {}
    serial = iter(range(10**9))

    def send_one(c):
        subject = "c%d-%d" % (clients.index(c), next(serial))
        pending[c].append(subject)
        c.send("SEND alice %s %s\n%s\n.\n" % (subject, cookie, "x" * 2000))

    for c in clients:
        send_one(c)
    open_clients, killed = set(clients), False
    deadline = time.monotonic() + DEADLINE
    try:
        while open_clients:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the burst did not finish in time"
            readable, _, _ = select.select([c.sock for c in open_clients], [], [], remaining)
            for c in map(by_socket.get, readable):
                try:
                    data = c.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                buffers[c] += data
                *lines, buffers[c] = buffers[c].split(b"\r\n")
                for line in lines:
                    line = line.decode()
                    assert re.fullmatch(r"OK \d+", line), line
                    acknowledged[int(line[3:])] = pending[c].popleft()
                if not killed and len(acknowledged) >= KILL_AFTER and lines:
                    a.kill()
                    killed = True
                if not data:
                    open_clients.discard(c)
                elif not killed:
                    send_one(c)
    finally:
        for c in clients:
            c.close()
    assert killed and sum(map(len, pending.values())) > 0, "the kill came after the burst"
    # B serves every message A acknowledged.
    with b.connect() as on_b:
        listing = on_b("LIST " + cookie)
    stored = {}
    for line in listing[1:-1]:
        number, _, _, subject = line.split(" ", 3)
        stored[int(number)] = subject
    lost = {n: s for n, s in acknowledged.items() if stored.get(n) != s}
    assert not lost, "acknowledged, then lost: %r" % (lost,)
    # The node's connections to the database are gone with it.
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == len(stored)


def test_a_node_that_loses_its_database_connection_says_so_then_reconnects(
    nodes, postgres_server, postgres_url
):
    from psycopg.conninfo import conninfo_to_dict

    node = nodes()
    with node.connect() as c:
        cookie = cookie_of(c("REGISTER alice pw"))
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (conninfo_to_dict(postgres_url)["dbname"],),
            )
        assert c("COUNT " + cookie) == ["KO storage unavailable"]
        assert c("COUNT " + cookie) == ["COUNTED 0"]
    assert node.log.wait_for(r"storage error: ", 0) is not None


def test_a_database_out_of_reach_ends_the_start_with_one_line(tmp_path, postgres_server):
    from mailsvc.testing.postgres import with_database

    missing = with_database(postgres_server.url, "mailsvc_test_no_such_database")
    node = TwistdServer(tmp_path, db=missing)
    try:
        with pytest.raises(AssertionError, match="did not log 'all fronts listening'"):
            node.start()
        assert node.process.wait(15) == 1
        text = node.log.text()
    finally:
        node.close()
    assert "Traceback" not in text
    [line] = [line for line in text.splitlines() if "mailsvc: " in line]
    assert "cannot use the database" in line and "mailsvc_test_no_such_database" in line
