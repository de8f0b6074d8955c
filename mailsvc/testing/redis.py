"""
A Redis for tests: C{MAILSVC_TEST_REDIS} (a redis:// URL) if set, else a
C{redis-server} of the tests' own on a free port in a temporary directory
(L{RedisServer}), which a test may stop and start again. Never the
machine's shared Redis flushed or restarted: each test uses a key prefix of
its own (L{unique_url}).

Without either, L{redis_url} skips saying how to enable it; under CI=true it
fails instead.
"""

import os
import shutil
import socket
import subprocess
import uuid

from mailsvc.testing.process import START_TIMEOUT, STOP_TIMEOUT, ServerLog

ENABLE = (
    "no Redis: apt-get install redis-server (listed in .ci/packages), or set"
    " MAILSVC_TEST_REDIS=redis://host:port/db"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One C{redis-server} in C{directory}, on C{port} (a free one by
    default), its data in an append-only file, so that a restart keeps it as
    a production Redis would."""

    def __init__(self, directory, port=None):
        self.directory = str(directory)
        self.port = port or free_port()
        self.process = None
        self.log = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % (self.port,)

    def start(self):
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", self.directory,
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--protected-mode", "no",
            ],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.log = ServerLog(self.process.stdout, "[redis %d]" % (self.port,))
        if self.log.wait_for(r"Ready to accept connections", START_TIMEOUT) is None:
            self.stop()
            raise AssertionError("redis-server did not start:\n" + self.log.text())
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(STOP_TIMEOUT)
            self.log.join(STOP_TIMEOUT)
            self.process.stdout.close()


def unique_url(url):
    """C{url} with a key prefix no other test uses."""
    separator = "&" if "?" in url else "?"
    return "%s%sprefix=test-%s:" % (url, separator, uuid.uuid4().hex[:12])


def redis_server_available():
    return bool(os.environ.get("MAILSVC_TEST_REDIS")) or shutil.which("redis-server") is not None
