"""The bus between the room and its members, and nickname presence:
L{open_bus} picks them by C{--bus}."""

import os
import socket

from mailsvc.bus.local import LocalBus, LocalPresence

LOCAL = "local"


def default_node():
    """This node's name when C{--node} is not given: host name and pid."""
    return "%s-%d" % (socket.gethostname(), os.getpid())


def open_bus(url, reactor, node, lease, history):
    """
    C{(service or None, bus, presence)} for C{--bus} C{url}: L{LOCAL} (one
    node, in process) or C{redis://host:port/db}. The service, if any, is
    a child of the process. ValueError for a URL it does not know.
    """
    if url == LOCAL:
        return None, LocalBus(), LocalPresence()
    if url.startswith("redis://"):
        from mailsvc.bus.redis import RedisBus, parse_url

        parse_url(url)
        bus = RedisBus(url, reactor, node, lease=lease, history=history)
        return bus, bus, bus.presence
    raise ValueError("--bus: %r is neither %s nor a redis://host:port/db URL" % (url, LOCAL))
