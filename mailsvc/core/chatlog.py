"""
The chat log: one line for every join, public message and leave.

Lines are kept in memory and written to the file twice a second and when the
server stops, so a burst of chat costs the reactor memory copies, not system
calls. The file rotates by size (L{twisted.python.logfile.LogFile}): past
C{rotate_length} bytes it becomes C{<path>.1}, the older ones move up, and
only C{max_rotated} of them are kept.

The log never breaks the chat: a file that cannot be written (a full disk, a
file system gone read-only, C{--chat-log /dev/full}) is logged once, until it
works again, and counted in L{ChatLog.errors}; what could not be written waits,
up to C{max_pending} bytes (past that, the oldest whole lines are dropped and
counted in L{ChatLog.lost}), and the next flush tries again. Nothing here
raises into the room, and stopping always completes.

User text is escaped (L{mailsvc.logtext.escape}): a line of the log is one
entry, whatever was said.
"""

import datetime
import os
import stat

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from mailsvc.logtext import escape

DEFAULT_ROTATE_LENGTH = 10 * 1024 * 1024
DEFAULT_MAX_ROTATED = 10
DEFAULT_MAX_PENDING = 1024 * 1024


def timestamp(seconds):
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


class _WholeWrites(LogFile):
    """A LogFile whose write writes every byte (the file is unbuffered, so a
    nearly full disk can take part of a write) and counts what it wrote, so
    that after an error the caller knows exactly what is left."""

    def write(self, data):
        if self.shouldRotate():
            self.flush()
            self.rotate()
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if written is None:  # a non-blocking file with no room: not ours
                raise BlockingIOError("chat log file would block")
            self.size += written
            view = view[written:]
            self.written += written

    written = 0


def open_log_file(path, rotate_length=DEFAULT_ROTATE_LENGTH, max_rotated=DEFAULT_MAX_ROTATED):
    """
    The file the chat log writes to: a size-rotated LogFile for a regular
    file, never rotated for anything else (C{/dev/null}, a pipe).
    """
    path = os.path.abspath(path)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = True
    return _WholeWrites(
        os.path.basename(path),
        os.path.dirname(path),
        rotateLength=rotate_length if regular else None,
        maxRotatedFiles=max_rotated,
    )


class ChatLog(service.Service):
    """
    @param opener: makes the file to write to: a callable of no arguments
        returning an object with C{write(bytes)}, C{flush()} and C{close()}
        (L{open_log_file} by default); called at start and again after an
        error.
    @ivar errors: how many times writing, flushing or opening the file failed.
    @ivar lost: how many lines were dropped because the file failed for too
        long (more than C{max_pending} bytes waited).
    """

    log = Logger()

    def __init__(
        self,
        path,
        clock,
        flush_interval=0.5,
        rotate_length=DEFAULT_ROTATE_LENGTH,
        max_rotated=DEFAULT_MAX_ROTATED,
        opener=None,
        max_pending=DEFAULT_MAX_PENDING,
    ):
        self.path = path
        self.clock = clock
        if opener is None:

            def opener():
                return open_log_file(path, rotate_length, max_rotated)

        self._opener = opener
        self._file = None
        self._pending = bytearray()
        self._max_pending = max_pending
        self._failing = False
        self._midline = False
        self.errors = 0
        self.lost = 0
        self._lost_reported = 0
        self._flusher = task.LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flush_interval = flush_interval

    def startService(self):
        super().startService()
        self._open()
        self._flusher.start(self._flush_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        self._close()

    # The file

    def _open(self):
        if self._file is None:
            try:
                self._file = self._opener()
            except Exception as e:
                self._failed("open", e)
        return self._file is not None

    def _close(self):
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except Exception:
                pass  # what it could not write is still pending

    def flush(self):
        """Write what is pending. Never raises: a failure is counted, logged
        once, and what is left waits for the next flush."""
        if not self._pending or not self._open():
            return
        data = bytes(self._pending)
        before = getattr(self._file, "written", None)
        try:
            self._file.write(data)
            self._file.flush()
        except Exception as e:
            after = getattr(self._file, "written", None)
            if before is not None and after is not None and after > before:
                del self._pending[: after - before]
                self._midline = True  # the rest of a line is at the front
            # Opened afresh next time: an error may have left it closed
            # (a rotation that failed half-way).
            self._close()
            self._failed("write", e)
            return
        del self._pending[: len(data)]
        self._midline = False
        if self._failing:
            self._failing = False
            self.log.info(
                "chat log {path} is written again ({lost} lines lost meanwhile)",
                path=self.path,
                lost=self.lost - self._lost_reported,
            )
            self._lost_reported = self.lost

    def _failed(self, what, error):
        self.errors += 1
        if not self._failing:
            self._failing = True
            self.log.error(
                "cannot {what} chat log {path}: {error}; the chat goes on, and chat"
                " log lines wait (up to {limit} bytes) until it can be written",
                what=what,
                path=self.path,
                error=error,
                limit=self._max_pending,
            )

    # The lines

    def _write(self, text):
        if not self.running:
            return
        line = ("%s %s\n" % (timestamp(self.clock.seconds()), text)).encode("utf-8")
        self._pending += line
        if len(self._pending) > self._max_pending:
            self._drop_oldest()

    def _drop_oldest(self):
        excess = len(self._pending) - self._max_pending
        # Whole lines: up to the first newline at or after the excess.
        end = self._pending.find(b"\n", excess - 1)
        end = len(self._pending) if end < 0 else end + 1
        self.lost += self._pending.count(b"\n", 0, end)
        # A line already written in part is ended, so that the next one
        # starts a line of its own.
        self._pending[:end] = b"\n" if self._midline else b""
        self._midline = False

    def joined(self, nick, peer):
        self._write("%s joined from %s" % (escape(nick), escape(str(peer))))

    def said(self, nick, text):
        self._write("%s: %s" % (escape(nick), escape(text)))

    def left(self, nick):
        self._write("%s left" % (escape(nick),))

    def renamed(self, nick, new):
        self._write("%s is now known as %s" % (escape(nick), escape(new)))
