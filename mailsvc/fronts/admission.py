"""
Connection limits, for any front's factory: at most C{max_connections} at
once, and at most C{max_per_peer} from one address (None: no limit).

A helper the factory calls, not a wrapper around its transports: a wrapper
would hide the TCP transport from the write coalescer's direct C{send()}.
"""

from twisted.logger import Logger


class Admission:
    log = Logger()

    def __init__(self, max_connections=None, max_per_peer=None):
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.connections = set()
        self._per_peer = {}

    def admit(self, connection, host):
        """Count C{connection} (from C{host}, or None) in, or return why it is refused."""
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self.log.info("refused a connection from {host}: server full", host=host)
            return "too many connections"
        if (
            self.max_per_peer is not None
            and host is not None
            and self._per_peer.get(host, 0) >= self.max_per_peer
        ):
            self.log.info("refused a connection from {host}: too many from there", host=host)
            return "too many connections from your address"
        self.connections.add(connection)
        if host is not None:
            self._per_peer[host] = self._per_peer.get(host, 0) + 1
        return None

    def release(self, connection, host):
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        if host is not None:
            remaining = self._per_peer.get(host, 1) - 1
            if remaining:
                self._per_peer[host] = remaining
            else:
                self._per_peer.pop(host, None)
