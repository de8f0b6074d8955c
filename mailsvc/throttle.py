"""
Brute-force protection: failed attempts counted per key (a user name, a peer
address). After C{free} failures in a row a key is locked out, for one second
and then twice as long after each further failure, up to C{longest}.
"""

import math

from mailsvc import errors


class Throttle:
    def __init__(self, clock, free=3, longest=300.0, capacity=100_000):
        self.clock = clock
        self.free = free
        self.longest = longest
        self.capacity = capacity
        self._failures = {}  # key -> [failures in a row, locked until]

    def check(self, key):
        """Raise L{errors.TooManyFailures} while C{key} is locked out."""
        entry = self._failures.get(key)
        if entry is not None:
            wait = entry[1] - self.clock.seconds()
            if wait > 0:
                raise errors.TooManyFailures(
                    "too many failed attempts: try again in %d seconds" % math.ceil(wait)
                )

    def failed(self, key):
        """Count a failure; return the lockout it starts, in seconds, or 0."""
        now = self.clock.seconds()
        if len(self._failures) >= self.capacity:
            self._forget_old(now)
        entry = self._failures.setdefault(key, [0, now])
        entry[0] += 1
        if entry[0] < self.free:
            return 0
        lockout = min(2.0 ** (entry[0] - self.free), self.longest)
        entry[1] = now + lockout
        return lockout

    def succeeded(self, key):
        self._failures.pop(key, None)

    def _forget_old(self, now):
        # A key whose lockout ended long ago is as good as new.
        for key, (_, until) in list(self._failures.items()):
            if until + self.longest < now:
                del self._failures[key]
        while len(self._failures) >= self.capacity:
            del self._failures[next(iter(self._failures))]
