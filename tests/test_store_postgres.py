"""
The PostgreSQL store's own business, on a real server (conftest's
postgres_url): the schema under an advisory lock, batches and savepoints, a
lost connection, a database out of reach at start.
"""

import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer

from conftest import within
from mailsvc import errors
from mailsvc.store import OpenFailed, Quotas, open_store
from mailsvc.store.executor import guarded
from mailsvc.store.postgres import SAVEPOINTS, GroupCommitExecutor, connect
from mailsvc.store.postgres.schema import MIGRATIONS


def test_nodes_starting_together_on_a_new_database_do_not_race(postgres_url):
    """Planted: no pg_advisory_lock in schema.migrate (one CREATE TABLE fails)."""
    nodes = 4
    start = threading.Barrier(nodes)
    outcomes = []

    def open_node():
        start.wait(10)
        try:
            connect(postgres_url).close()
            outcomes.append("ok")
        except Exception as e:  # what a node starting would meet
            outcomes.append(repr(e))

    threads = [threading.Thread(target=open_node) for _ in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == ["ok"] * nodes
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM mailsvc_schema").fetchall() == [(len(MIGRATIONS),)]


def test_a_database_from_a_newer_mailsvc_is_refused(postgres_url):
    from twisted.internet import reactor

    connect(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE mailsvc_schema SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(OpenFailed, match="newer than this mailsvc"):
        open_store(postgres_url, reactor)


def test_a_database_out_of_reach_at_start_is_one_line(postgres_server):
    from twisted.internet import reactor

    from mailsvc.testing.postgres import with_database

    missing = with_database(postgres_server.url, "mailsvc_test_missing_database")
    with pytest.raises(OpenFailed) as failed:
        open_store(missing, reactor)
    message = str(failed.value)
    assert "\n" not in message and "mailsvc_test_missing_database" in message


def test_either_scheme_and_any_libpq_url(postgres_url):
    """postgresql:// and postgres://, with the host (or a socket directory:
    ?host=/run/postgresql) in the URL or its query."""
    from twisted.internet import reactor

    from psycopg.conninfo import conninfo_to_dict

    from mailsvc.testing.postgres import with_database

    assert postgres_url.startswith("postgresql:///") and "host=" in postgres_url
    other = "postgres://" + postgres_url[len("postgresql://") :]
    for url in (postgres_url, other):
        store = open_store(url, reactor)
        assert store.shared
    assert with_database(other, "x") == with_database(postgres_url, "x")
    assert conninfo_to_dict(with_database(postgres_url, "x"))["dbname"] == "x"


def test_a_batch_holds_at_most_63_savepoints():
    @guarded
    def careful(db):
        pass

    def plain(db):
        pass

    executor = GroupCommitExecutor(None, None)
    pending = [(careful, (), None)] * 130 + [(plain, (), None)] * 5
    batches = executor.batches(pending)
    assert SAVEPOINTS == 63
    assert [sum(getattr(w, "guarded", False) for w, _, _ in b) for b in batches] == [63, 63, 4]
    assert sum(map(len, batches)) == len(pending)


@pytest.fixture
def store(postgres_url):
    from twisted.internet import reactor

    store = open_store(postgres_url, reactor, Quotas(messages=3, bytes=1000, staged=2))
    store.startService()
    yield store
    pytest_twisted.blockon(within(store.stopService()))


@pytest_twisted.ensureDeferred
async def test_one_request_that_breaks_the_transaction_is_refused_alone(store, logged_errors):
    """Requests sent together share a transaction; SQL that fails in one of
    them (without a savepoint) must not refuse the others. Planted: run_batch
    without its one-request-a-transaction retry."""

    def broken(db):
        db.execute("SELECT * FROM no_such_table")

    await within(store.add_account("alice", "hash", 1.0))
    # Submitted in one reactor turn: one batch.
    sent = [store.deliver("alice", "bob", "s%d" % i, "b", 2.0) for i in range(2)]
    sent.insert(1, store._executor.submit(broken))
    results = await within(defer.DeferredList(sent, consumeErrors=True))
    assert [ok for ok, _ in results] == [True, False, True]
    results[1][1].trap(errors.StorageUnavailable)
    assert await within(store.count("alice")) == 2
    logged_errors.clear()


@pytest_twisted.ensureDeferred
async def test_text_with_a_nul_is_refused_alone(store):
    await within(store.add_account("alice", "hash", 1.0))
    sent = [
        store.deliver("alice", "bob", "fine", "b", 2.0),
        store.deliver("alice", "bob", "nul", "b\x00", 2.0),
    ]
    results = await within(defer.DeferredList(sent, consumeErrors=True))
    assert results[0][0] and not results[1][0]
    results[1][1].trap(errors.InvalidText)
    assert await within(store.count("alice")) == 1


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_is_storage_unavailable_then_reconnects(
    store, postgres_server, postgres_url
):
    await within(store.add_account("alice", "hash", 1.0))
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(postgres_url)["dbname"]
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    with pytest.raises(errors.StorageUnavailable):
        await within(store.deliver("alice", "bob", "lost", "b", 2.0))
    # The next request connects afresh.
    await within(store.deliver("alice", "bob", "back", "b", 3.0))
    assert [m.subject for m in await within(store.headers("alice"))] == ["back"]


@pytest_twisted.ensureDeferred
async def test_two_nodes_cannot_both_take_the_last_place(postgres_url):
    """Two stores on one database (two nodes): the quota's row lock makes
    the second wait for the first. Planted: no FOR UPDATE in _recipient."""
    from twisted.internet import reactor

    nodes = [open_store(postgres_url, reactor, Quotas(messages=3)) for _ in range(2)]
    for node in nodes:
        node.startService()
    try:
        await within(nodes[0].add_account("alice", "hash", 1.0))
        sent = [nodes[i % 2].deliver("alice", "bob", "s", "b", 1.0) for i in range(10)]
        results = await within(defer.DeferredList(sent, consumeErrors=True))
        for ok, result in results:
            if not ok:
                result.trap(errors.MailboxFull)
        assert sum(ok for ok, _ in results) == 3
        assert await within(nodes[1].count("alice")) == 3
    finally:
        for node in nodes:
            await within(node.stopService())


@pytest_twisted.ensureDeferred
async def test_a_deadlock_between_two_nodes_is_run_again(postgres_url, logged_errors):
    """Two nodes' transactions lock two mailboxes in opposite orders;
    PostgreSQL breaks the deadlock by failing one, which is run again rather
    than refused. Planted: a deadlock taken for a lost connection (psycopg
    counts it as an OperationalError)."""
    from twisted.internet import reactor

    nodes = [open_store(postgres_url, reactor) for _ in range(2)]
    for node in nodes:
        node.startService()
    both_locked_one = threading.Barrier(2, timeout=10)
    first_tries = set()

    def lock(first, second):
        def work(db):
            db.execute("UPDATE mailbox_usage SET bytes = bytes WHERE account = %s", (first,))
            if first not in first_tries:
                first_tries.add(first)
                both_locked_one.wait()
            db.execute("UPDATE mailbox_usage SET bytes = bytes WHERE account = %s", (second,))
            return first

        return work

    try:
        for name in ("alice", "bob"):
            await within(nodes[0].add_account(name, "hash", 1.0))
        sent = [
            nodes[0]._executor.submit(lock("alice", "bob")),
            nodes[1]._executor.submit(lock("bob", "alice")),
        ]
        assert await within(defer.gatherResults(sent), 30) == ["alice", "bob"]
    finally:
        for node in nodes:
            await within(node.stopService())
