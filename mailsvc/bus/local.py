"""
The in-process bus and presence: one node costs what it cost before the seam
(a subscriber is called synchronously, a claim is a dict lookup).
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.names import fold
from mailsvc.interfaces import IBus, IPresence


@implementer(IBus)
class LocalBus:
    log = Logger()

    def __init__(self):
        self._subscribers = []

    def subscribe(self, callback):
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, message):
        for callback in self._subscribers:
            try:
                callback(message)
            except Exception:
                self.log.failure("a subscriber failed on {message!r}", message=message)


@implementer(IPresence)
class LocalPresence:
    def __init__(self):
        self._held = {}  # nick folded to lower case -> nick

    def claim(self, nick):
        key = fold(nick)
        if key in self._held:
            return defer.fail(errors.NickTaken())
        self._held[key] = nick
        return defer.succeed(None)

    def release(self, nick):
        self._held.pop(fold(nick), None)

    def respell(self, nick):
        key = fold(nick)
        if key in self._held:
            self._held[key] = nick

    def holds(self, nick):
        return defer.succeed(fold(nick) in self._held)

    def who(self):
        return defer.succeed(sorted(self._held.values()))

    def where(self, nick):
        return defer.succeed(None)  # one node: no name to tell
