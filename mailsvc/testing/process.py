"""
Black-box tests: run C{twistd -n mailsvc} as a subprocess on free ports, wait
until it listens, talk to it over plain sockets as netcat would, stop it and
collect its log (L{TwistdServer}, L{Client}; the C{mailsvc_process} pytest
fixture starts them).

Every blocking wait here has a deadline: the server's log is read by a thread
and waited on with a Condition, sockets have timeouts, processes are waited on
with timeouts. Nothing sleeps to synchronise.
"""

import errno
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mailsvc.fronts.registry import fronts

# The twistd of the venv running the tests, so the server runs the code under test.
TWISTD = Path(sys.executable).parent / "twistd"

# Generous: a loaded CI machine may take seconds to import Twisted.
START_TIMEOUT = 20
STOP_TIMEOUT = 15
SOCKET_TIMEOUT = 10

LOCAL = "tcp:0:interface=127.0.0.1"

# mailsvc logs "front <name> listening on <host>:<port>" as each front
# listens (mailsvc.application.LISTENING), then ALL_LISTENING.
LISTENING = re.compile(r"\] front (?P<front>[\w-]+) listening on .*:(?P<port>\d+)\s*$")
ALL_LISTENING = re.compile(r"\] all fronts listening\s*$")

# The replies that run to a line holding only ".": HELP, GETMSG and READ, LIST.
MULTILINE = re.compile(r"OK (commands|message \d+|\d+ messages)\Z")


def neutral_env(**extra):
    """The environment for a subprocess that must find only what is installed."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env.update(extra)
    return env


def twistd_command(*, daemon=False, pidfile=None, logfile="-", db, extra=()):
    """The argument list that starts mailsvc on ephemeral local ports."""
    command = [str(TWISTD)]
    if not daemon:
        command.append("-n")
    if pidfile is not None:
        command += ["--pidfile", str(pidfile)]
    command += ["--logfile", str(logfile), "mailsvc"]
    for front in fronts():
        command += ["--" + front.option, LOCAL]
    command += ["--db", str(db)]
    return command + [str(arg) for arg in extra]


class ServerLog:
    """
    The lines a server writes to its stdout, read by a thread so the pipe never
    fills, and kept for assertions and for L{TwistdServer.close} to print.
    """

    def __init__(self, stream, prefix):
        self._stream = stream
        self.lines = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name=prefix, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def wait_for(self, pattern, timeout, start=0):
        """
        The first match of C{pattern} in a line at index C{start} or later,
        waiting up to C{timeout} seconds; None if the output ended or the time
        ran out without one.
        """
        pattern = re.compile(pattern)
        found = []

        def match():
            for line in self.lines[start:]:
                m = pattern.search(line)
                if m:
                    found.append(m)
                    return True
            return self.ended

        with self._changed:
            self._changed.wait_for(match, timeout)
        return found[0] if found else None

    def join(self, timeout):
        self._thread.join(timeout)

    def text(self):
        with self._changed:
            return "\n".join(self.lines)


class TwistdServer:
    """
    One C{twistd -n mailsvc} in C{directory} (its cwd), on database C{db}
    (a file name in C{directory}, or a URL: several nodes on one PostgreSQL).

    C{ports} maps each front's name to its port, read from the log lines
    mailsvc writes for that (L{LISTENING}); C{port} is the mail front's.
    """

    _count = 0

    def __init__(self, directory, db="mailsvc.sqlite", **options):
        self.directory = Path(directory)
        # A path in the directory, or a database URL (postgresql://...) as it is.
        self.db = db if "://" in str(db) else self.directory / db
        self.options = options
        self.process = None
        self.log = None
        self.ports = {}
        TwistdServer._count += 1
        self.name = "[twistd %d]" % (TwistdServer._count,)

    def start(self, timeout=START_TIMEOUT, env=None, preexec_fn=None):
        """
        Start twistd and wait until every front listens. C{preexec_fn}: run in
        the child before twistd (to set its resource limits, say).
        """
        self.process = subprocess.Popen(
            twistd_command(db=self.db, **self.options),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Python's own buffering must not hold back the log.
            env=dict(env or os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=preexec_fn,
        )
        self.log = ServerLog(self.process.stdout, self.name)
        if self.log.wait_for(ALL_LISTENING, timeout) is None:
            raise AssertionError(
                "%s did not log 'all fronts listening' within %ss (exit status %r);"
                " its log:\n%s" % (self.name, timeout, self.process.poll(), self.log.text())
            )
        for line in self.log.lines:
            m = LISTENING.search(line)
            if m:
                self.ports[m.group("front")] = int(m.group("port"))
        return self

    def port_of(self, front):
        """The port front C{front} listens on."""
        return self.ports[front]

    @property
    def port(self):
        return self.ports["mail"]

    @property
    def chat_port(self):
        return self.ports["chat"]

    def connect(self, timeout=SOCKET_TIMEOUT, front="mail"):
        return Client(self.ports[front], timeout)

    def connect_chat(self, timeout=SOCKET_TIMEOUT, rcvbuf=None):
        """A connection to the chat port (see L{Client} for C{rcvbuf})."""
        return Client(self.chat_port, timeout, rcvbuf=rcvbuf)

    @property
    def pid(self):
        return self.process.pid

    def running(self):
        return self.process is not None and self.process.poll() is None

    def rss(self):
        """The server process's resident set size in bytes (Linux's VmRSS)."""
        with open("/proc/%d/status" % (self.pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    value, unit = line.split()[1:3]
                    assert unit == "kB", line
                    return int(value) * 1024
        raise AssertionError("no VmRSS for pid %d" % (self.pid,))

    def signal(self, signum):
        if self.running():
            self.process.send_signal(signum)

    def stop(self, timeout=STOP_TIMEOUT):
        """
        SIGTERM, then wait for the exit; return the exit status. (After a clean
        shutdown on a signal, twistd kills itself with that signal again, so
        the status is -SIGTERM; its log then ends with "Server Shut Down.")
        """
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                "%s did not exit within %ss of SIGTERM" % (self.name, timeout)
            )
        finally:
            self.log.join(timeout)

    def kill(self, timeout=STOP_TIMEOUT):
        """SIGKILL, then reap; return the exit status."""
        self.signal(signal.SIGKILL)
        status = self.process.wait(timeout)
        self.log.join(timeout)
        return status

    def close(self):
        """
        Make sure the process is gone, then print its whole log: in teardown,
        where pytest captures it and shows it with a failing test (pytest
        prints a failed test's teardown output too).
        """
        if self.process is None:
            return
        if self.running():
            self.kill()
        self.log.join(STOP_TIMEOUT)
        self.process.stdout.close()
        print("%s %s" % (self.name, " ".join(self.process.args)))
        for line in self.log.text().splitlines():
            print(self.name, line)
        print("%s exit status %r" % (self.name, self.process.returncode))

    def problems(self):
        """Log lines that tell of an error in the server."""
        return [
            line
            for line in self.log.lines
            if re.search(r"Traceback|Unhandled|\bCRITICAL\b|#critical\]|#error\]", line)
        ]


class Client:
    """
    A line-oriented TCP client that sends exactly the bytes it is given.

    C{rcvbuf}, if given, is the socket's SO_RCVBUF, set before connecting so
    that it bounds the TCP window (for a client that stops reading).
    """

    def __init__(self, port, timeout=SOCKET_TIMEOUT, rcvbuf=None):
        if rcvbuf is None:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
        self._buffer = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def __call__(self, line, end="\n"):
        """Send one request line (netcat's LF unless told); return its reply."""
        self.send(line + end)
        return self.reply()

    def _fill(self):
        """Read what has arrived into the buffer; False at the end of input."""
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self._buffer += data
        return True

    def line(self):
        """The next line the server sent, without its CRLF."""
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise EOFError("connection closed; unterminated data: %r" % self._buffer)
        raw, self._buffer = self._buffer.split(b"\r\n", 1)
        return raw.decode("utf-8")

    def reply(self):
        """One whole reply: a line, or a multi-line reply up to its '.'."""
        lines = [self.line()]
        if MULTILINE.match(lines[0]):
            while lines[-1] != ".":
                lines.append(self.line())
        return lines

    def replies_until_eof(self):
        """Every reply until the server closes the connection."""
        replies = []
        while True:
            try:
                replies.append(self.reply())
            except EOFError:
                if self._buffer:
                    raise
                return replies

    def read_until_closed(self):
        """Every byte the server still sends, until it closes or resets."""
        received, self._buffer = self._buffer, b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
        self.eof = True
        return received

    def expect_eof(self):
        """Assert the server closes the connection and sends nothing more."""
        extra = self._buffer
        while self._fill():
            extra = self._buffer
        assert extra == b"", "unexpected data before EOF: %r" % (extra,)


def unstuffed(content):
    """The text lines of a multi-line reply's content, dot-stuffing removed."""
    return [line[1:] if line.startswith(".") else line for line in content]


def process_alive(pid):
    """Whether C{pid} runs (a zombie counts as exited)."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def wait_for_exit(pid, timeout):
    """
    Wait up to C{timeout} seconds for C{pid} (not necessarily our child) to
    exit; return whether it did. Blocks on a pidfd where the OS has them,
    otherwise polls against the deadline.
    """
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
            return bool(readable) or not process_alive(pid)
        finally:
            os.close(fd)
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        # Polling with a deadline: a process that is not our child can't be
        # waited for any other way here.
        select.select([], [], [], 0.05)
    return True


def is_twistd(pid):
    """Whether C{pid} is a twistd (so we never signal a reused pid)."""
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return b"twistd" in f.read()
    except OSError:
        return False
