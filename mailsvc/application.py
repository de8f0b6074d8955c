"""
One mailsvc process: the service tree, in the order it starts and stops.

Children start in the order they are added and stop in the reverse order, one
after another: the listeners stop accepting first, then every front's
connections get the shutdown notice and the grace period, then the shared
service, the chat log, and last the store, which finishes every request it
was given.

Why one by one: the stock MultiService stops every child at once, which
would close the database while the grace period still serves connections.
The database and the chat log are opened while the tree is built, before
anything listens (or twistd daemonizes), so a bad path fails on the
terminal. A port that cannot be had fails the start at once with
L{ListenFailed}, a message naming the front and its option. Each front's
address is logged as L{LISTENING}, then L{ALL_LISTENING}: ports chosen by
the system (C{tcp:0}) are known from the log, and the subprocess harness and
the bench read them there. twistd and L{mailsvc.testing} both build the
tree with L{assemble}, so tests run what twistd serves.
"""

import os
from dataclasses import dataclass

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mailsvc.bus import LOCAL, default_node, open_bus
from mailsvc.core.chatlog import ChatLog, open_log_file
from mailsvc.core.disk import DiskGuard
from mailsvc.core.events import Shutdown
from mailsvc.core.passwords import Passwords
from mailsvc.core.room import ChatRoom
from mailsvc.core.service import SharedService
from mailsvc.core.throttle import TokenBuckets
from mailsvc.fronts.registry import OFF
from mailsvc.listeners import server_endpoint
from mailsvc.store import Quotas, open_store, sqlite_path

log = Logger()

# The log line that tells each front's address; mailsvc.testing.process reads it.
LISTENING = "front {front} listening on {host}:{port}"
ALL_LISTENING = "all fronts listening"


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
    """On stop: tell every front's connections, keep serving for C{grace}
    seconds, then close every connection (a request in progress is finished
    first). C{factories}: the fronts' factories; each may have
    C{announce_shutdown(event)} and C{closeAll(clock)}."""

    def __init__(self, factories, grace, clock):
        self.factories = factories
        self.grace = grace
        self.clock = clock

    def stopService(self):
        super().stopService()
        notice = Shutdown(self.grace)
        for factory in self.factories:
            if hasattr(factory, "announce_shutdown"):
                factory.announce_shutdown(notice)
        d = task.deferLater(self.clock, self.grace, lambda: None)
        return d.addCallback(
            lambda _: defer.gatherResults(
                [f.closeAll(self.clock) for f in self.factories if hasattr(f, "closeAll")]
            )
        )


class ListenFailed(Exception):
    """A front's port cannot be had; the message says which and what to do."""


class FrontListener(StreamServerEndpointService):
    """Listens for one front; logs its address (L{LISTENING}) and fires
    C{port} with the listening port."""

    def __init__(self, front, description, factory, reactor, backlog):
        super().__init__(server_endpoint(reactor, description, backlog), factory)
        # A port that cannot be had fails the start at once, loudly.
        self._raiseSynchronously = True
        self.front = front
        self.description = description
        self.port = defer.Deferred()

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            error = ListenFailed(
                "cannot serve the %s front on %s: %s; choose another with --%s"
                % (self.front.name, self.description, e.socketError or e, self.front.option)
            )
            self.port.errback(error)
            raise error from e
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        address = port.getHost()
        log.info(
            LISTENING,
            front=self.front.name,
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        if not self.port.called:
            self.port.callback(port)
        return port


@dataclass
class Assembly:
    """The parts of one mailsvc process, for twistd and for mailsvc.testing."""

    top: service.MultiService
    shared: SharedService
    # front name -> its factory, for every front served
    factories: dict
    # Fires with {front name: listening port} once every front listens.
    listening: defer.Deferred


def _disk_guard(config, reactor):
    path = sqlite_path(config["db"])
    if not config["min-free-disk"] or path == ":memory:" or "://" in path:
        return None
    return DiskGuard(
        os.path.dirname(os.path.abspath(path)),
        config["min-free-disk"],
        reactor,
        run=lambda f: threads.deferToThread(f),
    )


# Seconds "all fronts listening" waits for the bus to be in step with the other
# nodes; past that the node serves anyway (mail works; chat joins are refused
# until Redis answers).
BUS_WAIT = 10.0


def _in_step(bus, reactor):
    d = defer.Deferred()
    bus.ready.addCallback(lambda _: d.called or d.callback(None))

    def late():
        if not d.called:
            log.warn("the chat bus is not in step yet: chat joins wait for it")
            d.callback(None)

    call = reactor.callLater(BUS_WAIT, late)
    return d.addCallback(lambda _: call.active() and call.cancel())


def assemble(config, reactor, hasher=None, top=None):
    """Build the service tree from parsed L{mailsvc.tap.Options} under C{top}
    (a new L{OneByOne} by default); nothing is started."""
    top = top if top is not None else OneByOne()
    store = open_store(
        config["db"],
        reactor,
        Quotas(
            messages=config["quota-messages"],
            bytes=config["quota-bytes"],
            staged=config["max-staged"],
        ),
    )
    store.setServiceParent(top)
    # An unwritable log fails now, loudly.
    open_log_file(config["chat-log"], config["chat-log-size"], config["chat-log-keep"]).close()
    chat_log = ChatLog(
        config["chat-log"],
        reactor,
        rotate_length=config["chat-log-size"],
        max_rotated=config["chat-log-keep"],
    )
    chat_log.setServiceParent(top)
    bus_service, bus, presence = open_bus(
        config.get("bus", LOCAL),
        reactor,
        config.get("node") or default_node(),
        config.get("node-lease", 15.0),
        config["history"],
    )
    if bus_service is not None:
        # Stops after the shared service: the leaves of the grace period
        # still reach the other nodes.
        bus_service.setServiceParent(top)
    shared = SharedService(
        store,
        Passwords.threaded(reactor, hasher=hasher),
        reactor,
        ChatRoom(
            chat_log, history=config["history"], bus=bus, presence=presence, clock=reactor
        ),
        session_ttl=config["session-ttl"],
        sends=TokenBuckets(reactor, rate=config["send-rate"], burst=config["max-sends"]),
        registrations=TokenBuckets(
            reactor, rate=config["max-registrations"] / 3600.0, burst=config["max-registrations"]
        ),
        disk=_disk_guard(config, reactor),
    )
    shared.setServiceParent(top)
    served = [(f, config[f.option]) for f in config.fronts if config[f.option] != OFF]
    factories = {f.name: f.build(shared, config, reactor) for f, _ in served}
    shared.factories = factories
    GracefulShutdown(list(factories.values()), config["shutdown-grace"], reactor).setServiceParent(
        top
    )
    listeners = [
        FrontListener(front, description, factories[front.name], reactor, config["backlog"])
        for front, description in served
    ]
    for listener in listeners:
        listener.setServiceParent(top)

    def listening(ports):
        log.info(ALL_LISTENING)
        return {listener.front.name: port for listener, port in zip(listeners, ports)}

    waits = [listener.port for listener in listeners]
    if bus_service is not None:
        waits.append(_in_step(bus_service, reactor))
    ports = defer.gatherResults(waits, consumeErrors=True)
    if bus_service is not None:
        ports.addCallback(lambda results: results[:-1])
    return Assembly(top, shared, factories, ports.addCallback(listening))
