"""
The chat log: one line for every join, public message and leave.

Lines are written to a buffer and flushed to the file twice a second and when
the server stops, so a burst of chat costs the reactor memory copies, not
system calls.
"""

import datetime

from twisted.application import service
from twisted.internet import task


def timestamp(seconds):
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


class ChatLog(service.Service):
    def __init__(self, path, clock, flush_interval=0.5):
        self.path = path
        self.clock = clock
        self._file = None
        self._flusher = task.LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flush_interval = flush_interval

    def startService(self):
        super().startService()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)
        self._flusher.start(self._flush_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        if self._file is not None:
            self._file.close()
            self._file = None

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def _write(self, text):
        if self._file is not None:
            self._file.write("%s %s\n" % (timestamp(self.clock.seconds()), text))

    def joined(self, nick, peer):
        self._write("%s joined from %s" % (nick, peer))

    def said(self, nick, text):
        self._write("%s: %s" % (nick, text))

    def left(self, nick):
        self._write("%s left" % (nick,))

    def renamed(self, nick, new):
        self._write("%s is now known as %s" % (nick, new))
