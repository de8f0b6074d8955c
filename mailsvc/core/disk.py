"""
The total-disk guard (C{--min-free-disk}): new accounts and deliveries are
refused, with L{errors.DiskFull}, while less than a minimum is free on the
database's file system, before SQLite ever meets a full disk. Deletes are never
guarded, so that users can free space.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from mailsvc import errors


class DiskGuard:
    """
    @param directory: where the database lives.
    @param minimum: bytes that must stay free (for unprivileged users).
    @param run: C{run(f)} returns a Deferred of C{f()}: a thread in the server
        (statvfs may block on a slow file system), at once in tests.
    @param interval: seconds a measurement is reused.
    """

    log = Logger()

    def __init__(self, directory, minimum, clock, run=defer.maybeDeferred,
                 statvfs=os.statvfs, interval=1.0):
        self.directory = directory
        self.minimum = minimum
        self.clock = clock
        self._run = run
        self._statvfs = statvfs
        self.interval = interval
        self._free = None
        self._measured_at = 0.0
        self._measuring = None
        self._short = False
        self._ever = False  # measured (or tried) at least once

    def check(self):
        """Fire with None if there is room; fail with L{errors.DiskFull} if not."""
        now = self.clock.seconds()
        if self._measuring is None and self._ever and now - self._measured_at < self.interval:
            return self._verdict()
        if self._measuring is None:
            self._measured_at = now
            measuring = self._measuring = defer.Deferred()
            self._run(self._measure).addBoth(self._measured).chainDeferred(measuring)
            if measuring.called:  # measured at once (tests)
                return self._verdict()
        d = defer.Deferred()
        self._measuring.addBoth(lambda _: self._verdict().chainDeferred(d))
        return d

    def _measure(self):
        stat = self._statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize

    def _measured(self, free):
        self._measuring = None
        self._ever = True
        if isinstance(free, int):
            self._free = free
        else:
            # Not measurable: say so, and refuse nothing for it.
            self.log.warn("cannot measure free disk space of {directory}: {error}",
                          directory=self.directory, error=free.value)
            self._free = None
        short = self._free is not None and self._free < self.minimum
        if short != self._short:
            self._short = short
            if short:
                self.log.warn(
                    "disk nearly full: {free} bytes free in {directory}, under"
                    " --min-free-disk {minimum}: new accounts and deliveries refused",
                    free=self._free, directory=self.directory, minimum=self.minimum,
                )
            else:
                self.log.info(
                    "disk space back: {free} bytes free in {directory}: new accounts"
                    " and deliveries accepted again",
                    free=self._free, directory=self.directory,
                )

    def _verdict(self):
        if self._free is not None and self._free < self.minimum:
            return defer.fail(errors.DiskFull())
        return defer.succeed(None)
