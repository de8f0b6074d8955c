"""
The SQLite store: L{IMailStorage} on one database file.

Its SQL runs through an executor, its private business:

  - L{GroupCommitExecutor}: one database thread; requests that arrive while a
    transaction is being committed are run together in the next one (each in its
    own SAVEPOINT, so one refusal does not undo the others), so 50 concurrent
    writers pay for one fsync, not 50. The reactor thread never writes; it
    reads only what costs one indexed row (an account, a session, a count),
    at once, on a read-only connection of its own that never waits for a lock
    (in WAL mode it sees every commit already acknowledged). For such a read
    the trip through the thread costs more than the read; after any error
    the read, and those of the next
    L{mailsvc.store.executor.READER_RETRY} second, go to the thread.
  - L{InlineExecutor}: runs each request at once on the calling thread, for
    unit tests driven by StringTransport and Clock.

Why so: every OK means "committed with C{synchronous = FULL}", so each commit
costs an fsync, and batching is the only way to share it. A transaction that
fails as a whole fails every request in it (L{errors.StorageUnavailable}):
nothing is acknowledged unless it committed. The thread then opens a new
connection, never creating the file, so the server recovers when the disk
does, and a database deleted under it does not come back empty. Quotas are
checked in the savepoint of the write they guard, on the one thread, so two
deliveries cannot both take the last place. A batch that only reads begins
with a plain BEGIN, so reads go on while the database cannot be written.

The SQL is L{queries}; the schema the SQL files of C{schema/}, applied in
order (L{schema.migrate}).
"""

import os
import sqlite3
from urllib.request import pathname2url

from twisted.internet import defer
from twisted.python.failure import Failure

from mailsvc import errors
from mailsvc.store import Quotas, executor
from mailsvc.store.executor import ExecutorStorage, storage_failure
from mailsvc.store.sqlite import queries
from mailsvc.store.sqlite.schema import MIGRATIONS, migrate


def _run_batch(connection, batch):
    """
    Run C{[(work, args), ...]} in one transaction, each in a savepoint; return
    C{[(succeeded, result or Failure), ...]} in the same order. Raise
    L{sqlite3.Error} if the transaction itself failed: then nothing of it is
    durable, and nothing of it may be acknowledged.
    """
    outcomes = []
    # A batch that only reads takes no write lock, so reads go on while the
    # database cannot be written (a full disk, a read-only file).
    reads_only = all(getattr(work, "reads_only", False) for work, _ in batch)
    connection.execute("BEGIN" if reads_only else "BEGIN IMMEDIATE")
    try:
        for work, args in batch:
            connection.execute("SAVEPOINT request")
            try:
                result = work(connection, *args)
            except sqlite3.IntegrityError:
                # A request that contradicts what is stored (its session was
                # removed meanwhile, say): refuse it alone.
                connection.execute("ROLLBACK TO request")
                connection.execute("RELEASE request")
                outcomes.append(
                    (False, Failure(errors.Conflict()))
                )
            except sqlite3.Error:
                raise
            except Exception as e:
                connection.execute("ROLLBACK TO request")
                connection.execute("RELEASE request")
                outcomes.append((False, Failure(e)))
            else:
                connection.execute("RELEASE request")
                outcomes.append((True, result))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    return outcomes


class InlineExecutor:
    """Runs each request at once, in its own transaction, on the caller's thread."""

    def __init__(self, connection):
        self._connection = connection

    def start(self):
        pass

    def submit(self, work, *args):
        try:
            [(succeeded, result)] = _run_batch(self._connection, [(work, args)])
        except sqlite3.Error as e:
            return defer.fail(storage_failure(e))
        return defer.succeed(result) if succeeded else defer.fail(result)

    def stop(self):
        self._connection.close()
        return defer.succeed(None)


class GroupCommitExecutor(executor.GroupCommitExecutor):
    """
    Runs requests on one database thread, as many as are waiting in each
    transaction, each in a savepoint; reads of one indexed row may run at
    once on the reactor thread's read-only connection.
    """

    reader_errors = (sqlite3.Error, OSError)
    run_batch = staticmethod(_run_batch)


def connect(path, create=True):
    """
    Open (creating it if need be and C{create}) and migrate the database at
    C{path}.

    A new database is built under a temporary name and renamed into place, so a
    crash during creation never leaves a half-made database at C{path}.
    """
    if path != ":memory:" and not os.path.exists(path):
        if not create:
            raise sqlite3.OperationalError("database file %s is missing" % (path,))
        building = path + ".new"
        if os.path.exists(building):
            os.remove(building)
        # Its owner's only, whatever the umask: created before SQLite opens
        # it, which gives the -wal and -shm files the same mode.
        try:
            os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            raise sqlite3.OperationalError("unable to open database file %s: %s" % (path, e))
        connection = _open(building)
        connection.close()
        os.replace(building, path)
    return _open(path)


def connect_reader(path):
    """
    A read-only connection to the existing, migrated database at C{path}
    that never waits for a lock. L{sqlite3.Error} if there is none.
    """
    uri = "file:%s?mode=ro" % (pathname2url(os.path.abspath(path)),)
    connection = sqlite3.connect(
        uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
    )
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version != len(MIGRATIONS):
            raise sqlite3.OperationalError("database schema version %d" % (version,))
    except BaseException:
        connection.close()
        raise
    return connection


def _open(path):
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Each cursor is closed at once: a pragma that answers a row keeps its
    # statement active until the cursor is collected, which PyPy does late, and
    # an active pragma makes the migrations' COMMIT fail ("SQL statements in
    # progress").
    connection.execute("PRAGMA journal_mode = WAL").close()
    # FULL: a commit is on disk, not only in the OS cache, before its OK is sent.
    connection.execute("PRAGMA synchronous = FULL").close()
    connection.execute("PRAGMA foreign_keys = ON").close()
    connection.execute("PRAGMA busy_timeout = 5000").close()
    migrate(connection)
    return connection


class SQLiteStorage(ExecutorStorage):
    """L{IMailStorage} on SQLite; C{executor} decides which thread runs the SQL."""

    queries = queries

    @classmethod
    def open(cls, path, reactor, quotas=Quotas()):
        """
        A storage on the database at C{path}, served by a database thread.

        The database is created and migrated now, so that a bad path fails
        here, loudly, before the server listens; the thread opens its own
        connection when the storage starts (after twistd has daemonized).
        """
        connect(path).close()
        if path != ":memory:":
            # The reader opens it by this name later: whatever the working
            # directory is then.
            path = os.path.abspath(path)
        # Never create it again: a database deleted under a running server must
        # not come back empty.
        return cls(
            GroupCommitExecutor(
                lambda: connect(path, create=False),
                reactor,
                connect_reader=None if path == ":memory:" else lambda: connect_reader(path),
            ),
            quotas,
        )

    @classmethod
    def inline(cls, path=":memory:", quotas=Quotas()):
        """A storage that runs its SQL at once on the calling thread."""
        return cls(InlineExecutor(connect(path)), quotas)
