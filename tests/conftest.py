import gc

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mailsvc.mailprotocol import MailFactory
from mailsvc.passwords import Passwords
from mailsvc.service import SharedService
from mailsvc.storage import SQLiteStorage


@pytest.fixture(autouse=True)
def logged_errors():
    """
    Fail the test if anything logged an error or a failure (pytest-twisted does
    not). A test that provokes an error on purpose empties the list it yields.
    """
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
        gc.collect()  # so that an unhandled failure in a lost Deferred is logged now
    finally:
        globalLogPublisher.removeObserver(observe)
    if seen:
        pytest.fail(
            "errors were logged:\n" + "\n".join(formatEvent(e) or repr(e) for e in seen)
        )


def within(d, seconds=10):
    """
    C{d} (a Deferred or a coroutine), failing with TimeoutError if it has not
    fired after C{seconds}: pytest-twisted would wait for ever.
    """
    from twisted.internet import defer, reactor

    return defer.ensureDeferred(d).addTimeout(seconds, reactor)


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


class Running:
    """A shared service with both ports listening on 127.0.0.1, port 0."""

    def __init__(self, service, mail_factory, chat_factory, mail_port, chat_port):
        self.service = service
        self.mail_factory = mail_factory
        self.chat_factory = chat_factory
        self.mail_port = mail_port
        self.chat_port = chat_port

    @property
    def mail(self):
        return "tcp:127.0.0.1:%d" % (self.mail_port.getHost().port,)

    @property
    def chat(self):
        return "tcp:127.0.0.1:%d" % (self.chat_port.getHost().port,)


@pytest.fixture
def running(tmp_path):
    import pytest_twisted
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from mailsvc.chatprotocol import ChatFactory
    from mailsvc.passwords import cheap_hasher

    service = SharedService(
        SQLiteStorage.open(str(tmp_path / "mail.sqlite"), reactor),
        Passwords.threaded(reactor, hasher=cheap_hasher()),
        reactor,
    )
    service.startService()
    mail, chat = MailFactory(service), ChatFactory(service)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    mail_port = pytest_twisted.blockon(within(endpoint.listen(mail)))
    chat_port = pytest_twisted.blockon(within(endpoint.listen(chat)))
    yield Running(service, mail, chat, mail_port, chat_port)
    for port in (mail_port, chat_port):
        pytest_twisted.blockon(within(defer.maybeDeferred(port.stopListening)))
    pytest_twisted.blockon(
        within(defer.gatherResults([mail.closeAll(reactor), chat.closeAll(reactor)]))
    )
    pytest_twisted.blockon(within(service.stopService()))


@pytest.fixture
def launch(tmp_path):
    """
    Start C{twistd -n mailsvc} servers: C{launch(*extra_arguments)} runs one
    in tmp_path (C{fresh=True}: in a directory of its own) and returns its
    L{server.Server}. Each is killed, reaped and its log printed at teardown,
    and a server that logged a traceback or an error fails the test.
    """
    from server import Server

    servers = []

    def launch(*extra, fresh=False, **options):
        directory = tmp_path
        if fresh:
            directory = tmp_path / ("server%d" % (len(servers) + 1,))
            directory.mkdir()
        server = Server(directory, extra=extra, **options)
        servers.append(server)
        return server.start()

    yield launch
    for server in servers:
        server.close()
    problems = [line for server in servers for line in server.problems()]
    if problems:
        pytest.fail("the server logged errors:\n" + "\n".join(problems))


@pytest.fixture
def server(launch):
    return launch()
