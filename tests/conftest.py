import contextlib
import gc

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mailsvc.fronts.mail import MailFactory
from mailsvc.core.passwords import Passwords
from mailsvc.core.service import SharedService
from mailsvc.store.sqlite import SQLiteStorage


@contextlib.contextmanager
def errors_logged():
    """Collect, while the block runs, every logged error or failure."""
    seen = []

    def observe(event):
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def describe(events):
    return "errors were logged:\n" + "\n".join(formatEvent(e) or repr(e) for e in events)


@pytest.fixture(autouse=True)
def logged_errors():
    """
    Fail the test if anything logged an error or a failure (pytest-twisted does
    not). A test that provokes an error on purpose empties the list it yields.
    """
    with errors_logged() as seen:
        yield seen
        gc.collect()  # so that an unhandled failure in a lost Deferred is logged now
    if seen:
        pytest.fail(describe(seen))


def within(d, seconds=10):
    """
    C{d} (a Deferred or a coroutine), failing with TimeoutError if it has not
    fired after C{seconds}: pytest-twisted would wait for ever.
    """
    from twisted.internet import defer, reactor

    return defer.ensureDeferred(d).addTimeout(seconds, reactor)


async def closed(*clients):
    """Close client connections from the client's side; wait until each ended."""
    for c in clients:
        c.transport.loseConnection()
        await within(c.closed)


def fired(d):
    """The result of a Deferred that must have fired already."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def inline_service(clock, path=":memory:"):
    """A started service that answers synchronously: for StringTransport tests."""
    service = SharedService(SQLiteStorage.inline(path), Passwords.inline(), clock)
    service.startService()
    return service


@pytest.fixture
def clock():
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def service(clock):
    service = inline_service(clock)
    yield service
    service.stopService()


@pytest.fixture
def mail_factory(service, clock):
    return MailFactory(service, clock=clock)


@pytest.fixture
def server(mailsvc_process):
    """One C{twistd -n mailsvc}, started with the default test arguments."""
    return mailsvc_process()


# Redis, for the bus across nodes (mailsvc.testing.redis).


@pytest.fixture(scope="session")
def _session_redis(tmp_path_factory):
    import os

    from mailsvc.testing.redis import ENABLE, RedisServer, redis_server_available

    if os.environ.get("MAILSVC_TEST_REDIS"):
        yield os.environ["MAILSVC_TEST_REDIS"]
        return
    if not redis_server_available():
        if os.environ.get("CI"):
            pytest.fail(ENABLE)
        pytest.skip(ENABLE)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(_session_redis):
    """A redis:// URL with a key prefix of this test's own."""
    from mailsvc.testing.redis import unique_url

    return unique_url(_session_redis)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, which it may stop and start again."""
    import os

    from mailsvc.testing.redis import ENABLE, RedisServer

    if shutil_which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(ENABLE)
        pytest.skip(ENABLE)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


def shutil_which(command):
    import shutil

    return shutil.which(command)


def require(command, package):
    """
    The path of C{command}, a real client from Debian's C{package}. Missing, the
    test is skipped with how to install it, except in CI (CI=true), where
    .ci/run installs what .ci/packages lists and a missing tool is a failure.
    """
    import os
    import shutil

    path = shutil.which(command)
    if path is None:
        message = "%s is not installed: apt-get install %s (listed in .ci/packages)" % (
            command,
            package,
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def postgres_server():
    """
    Where the PostgreSQL tests make their databases (mailsvc.testing.postgres):
    MAILSVC_TEST_POSTGRES, or a throwaway cluster. Without either the tests
    are skipped with how to enable them, except in CI (CI=true): a failure.
    """
    import os

    from mailsvc.testing.postgres import Server, Unavailable

    try:
        server = Server()
    except Unavailable as e:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL tests cannot run: %s" % (e,))
        pytest.skip("PostgreSQL tests skipped: %s" % (e,))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new database of this test's own, dropped afterwards."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
