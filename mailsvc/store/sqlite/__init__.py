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
    the read, and those of the next L{READER_RETRY} second, go to the thread.
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

The schema is the SQL files of C{schema/}, applied in order (L{schema.migrate}).
"""

import os
import queue
import sqlite3
import threading
import time
from urllib.request import pathname2url

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.application import service
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.stats import Histogram
from mailsvc.interfaces import IMailStorage
from mailsvc.store import Message, Quotas
from mailsvc.store.sqlite.schema import MIGRATIONS, migrate

# /metrics' buckets: requests per transaction (up to max_batch), and seconds
# per transaction (an fsync is a few milliseconds on a disk, more when busy).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

log = Logger()


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


def _storageFailure(exception):
    log.warn("storage error: {error}", error=exception)
    return Failure(errors.StorageUnavailable())


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
            return defer.fail(_storageFailure(e))
        return defer.succeed(result) if succeeded else defer.fail(result)

    def stop(self):
        self._connection.close()
        return defer.succeed(None)


_STOP = object()
# Seconds before the reactor's read-only connection is opened again after an error.
READER_RETRY = 1.0


class GroupCommitExecutor:
    """
    Runs requests on one database thread, as many as are waiting in each
    transaction, and fires their Deferreds on the reactor thread after COMMIT.
    """

    def __init__(self, connect, reactor, max_batch=512, connect_reader=None):
        self._connect = connect
        self._connection = None
        self._connect_reader = connect_reader
        self._reader = None
        self._reader_retry_at = 0.0
        self._reactor = reactor
        self._max_batch = max_batch
        self._requests = queue.SimpleQueue()
        self._thread = None
        self._stopped = defer.Deferred()
        # For /metrics, updated on the reactor thread: requests per
        # transaction, and how long each transaction took to commit.
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_BUCKETS)

    def start(self):
        self._thread = threading.Thread(
            target=self._serve, name="mailsvc-storage", daemon=True
        )
        self._thread.start()

    def submit(self, work, *args):
        if getattr(work, "quick", False) and self._reader_ready():
            try:
                return defer.succeed(self._read_now(work, args))
            except (sqlite3.Error, OSError):
                # The thread's connection recovers, or reports the storage
                # unavailable. This one is opened again after a pause: while
                # the disk is in trouble, the reactor does not try it for
                # every request.
                self._close_reader()
                self._reader_retry_at = self._reactor.seconds() + READER_RETRY
            except Exception:
                return defer.fail()
        d = defer.Deferred()
        self._requests.put((work, args, d))
        return d

    def _read_now(self, work, args):
        """
        Run C{work}, a single indexed read, at once on the calling (reactor)
        thread, on a read-only connection of its own: in WAL mode it never
        waits for the database thread's writes, and it sees every commit
        already acknowledged. It never waits for a lock either (it raises,
        and the read goes to the thread).
        """
        if self._reader is None:
            self._reader = self._connect_reader()
        return work(self._reader, *args)

    def _reader_ready(self):
        """Whether there is a reader, or one may be opened now."""
        if self._reader is not None:
            return True
        return (
            self._connect_reader is not None
            and self._reactor.seconds() >= self._reader_retry_at
        )

    def _close_reader(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def stop(self):
        """Finish every request already submitted, then close the database."""
        self._close_reader()
        self._connect_reader = None
        if self._thread is None:
            return defer.succeed(None)
        self._thread = None
        self._requests.put(_STOP)
        return self._stopped

    def _serve(self):
        stopping = False
        while not stopping:
            pending = [self._requests.get()]
            while len(pending) < self._max_batch:
                try:
                    pending.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            if pending[-1] is _STOP:
                stopping = True
                pending.pop()
            if pending:
                began = time.monotonic()
                outcomes = self._run([(work, args) for work, args, _ in pending])
                self._reactor.callFromThread(
                    self._done, [d for _, _, d in pending], outcomes, time.monotonic() - began
                )
        if self._connection is not None:
            self._connection.close()
        self._reactor.callFromThread(self._stopped.callback, None)

    def _done(self, deferreds, outcomes, seconds):
        self.batch_sizes.observe(len(deferreds))
        self.commit_seconds.observe(seconds)
        _fire(deferreds, outcomes)

    def _run(self, batch):
        # The connection is opened here, on the thread that uses it, and opened
        # afresh after any storage error, so the server recovers when the disk does.
        try:
            if self._connection is None:
                self._connection = self._connect()
            return _run_batch(self._connection, batch)
        except Exception as e:  # sqlite3.Error, OSError, SchemaTooNew
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            return [(False, _storageFailure(e))] * len(batch)


def _fire(deferreds, outcomes):
    for d, (succeeded, result) in zip(deferreds, outcomes):
        if succeeded:
            d.callback(result)
        else:
            d.errback(result)


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


@implementer(IMailStorage)
class SQLiteStorage(service.Service):
    """L{IMailStorage} on SQLite; C{executor} decides which thread runs the SQL."""

    def __init__(self, executor, quotas=Quotas()):
        self._executor = executor
        self._quotas = quotas

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

    @property
    def batch_sizes(self):
        """A L{Histogram} of requests per transaction, or None (inline)."""
        return getattr(self._executor, "batch_sizes", None)

    @property
    def commit_seconds(self):
        """A L{Histogram} of seconds per transaction, or None (inline)."""
        return getattr(self._executor, "commit_seconds", None)

    def startService(self):
        super().startService()
        self._executor.start()

    def stopService(self):
        super().stopService()
        return self._executor.stop()

    def add_account(self, name, password_hash, now):
        return self._executor.submit(_add_account, name, password_hash, now)

    def account(self, name):
        return self._executor.submit(_account, name)

    def add_session(self, token_hash, account, now):
        return self._executor.submit(_add_session, token_hash, account, now)

    def session_account(self, token_hash):
        return self._executor.submit(_session_account, token_hash)

    def touch_session(self, token_hash, now):
        return self._executor.submit(_touch_session, token_hash, now)

    def expire_sessions(self, before):
        return self._executor.submit(_expire_sessions, before)

    def remove_session(self, token_hash):
        return self._executor.submit(_remove_session, token_hash)

    def stage(self, token_hash, text, now):
        return self._executor.submit(_stage, token_hash, text, now, self._quotas)

    def deliver_staged(self, token_hash, sender, recipient, now):
        return self._executor.submit(
            _deliver_staged, token_hash, sender, recipient, now, self._quotas
        )

    def deliver(self, recipient, sender, subject, body, now, raw=None):
        return self._executor.submit(
            _deliver, recipient, sender, subject, body, now, self._quotas, raw
        )

    def deliver_all(self, recipients, sender, subject, body, now, raw=None):
        return self._executor.submit(
            _deliver_all, list(recipients), sender, subject, body, now, self._quotas, raw
        )

    def messages(self, account):
        return self._executor.submit(_messages, account)

    def delete_ids(self, account, message_ids):
        return self._executor.submit(_delete_ids, account, list(message_ids))

    def count(self, account):
        return self._executor.submit(_count, account)

    def extent(self, account, sender=None):
        return self._executor.submit(_extent, account, sender)

    def headers(self, account, sender=None, after=None, limit=None):
        return self._executor.submit(_headers, account, sender, after, limit)

    def message(self, account, message_id=None):
        return self._executor.submit(_message, account, message_id)

    def delete(self, account, message_id=None):
        return self._executor.submit(_delete, account, message_id)

    def delete_subject(self, account, subject):
        return self._executor.submit(_delete_subject, account, subject)

    def summary(self):
        return self._executor.submit(_summary)


# The work functions below run on the database thread, inside a savepoint.


def _reading(work):
    work.reads_only = True
    return work


def _quick(work):
    """A read of one indexed row, whatever the data holds: fit for the reactor thread."""
    work.reads_only = work.quick = True
    return work



def _add_account(db, name, password_hash, now):
    try:
        db.execute(
            "INSERT INTO accounts (name, password_hash, created) VALUES (?, ?, ?)",
            (name, password_hash, now),
        )
    except sqlite3.IntegrityError:
        raise errors.NameTaken()
    return name


@_quick
def _account(db, name):
    return db.execute(
        "SELECT name, password_hash FROM accounts WHERE name = ?", (name,)
    ).fetchone()


def _add_session(db, token_hash, account, now):
    db.execute(
        "INSERT INTO sessions (token_hash, account, created, last_used)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, account, now, now),
    )


@_quick
def _session_account(db, token_hash):
    return db.execute(
        "SELECT account, last_used FROM sessions WHERE token_hash = ?", (token_hash,)
    ).fetchone()


def _touch_session(db, token_hash, now):
    db.execute("UPDATE sessions SET last_used = ? WHERE token_hash = ?", (now, token_hash))


def _expire_sessions(db, before):
    return db.execute("DELETE FROM sessions WHERE last_used < ?", (before,)).rowcount


def _remove_session(db, token_hash):
    return (
        db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)).rowcount
        > 0
    )


def _stage(db, token_hash, text, now, quotas):
    if quotas.staged is not None:
        (staged,) = db.execute(
            "SELECT count(*) FROM staged WHERE session = ?", (token_hash,)
        ).fetchone()
        if staged >= quotas.staged:
            raise errors.TooManyStaged(quotas.staged)
    db.execute(
        "INSERT INTO staged (session, text, created) VALUES (?, ?, ?)",
        (token_hash, text, now),
    )


def _recipient(db, name):
    row = db.execute("SELECT name FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise errors.UnknownUser("no such user: %s" % (name,))
    return row[0]


def _deliver_staged(db, token_hash, sender, recipient, now, quotas):
    row = db.execute(
        "SELECT id, text FROM staged WHERE session = ? ORDER BY id DESC LIMIT 1",
        (token_hash,),
    ).fetchone()
    if row is None:
        raise errors.NothingStaged()
    staged_id, text = row
    message_id = _deliver(db, recipient, sender, "", text, now, quotas)
    db.execute("DELETE FROM staged WHERE id = ?", (staged_id,))
    return message_id


def _deliver(db, recipient, sender, subject, body, now, quotas, raw=None):
    recipient = _recipient(db, recipient)
    if quotas.messages is not None or quotas.bytes is not None:
        size = len((subject + body).encode("utf-8")) + len(raw or b"")
        _check_quota(db, recipient, size, quotas)
    return db.execute(
        "INSERT INTO messages (recipient, sender, subject, body, created, raw)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (recipient, sender, subject, body, now, raw),
    ).lastrowid


def _deliver_all(db, recipients, sender, subject, body, now, quotas, raw):
    # One savepoint for the lot: a refusal for one mailbox undoes the others.
    return [_deliver(db, r, sender, subject, body, now, quotas, raw) for r in recipients]


@_reading
def _messages(db, account):
    rows = db.execute(
        "SELECT id, sender, created, subject, body, raw FROM messages"
        " WHERE recipient = ? ORDER BY id",
        (account,),
    )
    return [Message(*row) for row in rows]


def _delete_ids(db, account, message_ids):
    deleted = 0
    for message_id in message_ids:
        deleted += db.execute(
            "DELETE FROM messages WHERE recipient = ? AND id = ?", (account, message_id)
        ).rowcount
    return deleted


def _check_quota(db, recipient, size, quotas):
    row = db.execute(
        "SELECT messages, bytes FROM mailbox_usage WHERE account = ?", (recipient,)
    ).fetchone()
    messages, used = row or (0, 0)
    if quotas.messages is not None and messages + 1 > quotas.messages:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d messages" % (recipient, quotas.messages)
        )
    if quotas.bytes is not None and used + size > quotas.bytes:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d bytes" % (recipient, quotas.bytes)
        )


@_quick
def _count(db, account):
    # Kept by triggers (schema.py): no scan of the mailbox.
    row = db.execute(
        "SELECT messages FROM mailbox_usage WHERE account = ?", (account,)
    ).fetchone()
    return row[0] if row else 0


def _mailbox_query(columns, account, sender, after=None):
    query = "SELECT " + columns + " FROM messages WHERE recipient = ?"
    parameters = [account]
    if sender is not None:
        query += " AND sender = ? COLLATE NOCASE"
        parameters.append(sender)
    if after is not None:
        query += " AND id > ?"
        parameters.append(after)
    return query, parameters


@_reading
def _extent(db, account, sender):
    # Over the (recipient, id) index; with a sender, each of the mailbox's rows.
    query, parameters = _mailbox_query("count(*), max(id)", account, sender)
    count, newest = db.execute(query, parameters).fetchone()
    return count, newest


@_reading
def _headers(db, account, sender, after=None, limit=None):
    query, parameters = _mailbox_query("id, sender, created, subject", account, sender, after)
    query += " ORDER BY id"
    if limit is not None:
        query += " LIMIT ?"
        parameters.append(limit)
    return [Message(*row) for row in db.execute(query, parameters)]


@_reading
def _message(db, account, message_id):
    query = (
        "SELECT id, sender, created, subject, body, raw FROM messages WHERE recipient = ?"
    )
    if message_id is None:
        row = db.execute(query + " ORDER BY id LIMIT 1", (account,)).fetchone()
        if row is None:
            raise errors.EmptyMailbox()
    else:
        row = db.execute(query + " AND id = ?", (account, message_id)).fetchone()
        if row is None:
            raise errors.NoSuchMessage("no such message: %d" % (message_id,))
    return Message(*row)


def _delete(db, account, message_id):
    message_id = _message(db, account, message_id).id
    db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    return message_id


def _delete_subject(db, account, subject):
    return db.execute(
        "DELETE FROM messages WHERE recipient = ? AND subject = ?", (account, subject)
    ).rowcount


@_reading
def _summary(db):
    def one(query):
        return db.execute(query).fetchone()

    (accounts,) = one("SELECT count(*) FROM accounts")
    (sessions,) = one("SELECT count(*) FROM sessions")
    staged, staged_bytes = one("SELECT count(*), coalesce(sum(length(text)), 0) FROM staged")
    # From the per-mailbox counts the triggers keep (schema 002): one row a
    # mailbox, never a scan of the messages (80 MB of them took seconds of the
    # one database thread, and every write waited).
    messages, message_bytes, mailboxes, largest = one(
        "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0),"
        " count(*), coalesce(max(messages), 0) FROM mailbox_usage WHERE messages > 0"
    )
    return {
        "accounts": accounts,
        "sessions": sessions,
        "staged": staged,
        "staged_chars": staged_bytes,
        "messages": messages,
        "message_chars": message_bytes,
        "mailboxes": mailboxes,
        "largest_mailbox": largest,
    }
