"""
C{twistd mailsvc}: the options and the service tree.

Children start in the order they are added and stop in the reverse order, one
after another: the listeners stop accepting first, then the connections get
their shutdown notice and grace period, then the shared service drains its
storage, and the chat log is closed last.
"""

import os
from dataclasses import dataclass

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python import usage

from mailsvc.chatlog import ChatLog
from mailsvc.chatprotocol import ChatFactory
from mailsvc.mailprotocol import MailFactory
from mailsvc.passwords import Passwords
from mailsvc.room import ChatRoom
from mailsvc.service import SharedService
from mailsvc.storage import Quotas, SQLiteStorage


def endpoint(description):
    """A bare port number means TCP on every interface, as twistd's own plugins do."""
    return "tcp:" + description if description.isdigit() else description


POSITIVE = (
    "max-sendq",
    "max-body",
    "max-line",
    "quota-messages",
    "quota-bytes",
    "max-staged",
    "max-connections",
    "max-per-peer",
    "idle-timeout",
    "nick-timeout",
    "chat-idle-timeout",
    "session-ttl",
    "flood-rate",
    "flood-burst",
)


class Options(usage.Options):
    optParameters = [
        [
            "port",
            "p",
            "tcp:8025",
            "Mail command port: a port number or an endpoint description"
            " (tcp:8025:interface=127.0.0.1, ssl:..., unix:...).",
            endpoint,
        ],
        [
            "chat-port",
            "c",
            "tcp:8026",
            "Group chat port: a port number or an endpoint description.",
            endpoint,
        ],
        ["db", "d", "mailsvc.sqlite", "SQLite database file (created if missing)."],
        ["chat-log", None, "chat.log", "File that records chat joins, messages, leaves."],
        ["history", None, 20, "Recent chat messages shown to a newcomer (0: none).", int],
        [
            "shutdown-grace",
            None,
            5,
            "Seconds the chat keeps working after the shutdown notice.",
            int,
        ],
        [
            "max-sendq",
            None,
            1024 * 1024,
            "Bytes of output a chat client may leave unread before it is dropped.",
            int,
        ],
        ["max-body", None, 1024 * 1024, "Largest SEND body accepted, in bytes.", int],
        ["max-line", None, 8192, "Longest request line, in bytes (both ports).", int],
        ["quota-messages", None, 10000, "Messages one mailbox may hold.", int],
        ["quota-bytes", None, 100 * 1024 * 1024, "Bytes one mailbox may hold.", int],
        ["max-staged", None, 100, "Staged (MESSAGE) texts one session may hold.", int],
        ["max-connections", None, 10000, "Connections to each port at once.", int],
        ["max-per-peer", None, 100, "Connections to each port from one address.", int],
        ["idle-timeout", None, 300, "Seconds a mail connection may stay silent.", int],
        ["nick-timeout", None, 30, "Seconds a chat client has to get a nickname.", int],
        ["chat-idle-timeout", None, 3600, "Seconds a chat participant may stay silent.", int],
        ["session-ttl", None, 86400, "Seconds a session cookie may go unused.", int],
        ["flood-rate", None, 5, "Chat lines a second one participant may send.", float],
        ["flood-burst", None, 20, "Chat lines one participant may send at once.", int],
    ]

    longdesc = (
        "Serves the mail command protocol on --port and the group chat on"
        " --chat-port, over one shared state in a SQLite database (--db)."
        " See docs/operations.md."
    )

    def postOptions(self):
        # Absolute now: twistd may change directory (--rundir) before starting.
        self["db"] = os.path.abspath(self["db"])
        self["chat-log"] = os.path.abspath(self["chat-log"])
        for name in ("history", "shutdown-grace"):
            if self[name] < 0:
                raise usage.UsageError("--%s must not be negative" % (name,))
        for name in POSITIVE:
            if self[name] <= 0:
                raise usage.UsageError("--%s must be more than 0" % (name,))


class OneByOne(service.MultiService):
    """A MultiService that stops its children one at a time, last added first,
    waiting for each (the stock one stops them all at once)."""

    log = Logger()

    def stopService(self):
        service.Service.stopService(self)
        d = defer.succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, child=child: child.stopService())
            d.addErrback(lambda f, child=child: self.log.failure("stopping {c}", f, c=child))
        return d


class GracefulShutdown(service.Service):
    """On stop: tell the chat, keep serving for C{grace} seconds, then close
    every connection (a mail request in progress is finished first)."""

    def __init__(self, chat, mail, grace, clock):
        self.chat = chat
        self.mail = mail
        self.grace = grace
        self.clock = clock

    def stopService(self):
        super().stopService()
        self.chat.announce_shutdown(self.grace)
        d = task.deferLater(self.clock, self.grace, lambda: None)
        return d.addCallback(
            lambda _: defer.gatherResults(
                [self.chat.closeAll(self.clock), self.mail.closeAll(self.clock)]
            )
        )


class _RecordingEndpoint:
    """A server endpoint that remembers the port it listens on."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.port = defer.Deferred()

    def listen(self, factory):
        def listening(port):
            self.port.callback(port)
            return port

        def failed(failure):
            self.port.errback(failure)
            return failure

        return self.endpoint.listen(factory).addCallbacks(listening, failed)


def _listener(description, factory, reactor):
    # strports: a port that cannot be had fails twistd at once, loudly.
    listener = strports.service(description, factory, reactor=reactor)
    listener.endpoint = _RecordingEndpoint(listener.endpoint)
    return listener


@dataclass
class Assembly:
    """The parts of one mailsvc process, for twistd and for mailsvc.testing."""

    top: service.MultiService
    shared: SharedService
    mail: MailFactory
    chat: ChatFactory
    # Fires with (mail port, chat port) once both listen.
    listening: defer.Deferred


def assemble(config, reactor, hasher=None):
    """Build the service tree from parsed L{Options}; nothing is started."""
    top = OneByOne()
    open(config["chat-log"], "a").close()  # an unwritable log fails now, loudly
    chat_log = ChatLog(config["chat-log"], reactor)
    chat_log.setServiceParent(top)
    quotas = Quotas(
        messages=config["quota-messages"],
        bytes=config["quota-bytes"],
        staged=config["max-staged"],
    )
    shared = SharedService(
        SQLiteStorage.open(config["db"], reactor, quotas),
        Passwords.threaded(reactor, hasher=hasher),
        reactor,
        ChatRoom(chat_log, history=config["history"]),
        session_ttl=config["session-ttl"],
    )
    shared.setServiceParent(top)
    limits = dict(
        clock=reactor,
        line_limit=config["max-line"],
        max_connections=config["max-connections"],
        max_per_peer=config["max-per-peer"],
    )
    mail = MailFactory(
        shared, max_body=config["max-body"], idle_timeout=config["idle-timeout"], **limits
    )
    chat = ChatFactory(
        shared,
        max_sendq=config["max-sendq"],
        nick_timeout=config["nick-timeout"],
        idle_timeout=config["chat-idle-timeout"],
        flood_rate=config["flood-rate"],
        flood_burst=config["flood-burst"],
        **limits,
    )
    GracefulShutdown(chat, mail, config["shutdown-grace"], reactor).setServiceParent(top)
    listeners = [
        _listener(config["port"], mail, reactor),
        _listener(config["chat-port"], chat, reactor),
    ]
    for listener in listeners:
        listener.setServiceParent(top)
    listening = defer.gatherResults(
        [listener.endpoint.port for listener in listeners], consumeErrors=True
    )
    return Assembly(top, shared, mail, chat, listening)


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    return assemble(config, reactor).top
