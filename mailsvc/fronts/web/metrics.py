"""
C{/metrics}: the server's counts in Prometheus' text format, served by
prometheus_client's own Twisted resource.

Nothing here runs on a hot path: the room, the fronts, the checker and the
store count with plain integers (L{mailsvc.core.stats}), and this collector
reads them when Prometheus scrapes. Each server has a registry of its own
(several run in one test process), with the process' own metrics too.
"""

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.twisted import MetricsResource
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import threads
from twisted.python.threadable import isInIOThread


class ServerCollector:
    """The metrics of one L{SharedService} and its fronts."""

    def __init__(self, service, reactor, version, node):
        self.service = service
        self.reactor = reactor
        self.version = version
        self.node = node

    def describe(self):
        # Nothing to check at registration: collect() reads live state.
        return []

    def collect(self):
        # prometheus_client's resource collects on a thread of the reactor's
        # pool; the counts are read on the reactor's own thread.
        if isInIOThread():
            counts = self._read()
        else:
            counts = threads.blockingCallFromThread(self.reactor, self._read)
        return self._families(counts)

    def _read(self):
        """Every count, copied, on the reactor thread."""
        service = self.service
        room = service.room
        checker = service.portal.checkers.get(IUsernamePassword)
        storage = service.storage
        fronts = sorted(service.factories.items())
        return {
            "uptime": None if service.started is None else self.reactor.seconds() - service.started,
            "connections": [(n, len(getattr(f, "connections", ()))) for n, f in fronts],
            "drops": [(n, f.sendq_drops) for n, f in fronts if hasattr(f, "sendq_drops")],
            "commands": sorted(
                (key, count) for _, f in fronts for key, count in getattr(f, "commands", {}).items()
            ),
            "participants": len(room.participants()),
            "said": room.said,
            "deliveries": room.deliveries,
            "failures": getattr(checker, "failures", 0),
            "lockouts": getattr(checker, "lockouts", 0),
            "histograms": [
                (name, documentation, histogram.cumulative(), histogram.sum)
                for name, documentation, histogram in (
                    ("mailsvc_storage_batch_size", "Requests committed in one transaction.",
                     getattr(storage, "batch_sizes", None)),
                    ("mailsvc_storage_commit_seconds", "Seconds one transaction took to commit.",
                     getattr(storage, "commit_seconds", None)),
                )
                if histogram is not None
            ],
        }

    def _families(self, counts):
        yield InfoMetricFamily(
            "mailsvc_build", "The server's version and node.",
            value={"version": self.version, "node": self.node},
        )
        if counts["uptime"] is not None:
            yield GaugeMetricFamily(
                "mailsvc_uptime_seconds", "Seconds since the server started.",
                value=counts["uptime"],
            )
        connections = GaugeMetricFamily(
            "mailsvc_connections", "Open connections, per front.", labels=["front"]
        )
        for front, count in counts["connections"]:
            connections.add_metric([front], count)
        yield connections
        drops = CounterMetricFamily(
            "mailsvc_sendq_drops",
            "Clients dropped for leaving more than --max-sendq bytes unread, per front.",
            labels=["front"],
        )
        for front, count in counts["drops"]:
            drops.add_metric([front], count)
        yield drops
        commands = CounterMetricFamily(
            "mailsvc_mail_commands",
            "Mail port requests answered, by verb and result (ok or ko).",
            labels=["verb", "result"],
        )
        for labels, count in counts["commands"]:
            commands.add_metric(list(labels), count)
        yield commands
        yield GaugeMetricFamily(
            "mailsvc_room_participants", "Members of the chat room on this node.",
            value=counts["participants"],
        )
        yield CounterMetricFamily(
            "mailsvc_chat_lines", "Messages said in the chat room.", value=counts["said"]
        )
        yield CounterMetricFamily(
            "mailsvc_chat_deliveries", "Room events delivered to this node's members.",
            value=counts["deliveries"],
        )
        yield CounterMetricFamily(
            "mailsvc_login_failures", "Logins refused for a wrong name or password.",
            value=counts["failures"],
        )
        yield CounterMetricFamily(
            "mailsvc_login_lockouts",
            "Logins refused unchecked: too many failures for the name or the address.",
            value=counts["lockouts"],
        )
        for name, documentation, buckets, total in counts["histograms"]:
            yield HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def metrics_registry(service, reactor, version, node):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(service, reactor, version, node))
    ProcessCollector(registry=registry)
    return registry


def metrics_resource(registry):
    """prometheus_client's resource: it collects on the reactor's thread pool."""
    return MetricsResource(registry=registry)
