"""
The web front (C{--web-port}, C{tcp:8080}): twisted.web serving

  - C{/}: the browser chat (C{static/}: plain HTML, CSS and JavaScript from
    the package, no build step and nothing fetched from elsewhere);
  - C{/ws}: its WebSocket, a room participant speaking JSON (L{websocket});
  - C{/status} and C{/status.json}: counts at a glance (L{status});
  - C{/metrics}: Prometheus' text format (L{metrics}).

Every response carries a Content-Security-Policy that lets the page run its
own script and nothing else, and C{X-Content-Type-Options: nosniff}; the page
puts chat text into the document as text, never as HTML. An C{ssl:} endpoint
gives HTTPS, and the page then connects with wss.
"""

import os
import socket

from twisted.web import pages, resource, server

from mailsvc.fronts.registry import Front
from mailsvc.fronts.web.metrics import metrics_registry, metrics_resource
from mailsvc.fronts.web.websocket import WebSocketMembers
from mailsvc.fronts.web.status import Status, status_json, status_page

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'none'; script-src 'self'; style-src 'self';"
    b" img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none';"
    b" frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}

# Seconds an HTTP connection may stay idle between requests (a WebSocket is
# timed by --chat-idle-timeout instead).
HTTP_TIMEOUT = 60


def version():
    try:
        from importlib.metadata import version

        return version("mailsvc")
    except Exception:  # not installed: run from a checkout
        return "unknown"


class SecureRequest(server.Request):
    def process(self):
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        super().process()


class WebSite(server.Site):
    """
    The web front's factory: a twisted.web Site whose connections, shutdown
    notice and close are those of its WebSocket members (plain HTTP requests
    are short and end with the process).
    """

    requestFactory = SecureRequest

    def __init__(self, root, members, registry, **kwargs):
        super().__init__(root, **kwargs)
        self.members = members
        self.registry = registry

    @property
    def connections(self):
        return self.members.connections

    @property
    def sendq_drops(self):
        return self.members.sendq_drops

    def announce_shutdown(self, event):
        self.members.announce_shutdown(event)

    def closeAll(self, clock):
        return self.members.closeAll(clock)


class Root(resource.Resource):
    """C{/} is the chat page; the other paths are children."""

    def __init__(self, index):
        super().__init__()
        self.index = index

    def getChild(self, path, request):
        if path == b"":
            return self.index
        return pages.notFound()


class PackageFile(resource.Resource):
    """One file of C{static/}, read once: the page needs three, and no
    directory is ever listed or walked."""

    def __init__(self, name, content_type):
        super().__init__()
        with open(os.path.join(STATIC, name), "rb") as f:
            self.content = f.read()
        self.content_type = content_type

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.content

    def render_HEAD(self, request):
        return self.render_GET(request)

    def getChild(self, path, request):
        return pages.notFound()


def build(service, config, reactor, node=None):
    from autobahn.twisted.resource import WebSocketResource

    node = node or config.get("node") or socket.gethostname()
    members = WebSocketMembers(
        service,
        reactor,
        version(),
        origins=[o.strip() for o in (config["web-origin"] or "").split(",") if o.strip()],
        max_message=config["max-line"],
        max_sendq=config["max-sendq"],
        nick_timeout=config["nick-timeout"],
        idle_timeout=config["chat-idle-timeout"],
        flood_rate=config["flood-rate"],
        flood_burst=config["flood-burst"],
        max_connections=config["max-connections"],
        max_per_peer=config["max-per-peer"],
    )
    status = Status(service, reactor, version(), node)
    registry = metrics_registry(service, reactor, version(), node)
    root = Root(PackageFile("index.html", b"text/html; charset=utf-8"))
    root.putChild(b"app.js", PackageFile("app.js", b"text/javascript; charset=utf-8"))
    root.putChild(b"style.css", PackageFile("style.css", b"text/css; charset=utf-8"))
    root.putChild(b"ws", WebSocketResource(members))
    root.putChild(b"status", status_page(status))
    root.putChild(b"status.json", status_json(status))
    root.putChild(b"metrics", metrics_resource(registry))
    site = WebSite(root, members, registry, timeout=HTTP_TIMEOUT, reactor=reactor)
    site.displayTracebacks = False
    return site


FRONT = Front(
    name="web",
    default="tcp:8080",
    description="Web front (browser chat, /ws, /status, /metrics)",
    parameters=(
        (
            "web-origin",
            None,
            None,
            "Other origins whose pages may use /ws, comma-separated"
            " (https://chat.example.org; *: any). The page's own is always allowed.",
        ),
    ),
    build=build,
)
