"""
The PostgreSQL store: L{IMailStorage} on a database that several mailsvc
nodes may share (C{--db postgresql://...}).

psycopg 3, synchronous, on one database thread per node with group commit
(L{mailsvc.store.executor.GroupCommitExecutor}): the requests waiting while
a transaction commits go together in the next one, so 50 writers share one
WAL flush. No read runs on the reactor thread: any read is a network round
trip. Why a thread and not an asynchronous driver: docs/architecture.md.

Savepoints: PostgreSQL slows every backend once one transaction holds more
than 64 subtransactions, and each costs a round trip. Most requests can
fail only before they write (L{queries}), so they run without one; the
C{guarded} ones get one each, and a batch is cut so that it holds at most
L{SAVEPOINTS} of them.

When a transaction fails as a whole: a lost connection refuses every
request of the batch with L{errors.StorageUnavailable} (nothing of it is
acknowledged) and the next batch connects afresh; a deadlock with another
node, or an error of one request that breaks the transaction, runs the
batch again one request a transaction, so only the request at fault is
refused (a request alone that meets a deadlock is run again, up to
L{RETRIES} times).

The schema is the SQL files of C{schema/} (L{schema.migrate}), applied at
start under an advisory lock, so nodes starting together do not race.
"""

import psycopg
from twisted.python.failure import Failure

from mailsvc import errors
from mailsvc.store import OpenFailed, Quotas, executor
from mailsvc.store.executor import ExecutorStorage, storage_failure
from mailsvc.store.postgres import queries
from mailsvc.store.postgres.schema import migrate

# Savepoints in one transaction, at most: below PostgreSQL's 64 cached
# subtransactions (PGPROC_MAX_CACHED_SUBXIDS).
SAVEPOINTS = 63
# Seconds to wait for the server when connecting: a node whose database is
# out of reach answers "storage unavailable" instead of hanging.
CONNECT_TIMEOUT = 5


def connect(url):
    """A connection to C{url}, its schema up to date."""
    connection = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    try:
        migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _transaction(db, batch):
    """Run C{batch} in one transaction; the outcomes, or raise (nothing committed)."""
    outcomes = []
    # A batch of reads needs no transaction: each read sees every commit
    # acknowledged before it, and BEGIN and COMMIT would cost two round trips.
    reads_only = all(getattr(work, "reads_only", False) for work, _ in batch)
    if reads_only:
        for work, args in batch:
            try:
                outcomes.append((True, work(db, *args)))
            except psycopg.Error:
                raise
            except Exception as e:
                outcomes.append((False, Failure(e)))
        return outcomes
    db.execute("BEGIN")
    try:
        for work, args in batch:
            guarded = getattr(work, "guarded", False)
            if guarded:
                db.execute("SAVEPOINT request")
            try:
                result = work(db, *args)
            except psycopg.Error:
                if not guarded:
                    raise
                db.execute("ROLLBACK TO SAVEPOINT request")
                db.execute("RELEASE SAVEPOINT request")
                outcomes.append((False, Failure(errors.Conflict())))
            except Exception as e:
                # Raised before it wrote (or undone by its savepoint).
                if guarded:
                    db.execute("ROLLBACK TO SAVEPOINT request")
                    db.execute("RELEASE SAVEPOINT request")
                outcomes.append((False, Failure(e)))
            else:
                if guarded:
                    db.execute("RELEASE SAVEPOINT request")
                outcomes.append((True, result))
        db.execute("COMMIT")
    except BaseException:
        if not db.closed:
            try:
                db.execute("ROLLBACK")
            except psycopg.Error:
                pass
        raise
    return outcomes


# Times a request alone is run again after a deadlock or a serialization
# failure with another node's transaction.
RETRIES = 3


def _lost(db):
    """Whether C{db}'s connection is gone (as opposed to its transaction failing)."""
    return db.closed or db.broken


def run_batch(db, batch, retries=RETRIES):
    try:
        return _transaction(db, batch)
    except psycopg.Error as e:
        if _lost(db):
            # The connection is lost (or the server shut down): refuse them all.
            raise
        if len(batch) == 1:
            # Class 40, transaction rollback (a deadlock, a serialization
            # failure): psycopg counts them as OperationalError; the
            # connection lives.
            if retries and e.sqlstate and e.sqlstate.startswith("40"):
                return run_batch(db, batch, retries - 1)
            return [(False, storage_failure(e))]
    # A deadlock with another node, or one request that broke the
    # transaction: one request a transaction, so only that one is refused.
    outcomes = []
    for item in batch:
        try:
            outcomes += run_batch(db, [item])
        except psycopg.Error as e:
            outcomes += [(False, storage_failure(e))] * (len(batch) - len(outcomes))
            db.close()
            break
    return outcomes


class GroupCommitExecutor(executor.GroupCommitExecutor):
    """One database thread; a batch holds at most L{SAVEPOINTS} guarded requests."""

    run_batch = staticmethod(run_batch)

    def batches(self, pending):
        batches, batch, savepoints = [], [], 0
        for request in pending:
            guarded = getattr(request[0], "guarded", False)
            if guarded and savepoints == SAVEPOINTS:
                batches.append(batch)
                batch, savepoints = [], 0
            batch.append(request)
            savepoints += guarded
        return batches + [batch]


class PostgresStorage(ExecutorStorage):
    """L{IMailStorage} on PostgreSQL, shared by every node on the database."""

    queries = queries
    shared = True

    @classmethod
    def open(cls, url, reactor, quotas=Quotas()):
        """
        A storage on the database at C{url} (any libpq URL), served by a
        database thread. The schema is created or upgraded now, so that a
        database out of reach fails here (L{OpenFailed}), before the server
        listens.
        """
        try:
            connect(url).close()
        # Any error: PyPy 7.3.11's ctypes, for one, cannot run psycopg's
        # libpq binding (a TypeError).
        except Exception as e:
            raise OpenFailed(
                "cannot use the database %s: %s" % (_safe(url), _first_line(e))
            ) from e
        return cls(GroupCommitExecutor(lambda: connect(url), reactor), quotas)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _safe(url):
    """C{url} without its password, for a message."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable URL)"
    info.pop("password", None)
    return " ".join("%s=%s" % item for item in sorted(info.items()))
