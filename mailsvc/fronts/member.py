"""
What every room participant on a line-based front does the same way, whatever
its words: a send queue bounded by the factory's C{max_sendq}, and flood
control (a token bucket of C{flood_rate} lines a second, C{flood_burst} at
once). The chat and IRC fronts mix it into their protocols and say the
warnings in their own words (L{RoomMember.tooFast}, L{RoomMember.flooded}).
"""


class RoomMember:
    """
    A mixin for a protocol with an C{output} (L{mailsvc.fronts.lines.OutputBuffer})
    whose factory has C{writes}, C{clock}, C{max_sendq}, C{flood_rate},
    C{flood_burst} and C{sendq_drops} (a count, for /metrics).
    """

    _dropped = False
    _strikes = 0

    def startFloodControl(self):
        self._tokens = self.factory.flood_burst
        self._refilled = self.factory.clock.seconds()

    def send(self, data):
        """
        L{IParticipant.send}: bounded by the factory's max_sendq, and
        written at the end of the reactor turn with whatever else this
        connection is sent in it.
        """
        if self._dropped:
            return
        if self.output.full:
            self.output.backlog += len(data)
            if self.output.backlog > self.factory.max_sendq:
                self.log.warn(
                    "SendQ exceeded: disconnecting {nick} ({peer}), over {limit} bytes"
                    " waiting",
                    nick=self.nick,
                    peer=self.peer,
                    limit=self.factory.max_sendq,
                )
                self._dropped = True
                self.factory.sendq_drops += 1
                self.factory.writes.forget(self)
                self.transport.abortConnection()
                return
        self.factory.writes.write(self, data)

    def withinRate(self):
        """
        Flood control, a token bucket: flood_rate lines a second on average,
        flood_burst at once. A line over the rate is dropped with a warning
        (L{tooFast}); as many drops again as the burst, with no line in
        between that was within the rate, and the client is disconnected
        (L{flooded}).
        """
        factory = self.factory
        now = factory.clock.seconds()
        self._tokens = min(
            factory.flood_burst, self._tokens + (now - self._refilled) * factory.flood_rate
        )
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._strikes = 0
            return True
        self._strikes += 1
        if self._strikes == 1:
            self.tooFast(factory.flood_rate)
        elif self._strikes > factory.flood_burst:
            self.log.warn("flooding: disconnecting {nick} ({peer})", nick=self.nick, peer=self.peer)
            self.flooded()
            self.close()
        return False

    def tooFast(self, rate):
        """Warn the client that a line was dropped: at most C{rate} a second."""
        raise NotImplementedError()

    def flooded(self):
        """Tell the client it is disconnected for flooding (it is closed next)."""
        raise NotImplementedError()
