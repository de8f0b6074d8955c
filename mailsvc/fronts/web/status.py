"""
C{/status} and C{/status.json}: what the server is doing, at a glance.

Counts only, never a secret: no addresses, no nicknames, no passwords,
cookies or mail. The store's summary is asked at most once every
L{SUMMARY_INTERVAL} seconds however often the page is loaded, and a store
that fails to answer is reported, not raised.
"""

import html
import json
import socket

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from mailsvc import errors

SUMMARY_INTERVAL = 1.0

log = Logger()


class Status:
    """
    Gathers the status of one server: its L{SharedService}, the fronts'
    factories (C{service.factories}), its room, its store.
    """

    def __init__(self, service, clock, version, node=None, interval=SUMMARY_INTERVAL):
        self.service = service
        self.clock = clock
        self.version = version
        self.node = node or socket.gethostname()
        self.interval = interval
        self._summary = None
        self._asked_at = None

    def _store_summary(self):
        """Fire with C{(summary or None, error reason or None)}."""
        now = self.clock.seconds()
        if self._summary is None or now - self._asked_at >= self.interval:
            self._asked_at = now
            d = self.service.storage.summary()
            d.addCallbacks(lambda summary: (summary, None), self._unavailable)
            self._summary = _Shared(d)
        return self._summary.get()

    @staticmethod
    def _unavailable(failure):
        failure.trap(errors.StorageUnavailable)
        return None, failure.value.reason

    def snapshot(self):
        """Fire with the status, a dict fit for JSON."""
        service = self.service
        room = service.room
        connections = {
            name: len(getattr(factory, "connections", ()))
            for name, factory in service.factories.items()
        }
        started = service.started
        uptime = self.clock.seconds() - started if started is not None else 0.0

        def made(result):
            summary, problem = result
            summary = summary or {}
            return {
                "version": self.version,
                "node": self.node,
                "uptime": round(uptime, 1),
                "connections": connections,
                "room": {
                    "participants": len(room.participants()),
                    "said": room.said,
                },
                "accounts": summary.get("accounts"),
                "messages": summary.get("messages"),
                "mailboxes": summary.get("mailboxes"),
                "storage": {"ok": problem is None, "problem": problem},
                # The local bus is always in step; Redis says whether it is.
                "bus": {
                    "kind": type(service.bus).__name__,
                    "ok": getattr(service.bus, "available", lambda: True)(),
                },
            }

        return self._store_summary().addCallback(made)


class _Shared:
    """One Deferred's result, handed to any number of askers."""

    def __init__(self, d):
        self._result = None
        self._done = False
        self._waiting = []
        d.addBoth(self._fired)

    def _fired(self, result):
        self._result, self._done = result, True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)

    def get(self):
        if self._done:
            return defer.succeed(self._result)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


class StatusResource(resource.Resource):
    """The status as C{content_type}, made by C{render(snapshot)}."""

    isLeaf = True

    def __init__(self, status, content_type, render):
        super().__init__()
        self.status = status
        self.content_type = content_type
        self.render_snapshot = render

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-store")
        _render_later(request, self.status.snapshot(), self.render_snapshot)
        return server.NOT_DONE_YET


def status_json(status):
    return StatusResource(status, b"application/json; charset=utf-8", _as_json)


def status_page(status):
    """The same, as a page a person reads (it reloads itself every 5 s)."""
    return StatusResource(status, b"text/html; charset=utf-8", _as_page)


def _render_later(request, d, render):
    gone = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(snapshot):
        if not gone:
            request.write(render(snapshot))
            request.finish()

    d.addCallback(write)
    d.addErrback(lambda f: _failed(request, f, gone))


def _failed(request, failure, gone):
    log.failure("status failed", failure)
    if not gone:
        request.setResponseCode(500)
        request.write(b"internal error\n")
        request.finish()


def _as_json(snapshot):
    return json.dumps(snapshot, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _row(name, value):
    return "<tr><th>%s</th><td>%s</td></tr>" % (html.escape(name), html.escape(str(value)))


def _as_page(s):
    uptime = int(s["uptime"])
    rows = [
        _row("version", s["version"]),
        _row("node", s["node"]),
        _row("uptime", "%dd %02d:%02d:%02d" % (uptime // 86400, uptime // 3600 % 24,
                                               uptime // 60 % 60, uptime % 60)),
        _row("participants in the room", s["room"]["participants"]),
        _row("chat messages since start", s["room"]["said"]),
        _row("accounts", s["accounts"]),
        _row("stored messages", s["messages"]),
        _row("storage", "ok" if s["storage"]["ok"] else "unavailable: %s"
             % (s["storage"]["problem"],)),
        _row("bus", "%s, %s" % (s["bus"]["kind"], "ok" if s["bus"]["ok"] else "failing")),
    ] + [_row("connections: " + name, n) for name, n in sorted(s["connections"].items())]
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<meta http-equiv=refresh content=5>"
        "<title>mailsvc status</title><link rel=stylesheet href=/style.css></head>"
        "<body class=status><h1>mailsvc status</h1><table>%s</table>"
        "<p><a href=/status.json>status.json</a> · <a href=/metrics>metrics</a>"
        " · <a href=/>chat</a></p></body></html>\n" % ("".join(rows),)
    ).encode("utf-8")
