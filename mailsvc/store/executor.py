"""
What the SQL backends share: one database thread with group commit
(L{GroupCommitExecutor}), and L{ExecutorStorage}, the L{IMailStorage} methods
as requests to it. Each backend brings its SQL (a C{queries} module of work
functions C{work(connection, *args)}), how it runs a batch in one transaction,
and which errors mean "the database is unavailable".

Work functions carry marks the executors read: C{reads_only} (a batch of
such takes no write lock), C{quick} (one indexed row: SQLite may read it on
the reactor thread), C{guarded} (it may fail after it wrote: it needs a
savepoint of its own to be undone alone).
"""

import queue
import threading
import time

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.stats import Histogram
from mailsvc.interfaces import IMailStorage
from mailsvc.store import Quotas

log = Logger()


def reading(work):
    work.reads_only = True
    return work


def quick(work):
    """A read of one indexed row, whatever the data holds: fit for the reactor thread."""
    work.reads_only = work.quick = True
    return work


def guarded(work):
    """A request that may fail after it wrote: it needs a savepoint of its own."""
    work.guarded = True
    return work


def storage_failure(exception):
    log.warn("storage error: {error}", error=exception)
    return Failure(errors.StorageUnavailable())


_STOP = object()
# Seconds before the reactor's read-only connection is opened again after an error.
READER_RETRY = 1.0


# /metrics' buckets: requests per transaction (up to max_batch), and seconds
# per transaction (an fsync is a few milliseconds on a disk, more when busy).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GroupCommitExecutor:
    """
    Runs requests on one database thread, as many as are waiting in each
    transaction, and fires their Deferreds on the reactor thread after COMMIT.

    A subclass gives C{run_batch(connection, [(work, args), ...])}, which runs
    one transaction and returns C{[(succeeded, result or Failure), ...]}, or
    raises if the transaction failed as a whole (then every request of it is
    refused with L{errors.StorageUnavailable}, and the connection is opened
    afresh for the next); C{reader_errors}, the errors of a quick read that
    send it to the thread instead; and may split what is waiting into several
    transactions (L{batches}).
    """

    reader_errors = (OSError,)

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
            except self.reader_errors:
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
        thread, on a read-only connection of its own (SQLite's, in WAL mode:
        it never waits for the database thread's writes, and it sees every
        commit already acknowledged; it never waits for a lock either: it
        raises, and the read goes to the thread).
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

    def batches(self, pending):
        """The transactions to run C{pending} in, in order: all in one."""
        return [pending]

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
            for batch in self.batches(pending) if pending else ():
                began = time.monotonic()
                outcomes = self._run([(work, args) for work, args, _ in batch])
                self._reactor.callFromThread(
                    self._done, [d for _, _, d in batch], outcomes, time.monotonic() - began
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
        # afresh after any storage error, so the server recovers when the
        # database does.
        try:
            if self._connection is None or getattr(self._connection, "closed", False):
                self._connection = self._connect()
            return self.run_batch(self._connection, batch)
        except Exception as e:  # the database's errors, OSError, SchemaTooNew
            if self._connection is not None:
                try:
                    self._connection.close()
                except Exception:
                    pass
                self._connection = None
            return [(False, storage_failure(e))] * len(batch)


def _fire(deferreds, outcomes):
    for d, (succeeded, result) in zip(deferreds, outcomes):
        if succeeded:
            d.callback(result)
        else:
            d.errback(result)


@implementer(IMailStorage)
class ExecutorStorage(service.Service):
    """
    L{IMailStorage} as requests to an executor, which decides which thread
    runs the SQL; C{queries} (a class attribute) is the backend's module of
    work functions.
    """

    queries = None
    # Whether other processes may change this store (several nodes on one
    # database): then nothing read from it may be kept in memory.
    shared = False

    def __init__(self, executor, quotas=Quotas()):
        self._executor = executor
        self._quotas = quotas

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

    def _submit(self, work, *args):
        return self._executor.submit(work, *args)

    def add_account(self, name, password_hash, now):
        return self._submit(self.queries.add_account, name, password_hash, now)

    def account(self, name):
        return self._submit(self.queries.account, name)

    def add_session(self, token_hash, account, now):
        return self._submit(self.queries.add_session, token_hash, account, now)

    def session_account(self, token_hash):
        return self._submit(self.queries.session_account, token_hash)

    def touch_session(self, token_hash, now):
        return self._submit(self.queries.touch_session, token_hash, now)

    def expire_sessions(self, before):
        return self._submit(self.queries.expire_sessions, before)

    def remove_session(self, token_hash):
        return self._submit(self.queries.remove_session, token_hash)

    def stage(self, token_hash, text, now):
        return self._submit(self.queries.stage, token_hash, text, now, self._quotas)

    def deliver_staged(self, token_hash, sender, recipient, now):
        return self._submit(
            self.queries.deliver_staged, token_hash, sender, recipient, now, self._quotas
        )

    def deliver(self, recipient, sender, subject, body, now, raw=None):
        return self._submit(
            self.queries.deliver, recipient, sender, subject, body, now, self._quotas, raw
        )

    def deliver_all(self, recipients, sender, subject, body, now, raw=None):
        return self._submit(
            self.queries.deliver_all,
            list(recipients),
            sender,
            subject,
            body,
            now,
            self._quotas,
            raw,
        )

    def messages(self, account):
        return self._submit(self.queries.messages, account)

    def sizes(self, account, measure):
        return self._submit(self.queries.sizes, account, measure)

    def delete_ids(self, account, message_ids):
        return self._submit(self.queries.delete_ids, account, list(message_ids))

    def count(self, account):
        return self._submit(self.queries.count, account)

    def extent(self, account, sender=None):
        return self._submit(self.queries.extent, account, sender)

    def headers(self, account, sender=None, after=None, limit=None):
        return self._submit(self.queries.headers, account, sender, after, limit)

    def message(self, account, message_id=None):
        return self._submit(self.queries.message, account, message_id)

    def delete(self, account, message_id=None):
        return self._submit(self.queries.delete, account, message_id)

    def delete_subject(self, account, subject):
        return self._submit(self.queries.delete_subject, account, subject)

    def summary(self):
        return self._submit(self.queries.summary)

    def failures(self, keys):
        return self._submit(self.queries.failures, list(keys))

    def record_failure(self, key, now, forget_after):
        return self._submit(self.queries.record_failure, key, now, forget_after)

    def forgive(self, key):
        return self._submit(self.queries.forgive, key)
