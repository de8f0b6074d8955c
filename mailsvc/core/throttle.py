"""
Brute-force protection: password attempts counted per key (a user name, a
peer address).

A key may have C{free} attempts that failed or are still being checked; past
that it is locked out, for one second and then twice as long after each
further failure, up to C{longest}. Attempts still being checked count, so
guesses sent all at once meet the limit as surely as guesses sent one by one;
with C{lenient_bursts} they count only once the key has failed.
A key whose last failure is older than C{forget_after} starts afresh, so that
an address shared by many users is not punished for ever for old typos.
The default C{longest} (300 s) is below C{forget_after} (900 s), so waiting
out a lockout never resets the count. The records are in memory only, at
most C{capacity} keys (the old and idle ones are forgotten first), so a
flood of names cannot exhaust memory. The rules as users meet them:
docs/security.md.
"""

import math

from mailsvc import errors


class _Record:
    __slots__ = ("failures", "checking", "locked_until", "last_failure")

    def __init__(self):
        self.failures = 0
        self.checking = 0
        self.locked_until = 0.0
        self.last_failure = 0.0


class Throttle:
    def __init__(
        self,
        clock,
        free=3,
        longest=300.0,
        forget_after=900.0,
        capacity=100_000,
        lenient_bursts=False,
    ):
        """
        @param lenient_bursts: count attempts in flight only once the key has
            failed, so that many good attempts at once all go through (right
            for an address that many people share; a name is not shared).
        """
        self.clock = clock
        self.lenient_bursts = lenient_bursts
        self.free = free
        self.longest = longest
        self.forget_after = forget_after
        self.capacity = capacity
        self._records = {}

    def begin(self, key):
        """
        An attempt for C{key} starts; raise L{errors.TooManyFailures} if it
        may not. Every begin is followed by one L{end}.
        """
        now = self.clock.seconds()
        record = self._records.get(key)
        if record is not None and now - record.last_failure > self.forget_after:
            record.failures = 0
        if record is not None:
            wait = record.locked_until - now
            if wait > 0:
                raise errors.TooManyFailures(
                    "too many failed attempts: try again in %s" % (_seconds(wait),)
                )
            if (
                record.checking
                and (record.failures or not self.lenient_bursts)
                and record.failures + record.checking >= self.free
            ):
                # Attempts in flight count, so that a burst of guesses meets
                # the limit as surely as guesses one by one.
                raise errors.TooManyFailures("too many attempts at once: try again later")
        elif len(self._records) >= self.capacity:
            self._forget_old(now)
        if record is None:
            record = self._records[key] = _Record()
        record.checking += 1

    def end(self, key, succeeded, forgive=True):
        """
        The attempt for C{key} is over. A failure may start a lockout: return
        its length in seconds, or 0. A success forgives earlier failures,
        unless C{forgive} is false (an address: one good password says little
        of the other guesses made from it).
        """
        record = self._records.get(key)
        if record is None:
            return 0
        record.checking -= 1
        if succeeded:
            if forgive:
                record.failures = 0
            self._drop_if_clean(key, record)
            return 0
        now = self.clock.seconds()
        record.failures += 1
        record.last_failure = now
        if record.failures < self.free:
            return 0
        lockout = min(2.0 ** (record.failures - self.free), self.longest)
        record.locked_until = now + lockout
        return lockout

    def _drop_if_clean(self, key, record):
        if not record.failures and not record.checking:
            del self._records[key]

    def _forget_old(self, now):
        for key, record in list(self._records.items()):
            if not record.checking and now - record.last_failure > self.forget_after:
                del self._records[key]
        while len(self._records) >= self.capacity:
            del self._records[next(iter(self._records))]


def _seconds(wait):
    seconds = math.ceil(wait)
    return "1 second" if seconds == 1 else "%d seconds" % (seconds,)
