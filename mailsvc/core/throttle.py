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
out a lockout never resets the count. The rules as users meet them:
docs/security.md.

Records are kept in the order of their last failure (or first attempt), so
that forgetting the old ones and making room past C{capacity} take them from
the front: O(1) amortized per attempt, never a scan of every record; at most
C{capacity} keys, so a flood of names cannot exhaust memory.

L{TokenBuckets} limits the rate of work per key (registrations per address,
deliveries per sender).
"""

import collections
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
        # key -> _Record, oldest failure (or first attempt) first.
        self._records = collections.OrderedDict()

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
        else:
            self._forget_old(now)
            record = self._records[key] = _Record()
            record.last_failure = now
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
        self._records.move_to_end(key)
        if record.failures < self.free:
            return 0
        lockout = min(2.0 ** (record.failures - self.free), self.longest)
        record.locked_until = now + lockout
        return lockout

    def adopt(self, key, failures, last_failure):
        """
        C{key}'s failures as the store counts them for every node (each
        failure is stored before it is answered, and a right password's
        forgiveness too): they replace this node's count, and the lockout
        follows from them. C{failures} 0: none stored.
        """
        now = self.clock.seconds()
        if failures and now - last_failure > self.forget_after:
            failures = 0
        record = self._records.get(key)
        if record is None:
            if not failures:
                return
            self._forget_old(now)
            record = self._records[key] = _Record()
        record.failures = failures
        if failures:
            record.last_failure = last_failure
            self._records.move_to_end(key)
        record.locked_until = (
            last_failure + min(2.0 ** (failures - self.free), self.longest)
            if failures >= self.free
            else 0.0
        )
        self._drop_if_clean(key, record)

    def _drop_if_clean(self, key, record):
        if not record.failures and not record.checking:
            del self._records[key]

    def _forget_old(self, now):
        """Drop the records whose last failure is older than forget_after,
        from the front, and make room for one more past capacity."""
        records = self._records
        # Each record is looked at a bounded number of times: a record being
        # checked goes to the back (as its end() would put it), an old one goes.
        for _ in range(len(records)):
            key, record = next(iter(records.items()))
            if now - record.last_failure <= self.forget_after:
                break
            if record.checking:
                records.move_to_end(key)
            else:
                del records[key]
        while len(records) >= self.capacity:
            records.popitem(last=False)


class TokenBuckets:
    """
    A token bucket per key: C{rate} tokens a second, at most C{burst} held. A
    key unseen (or unused long enough to have refilled) holds C{burst}.

    Buckets are kept in the order of their last use; a full one is the same as
    none, so they are forgotten from the front, O(1) amortized; past
    C{capacity} keys the least recently used is forgotten (it may then take
    C{burst} again: the bound is on memory first).
    """

    def __init__(self, clock, rate, burst, capacity=100_000):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        # key -> [tokens, when they were counted], least recently used first.
        self._buckets = collections.OrderedDict()

    def take(self, key):
        """Take one token for C{key}: True, or False (none left: nothing taken)."""
        now = self.clock.seconds()
        self._forget_full(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = self.burst
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens < 1:
            return False
        if bucket is None:
            while len(self._buckets) >= self.capacity:
                self._buckets.popitem(last=False)
            self._buckets[key] = [tokens - 1, now]
        else:
            bucket[0], bucket[1] = tokens - 1, now
            self._buckets.move_to_end(key)
        return True

    def wait(self, key):
        """Seconds until C{key} has a token again (0: it has one now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = bucket[0] + (self.clock.seconds() - bucket[1]) * self.rate
        return max(0.0, (1 - tokens) / self.rate)

    def _forget_full(self, now):
        buckets = self._buckets
        while buckets:
            tokens, then = next(iter(buckets.values()))
            if tokens + (now - then) * self.rate < self.burst:
                break
            buckets.popitem(last=False)

    def __len__(self):
        return len(self._buckets)


def _seconds(wait):
    seconds = math.ceil(wait)
    return "1 second" if seconds == 1 else "%d seconds" % (seconds,)
