"""
PostgreSQL for tests: a server, and a new database on it for each test.

The server is C{MAILSVC_TEST_POSTGRES} (a libpq URL whose role may create
databases) if set; else a throwaway cluster started from the installed
binaries (C{/usr/lib/postgresql/*/bin/initdb} and C{pg_ctl}) in a temporary
directory, on a free port, its unix socket in that directory, run as the
C{postgres} user when the tests run as root (initdb refuses root). Each
test's database has a random name and is dropped afterwards, so parallel
runs on one server never meet.
"""

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from urllib.parse import quote, urlencode

ENVIRONMENT = "MAILSVC_TEST_POSTGRES"
HOW = (
    "set %s=postgresql://user@host/dbname (a role that may create databases),"
    " or install PostgreSQL's server (apt-get install postgresql)" % (ENVIRONMENT,)
)


class Unavailable(Exception):
    """No PostgreSQL can be had; the message says why and how to get one."""


def with_database(url, name):
    """C{url} (any libpq URL or conninfo) naming database C{name} instead."""
    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if k != "dbname"}
    query = urlencode(params, quote_via=quote)
    return "postgresql:///%s%s" % (quote(name), "?" + query if query else "")


def _binaries():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return None
    folder = os.path.dirname(found[-1])
    return os.path.join(folder, "initdb"), os.path.join(folder, "pg_ctl")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, for one test session."""

    def __init__(self):
        binaries = _binaries()
        if binaries is None:
            raise Unavailable("no PostgreSQL server is installed: " + HOW)
        self.initdb, self.pg_ctl = binaries
        self.directory = tempfile.mkdtemp(prefix="mailsvc-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = _free_port()
        self._as = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and there is no postgres user for initdb")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command, timeout=120):
        done = subprocess.run(
            self._as + list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        if done.returncode:
            raise Unavailable(
                "%s failed: %s" % (os.path.basename(command[0]), done.stdout.decode(errors="replace"))
            )

    def start(self):
        self._run(self.initdb, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            "-p %d -k %s -c listen_addresses='' -c fsync=off -c max_connections=200"
            % (self.port, self.directory)
        )
        self._run(
            self.pg_ctl, "-D", self.data, "-o", options, "-w", "-t", "60",
            "-l", os.path.join(self.directory, "log"), "start",
        )
        return "postgresql:///postgres?host=%s&port=%d&user=postgres" % (
            quote(self.directory),
            self.port,
        )

    def stop(self):
        try:
            self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class Server:
    """Where the tests' databases are made: the URL of the environment, or a
    throwaway cluster (L{stop} stops it)."""

    def __init__(self):
        self._cluster = None
        self.url = os.environ.get(ENVIRONMENT)
        if not self.url:
            self._cluster = ThrowawayCluster()
            try:
                self.url = self._cluster.start()
            except BaseException:
                self._cluster.stop()
                raise
        self._check()

    def _check(self):
        import psycopg

        try:
            psycopg.connect(self.url, autocommit=True, connect_timeout=10).close()
        except Exception as e:  # psycopg.Error; on PyPy 7.3.11, a TypeError of its ctypes
            raise Unavailable("cannot connect to %s: %s (%s)" % (self.url, e, HOW))

    def create_database(self):
        """A new, empty database; its URL."""
        import psycopg

        name = "mailsvc_test_" + secrets.token_hex(6)
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "%s"' % (name,))
        return with_database(self.url, name)

    def drop_database(self, url):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % (name,))

    def stop(self):
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
