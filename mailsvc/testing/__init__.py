"""
A real mailsvc inside other projects' tests.

    server = yield start_server()            # every front on 127.0.0.1, port 0
    yield server.add_user("alice", "secret")
    client = yield server.connect_mail(user="alice", password="secret")
    ...
    yield server.stop()                      # every connection closed

L{start_server} runs the same service tree as C{twistd mailsvc}, in the test's
own reactor, on a temporary SQLite database, with cheap password hashing. The
pytest plugin (L{mailsvc.testing.pytest_plugin}) and the trial mixin
(L{mailsvc.testing.trial.MailsvcTestCase}) are built on it; for black-box tests
of the real process there is L{mailsvc.testing.process}.

Why a real server and not a fake: what passes in a test is then what twistd
serves (the same L{mailsvc.application.assemble}, options parsed by the same
L{mailsvc.tap.Options}). Everything goes by front name (L{MailsvcServer.address},
L{MailsvcServer.port}, L{MailsvcServer.factory}), so a front added later is
served and reachable with no change here. Seeding and inspection go to the
service and its store directly, not over the wire, so a test can arrange
state without a client and check it without trusting one. L{MailsvcServer.stop}
closes every client and connection and stops the tree, so trial finds a
clean reactor.
"""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.python.failure import Failure

from mailsvc import client as mailsvc_client
from mailsvc.application import assemble
from mailsvc.core.passwords import cheap_hasher
from mailsvc.errors import NameTaken
from mailsvc.tap import Options

LOCAL = "tcp:0:interface=127.0.0.1"
_NOT_YET = object()

# What a test server changes from twistd's defaults: tests run fast, and
# often from one address.
TEST_DEFAULTS = {
    "shutdown-grace": 0,
    "max-per-peer": 10000,
    "flood-rate": 1e6,
    "flood-burst": 100000,
    "max-sends": 1000000,
    "max-registrations": 1000000,
}


class MailsvcServer:
    """
    A running mailsvc: its fronts' addresses, its state, and L{stop}.

    @ivar ports: front name -> its listening port number, for every front served.
    @ivar db_path: the SQLite database file.
    @ivar service: the L{mailsvc.core.service.SharedService}.
    """

    def __init__(self, reactor, assembly, ports, db_path, temporary):
        self.reactor = reactor
        self._assembly = assembly
        self.service = assembly.shared
        self.ports = {name: port.getHost().port for name, port in ports.items()}
        self.db_path = db_path
        self._temporary = temporary
        self._clients = []
        self._stop_waiting = None
        self._stop_outcome = _NOT_YET

    def port(self, front):
        """The port number front C{front} ("mail", "chat", ...) listens on."""
        return self.ports[front]

    def address(self, front):
        """Front C{front}'s client endpoint description (C{tcp:127.0.0.1:N})."""
        return "tcp:127.0.0.1:%d" % (self.port(front),)

    def factory(self, front):
        """Front C{front}'s protocol factory (its C{connections}, say)."""
        return self._assembly.factories[front]

    # The two home-made fronts, by the names earlier releases gave them.
    mail = property(lambda self: self.address("mail"))
    chat = property(lambda self: self.address("chat"))
    mail_port = property(lambda self: self.port("mail"))
    chat_port = property(lambda self: self.port("chat"))
    mail_factory = property(lambda self: self.factory("mail"))
    chat_factory = property(lambda self: self.factory("chat"))

    # Clients

    @defer.inlineCallbacks
    def connect_mail(self, user=None, password=None, register=False, **options):
        """
        A connected L{mailsvc.client.MailClient}: logged in as C{user} (or
        registered first, with C{register=True}) if one is given. It is closed
        by L{stop}.
        """
        client = yield mailsvc_client.connect_mail(self.reactor, self.mail, **options)
        self._clients.append(client)
        if user is not None:
            act = client.register if register else client.login
            yield act(user, password)
        return client

    @defer.inlineCallbacks
    def connect_chat(self, nick, password=None, **options):
        """A L{mailsvc.client.ChatClient} that has joined as C{nick}."""
        client = yield mailsvc_client.connect_chat(
            self.reactor, self.chat, nick, password=password, **options
        )
        self._clients.append(client)
        return client

    # Seeding and inspecting state, without a client

    def add_user(self, name, password):
        """Register an account; fire with a session cookie for it."""
        return self.service.register(name, password)

    def ensure_user(self, name, password):
        """Register an account unless it exists already."""
        return self.add_user(name, password).addErrback(
            lambda failure: failure.trap(NameTaken) and None
        )

    def deliver(self, to, sender, subject, body):
        """Put a message in C{to}'s mailbox, as if C{sender} sent it; fire with its id."""
        return self.service.deliver(to, sender, subject, body)

    @defer.inlineCallbacks
    def mailbox(self, name):
        """Fire with C{name}'s messages, oldest first, with their bodies."""
        storage = self.service.storage
        account = yield storage.account(name)  # names are not case-sensitive
        if account is None:
            return []
        name = account[0]
        messages = []
        for header in (yield storage.headers(name)):
            messages.append((yield storage.message(name, header.id)))
        return messages

    def participants(self):
        """The nicknames in the chat room now."""
        return sorted(p.nick for p in self.service.room.participants())

    # Stopping

    def stop(self):
        """
        Close every client this server handed out and every connection to it,
        stop listening, stop the service; fire when all of that is done, so
        that no dirty reactor is left behind. Stopping twice is stopping once.
        """
        d = defer.Deferred()
        if self._stop_waiting is None:
            self._stop_waiting = [d]
            self._stop().addBoth(self._stop_done)
        elif self._stop_outcome is _NOT_YET:
            self._stop_waiting.append(d)
        else:
            self._fire(d, self._stop_outcome)
        return d

    def _stop_done(self, outcome):
        self._stop_outcome = outcome
        for d in self._stop_waiting:
            self._fire(d, outcome)

    @staticmethod
    def _fire(d, result):
        # Every caller of stop() gets the outcome, a failure included.
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    @defer.inlineCallbacks
    def _stop(self):
        for client in self._clients:
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
        yield defer.gatherResults([c.closed for c in self._clients])
        yield self._assembly.top.stopService()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)


def _arguments(options):
    """C{history=0, session_ttl=60} -> C{["--history", "0", "--session-ttl", "60"]}."""
    arguments = []
    for name, value in options.items():
        arguments += ["--" + name.replace("_", "-"), str(value)]
    return arguments


@defer.inlineCallbacks
def start_server(reactor=None, **options):
    """
    Start mailsvc on 127.0.0.1, every front on port 0; fire with a
    L{MailsvcServer}.

    @param options: any option of C{twistd mailsvc}, with C{_} for C{-}
        (C{history=0}, C{session_ttl=60}, C{db="/path/to.sqlite"}). By default
        the database and chat log are in a new temporary directory, removed
        by L{MailsvcServer.stop}.
    """
    if reactor is None:
        from twisted.internet import reactor
    if options.get("db") == ":memory:":
        raise ValueError("the database is a file, used by another thread: give a path")
    temporary = None
    if "db" not in options or "chat_log" not in options:
        temporary = tempfile.mkdtemp(prefix="mailsvc-test-")
        options.setdefault("db", os.path.join(temporary, "mailsvc.sqlite"))
        options.setdefault("chat_log", os.path.join(temporary, "chat.log"))
    config = Options()
    settings = dict(TEST_DEFAULTS, **{front.option: LOCAL for front in config.fronts})
    settings.update({name.replace("_", "-"): value for name, value in options.items()})
    config.parseOptions(_arguments(settings))
    assembly = assemble(config, reactor, hasher=cheap_hasher())
    top = assembly.top
    try:
        top.privilegedStartService()
        top.startService()
        ports = yield assembly.listening
    except Exception:
        assembly.listening.addErrback(lambda failure: None)  # raised here instead
        if top.running:
            yield top.stopService()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return MailsvcServer(reactor, assembly, ports, config["db"], temporary)
