"""
Password hashing with argon2id, off the reactor thread.

A hash takes tens of milliseconds of CPU by design; run on the reactor it would
stall every connection, so L{Passwords} runs each one in a small thread pool of
its own (argon2-cffi releases the GIL while it works).

New hashes (REGISTER, which anyone may ask for) take at most C{hash_slots} of
the pool's threads at once, one less than the pool has: the others are always
there for logins, however many registrations wait.
"""

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class Passwords:
    """
    Hash and verify passwords; both return Deferreds.

    @param run: C{run(f, *args)} returns a Deferred of C{f(*args)}: see
        L{threaded} for the server and L{inline} for tests.
    """

    def __init__(self, run, hasher=None, pool=None, hash_slots=1):
        self._run = run
        self._pool = pool
        self._hashing = defer.DeferredSemaphore(hash_slots)
        self._hasher = hasher or PasswordHasher()
        # Checked against when the user does not exist, so that a wrong name
        # costs as long as a wrong password and names cannot be probed by timing.
        self._decoy = self._hasher.hash("decoy password")

    @classmethod
    def threaded(cls, reactor, threads=2, hasher=None):
        """Passwords hashed in a pool of C{threads} threads (see L{start})."""
        pool = ThreadPool(minthreads=0, maxthreads=threads, name="mailsvc-passwords")
        return cls(
            lambda f, *args: deferToThreadPool(reactor, pool, f, *args),
            hasher,
            pool,
            hash_slots=max(1, threads - 1),
        )

    def start(self):
        """Start the thread pool: in startService, after twistd has daemonized."""
        if self._pool is not None:
            self._pool.start()

    def stop(self):
        if self._pool is not None:
            self._pool.stop()

    @classmethod
    def inline(cls, hasher=None):
        """Passwords hashed on the calling thread (for tests)."""
        return cls(defer.maybeDeferred, hasher or cheap_hasher())

    def hash(self, password):
        """A new hash: one of at most C{hash_slots} at once, queued past that."""
        return self._hashing.run(self._run, self._hasher.hash, password)

    def verify(self, password_hash, password):
        """Fire with whether C{password} matches; C{password_hash} None is a miss."""
        return self._run(self._verify, password_hash, password)

    def _verify(self, password_hash, password):
        try:
            return self._hasher.verify(password_hash or self._decoy, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False


def cheap_hasher():
    """An argon2id hasher fast enough for test suites; never for real accounts."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
