"""SQLite storage on a real file: migrations, group commit, savepoints, failures."""

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer

from conftest import fired, within
from mailsvc import errors
from mailsvc.store.sqlite.schema import MIGRATIONS, SchemaTooNew
from mailsvc.store.sqlite import GroupCommitExecutor, SQLiteStorage, connect


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "mail.sqlite")


def test_new_database_gets_the_whole_schema_in_wal_mode(path):
    db = connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_database_from_a_newer_mailsvc_is_refused(path):
    db = connect(path)
    db.execute("PRAGMA user_version = %d" % (len(MIGRATIONS) + 1))
    db.close()
    with pytest.raises(SchemaTooNew):
        connect(path)


def test_open_fails_loudly_on_a_bad_path(tmp_path):
    from twisted.internet import reactor

    with pytest.raises(sqlite3.Error):
        SQLiteStorage.open(str(tmp_path / "missing" / "dir" / "x.sqlite"), reactor)


def test_an_interrupted_creation_is_started_again(path):
    with open(path + ".new", "wb") as half_made:
        half_made.write(b"garbage")
    connect(path).close()
    assert connect(path).execute("SELECT count(*) FROM accounts").fetchone() == (0,)


class Counting:
    """Connects to a database and counts its COMMITs."""

    def __init__(self, path):
        self.path = path
        self.commits = 0

    def __call__(self):
        db = connect(self.path)

        def traced(statement):
            if statement == "COMMIT":
                self.commits += 1

        db.set_trace_callback(traced)
        return db


@pytest.fixture
def counting(path):
    return Counting(path)


@pytest.fixture
def storage(counting):
    from twisted.internet import reactor

    connect(counting.path).close()
    storage = SQLiteStorage(GroupCommitExecutor(counting, reactor))
    storage.startService()
    yield storage
    pytest_twisted.blockon(within(storage.stopService()))


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_share_commits(storage, counting):
    await within(storage.add_account("bob", "hash", 0.0))
    counting.commits = 0
    ids = await within(
        defer.gatherResults(
            [storage.deliver("bob", "alice", "s%d" % i, "body", 1.0) for i in range(200)]
        )
    )
    assert sorted(ids) == list(range(1, 201))
    assert await within(storage.count("bob")) == 200
    # 200 requests, and far fewer transactions: the writer batched them.
    assert 1 <= counting.commits < 100


@pytest_twisted.ensureDeferred
async def test_a_refused_request_does_not_undo_its_batch(storage):
    await within(storage.add_account("bob", "hash", 0.0))
    results = await within(
        defer.DeferredList(
            [
                storage.deliver("bob", "alice", "one", "", 1.0),
                storage.deliver("nobody", "alice", "lost", "", 1.0),
                storage.add_account("bob", "again", 1.0),
                storage.deliver("bob", "alice", "two", "", 1.0),
            ],
            consumeErrors=True,
        )
    )
    assert [ok for ok, _ in results] == [True, False, False, True]
    assert results[1][1].check(errors.UnknownUser)
    assert results[2][1].check(errors.NameTaken)
    headers = await within(storage.headers("bob"))
    assert [m.subject for m in headers] == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_a_locked_database_fails_the_request_and_the_storage_recovers(path):
    from twisted.internet import reactor

    def impatient():
        db = connect(path)
        db.execute("PRAGMA busy_timeout = 0")
        return db

    connect(path).close()
    storage = SQLiteStorage(GroupCommitExecutor(impatient, reactor))
    storage.startService()
    try:
        await within(storage.add_account("bob", "hash", 0.0))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(errors.StorageUnavailable):
            await within(storage.deliver("bob", "alice", "s", "b", 1.0))
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await within(storage.deliver("bob", "alice", "t", "b", 1.0)) == 1
        assert [m.subject for m in await within(storage.headers("bob"))] == ["t"]
    finally:
        await within(storage.stopService())


@pytest_twisted.ensureDeferred
async def test_stop_finishes_what_was_submitted(counting):
    from twisted.internet import reactor

    connect(counting.path).close()
    storage = SQLiteStorage(GroupCommitExecutor(counting, reactor))
    storage.startService()
    pending = [storage.add_account("u%d" % i, "h", 0.0) for i in range(20)]
    await within(storage.stopService())
    assert len(await within(defer.gatherResults(pending))) == 20
    db = connect(counting.path)
    assert db.execute("SELECT count(*) FROM accounts").fetchone() == (20,)


@pytest_twisted.ensureDeferred
async def test_a_database_deleted_under_the_server_is_not_made_again_empty(path):
    import os

    from twisted.internet import reactor

    storage = SQLiteStorage.open(path, reactor)
    os.remove(path)
    storage.startService()
    try:
        with pytest.raises(errors.StorageUnavailable):
            await within(storage.count("bob"))
        assert not os.path.exists(path)
    finally:
        await within(storage.stopService())


@pytest.mark.parametrize(
    "breakage",
    [
        # A full disk: the database may not grow by a page.
        "PRAGMA max_page_count = 1",
        # A read-only database.
        "PRAGMA query_only = ON",
    ],
)
@pytest_twisted.ensureDeferred
async def test_storage_faults_are_refused_cleanly_and_recovered_from(path, breakage):
    from twisted.internet import reactor

    from mailsvc.core.passwords import Passwords
    from mailsvc.core.service import SharedService

    broken = {"on": False}

    def connect_to_the_disk():
        db = connect(path, create=False)
        if broken["on"]:
            db.execute(breakage)
        return db

    def start():
        service = SharedService(
            SQLiteStorage(GroupCommitExecutor(connect_to_the_disk, reactor)),
            Passwords.inline(),
            reactor,
        )
        service.storage.startService()
        service.startService()
        return service

    connect(path).close()
    service = start()
    cookie = await within(service.register("bob", "pw"))
    await within(service.send(cookie, "bob", "before", "x"))
    service.stopService()
    await within(service.storage.stopService())
    # The disk fills up (or turns read-only) while the server is down.
    broken["on"] = True
    service = start()
    try:
        with pytest.raises(errors.StorageUnavailable):
            await within(service.send(cookie, "bob", "refused", "x" * 10000))
        # Nothing half-written, and reads still work.
        assert [m.subject for m in await within(service.list(cookie))] == ["before"]
        # The storage recovers when the disk does: the failed request's
        # connection was closed, and the next one is made afresh.
        broken["on"] = False
        with pytest.raises(errors.StorageUnavailable):
            await within(service.send(cookie, "bob", "refused", "x" * 10000))
        assert await within(service.send(cookie, "bob", "after", "y")) > 0
        assert [m.subject for m in await within(service.list(cookie))] == ["before", "after"]
    finally:
        service.stopService()
        await within(service.storage.stopService())


@pytest_twisted.ensureDeferred
async def test_quick_reads_are_answered_at_once_and_never_wait_for_a_writer(path):
    from twisted.internet import reactor

    storage = SQLiteStorage.open(path, reactor)
    storage.startService()
    try:
        await within(storage.add_account("bob", "hash", 0.0))
        await within(storage.deliver("bob", "alice", "one", "", 1.0))
        # Another writer holds the write lock with a change not yet committed.
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO messages (recipient, sender, subject, body, created)"
            " VALUES ('bob', 'carol', 'two', '', 2.0)"
        )
        assert fired(storage.count("bob")) == 1
        assert fired(storage.account("BOB")) == ("bob", "hash")
        writer.execute("COMMIT")
        writer.close()
        assert fired(storage.count("bob")) == 2
        assert fired(storage.count("nobody")) == 0
        # A read that is not quick still goes to the database thread.
        headers = storage.headers("bob")
        assert [m.subject for m in await within(headers)] == ["one", "two"]
    finally:
        await within(storage.stopService())


@pytest_twisted.ensureDeferred
async def test_quick_reads_go_to_the_thread_when_their_connection_fails(path):
    from twisted.internet import reactor

    attempts = []

    def broken():
        attempts.append(reactor.seconds())
        raise sqlite3.OperationalError("unable to open database file")

    connect(path).close()
    storage = SQLiteStorage(
        GroupCommitExecutor(lambda: connect(path), reactor, connect_reader=broken)
    )
    storage.startService()
    try:
        await within(storage.add_account("bob", "hash", 0.0))
        await within(storage.deliver("bob", "alice", "one", "", 1.0))
        assert await within(storage.count("bob")) == 1
        # Not tried again for every request while it keeps failing.
        assert await within(storage.count("bob")) == 1
        assert len(attempts) == 1
    finally:
        await within(storage.stopService())


@pytest_twisted.ensureDeferred
async def test_count_sees_every_acknowledged_change_with_the_database_thread(path):
    from twisted.internet import reactor

    from mailsvc.core.passwords import Passwords
    from mailsvc.core.service import SharedService

    service = SharedService(SQLiteStorage.open(path, reactor), Passwords.inline(), reactor)
    service.storage.startService()
    service.startService()
    try:
        bob = await within(service.register("bob", "pw"))
        alice = await within(service.register("alice", "pw"))
        expected = 0
        for round in range(10):
            # COUNTs in flight while the deliveries commit, to any name's case.
            during = [service.count(bob)]
            sends = [
                service.send(alice, ("bob", "BOB", "Bob")[i % 3], "s%d" % round, "b")
                for i in range(5)
            ]
            during.append(service.count(bob))
            await within(defer.gatherResults(sends))
            expected += 5
            for seen in await within(defer.gatherResults(during)):
                assert expected - 5 <= seen <= expected
            assert await within(service.count(bob)) == expected
        await within(service.delete(bob))
        assert await within(service.count(bob)) == expected - 1
        assert await within(service.delete_subject(bob, "s3")) == 5
        assert await within(service.count(bob)) == expected - 6
        assert await within(service.count(alice)) == 0
    finally:
        service.stopService()
        await within(service.storage.stopService())
