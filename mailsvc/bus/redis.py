"""
The bus and presence across nodes, over Redis (C{--bus redis://host:port/db}).

Every node keeps two connections (txredisapi's protocols under Twisted's
L{ClientService}, which reconnects with a backoff): one to publish and to
claim nicknames, one subscribed to the room's channel. Both are PINGed, so
a half-open connection is dropped and made again; each new connection
resynchronises before it is used.

Why a sequence and a stream, not plain pub/sub (Centrifugo's model): pub/sub
delivers only to whoever is connected at that instant, so a node that
reconnects would miss what was said meanwhile. One Lua script call numbers
each event (INCR), appends it to a capped stream (XADD MAXLEN ~) and
publishes it with its number, atomically; a subscriber that sees a gap, or
reconnects, reads what it missed from the stream in order. A node publishes
through a queue of its own: an event stays queued until Redis acknowledges
it, and is sent again after a reconnect; a counter per publisher makes the
script drop what it already has, so nothing is lost or doubled. One
connection keeps every sender's lines in the order said, everywhere; the
events of one reactor turn go in one script call and one PUBLISH. The
room's recent history is a list beside the stream, written by the same
script, so every node shows a newcomer the same history.

Nicknames (L{RedisPresence}) are a hash, nickname -> "node\\nnick", claimed
with HSETNX in a script; each node holds a lease (a sorted set of node ->
expiry, Redis's own clock) renewed every quarter of C{--node-lease}; every
renewal also reaps the nodes whose lease ran out, frees their nicknames and
publishes that those left (the script removes a dead node's lease
atomically, so one node reaps it). A node whose connections are down
refuses new joins (L{errors.ChatUnavailable}) rather than splitting the
room; on reconnect it claims its members' nicknames again.
"""

import collections
import itertools
import os
from urllib.parse import parse_qs, urlsplit

import txredisapi
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol, task
from twisted.logger import Logger
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.events import History, Joined, Left, Said, from_wire, to_wire
from mailsvc.core.names import fold
from mailsvc.interfaces import IBus, IPresence

# Events kept in the stream for nodes that reconnect: at 10k lines a second,
# ten seconds of chat (about 100 bytes each).
STREAM_LENGTH = 100000
# A node cut off from Redis keeps at most this many events to publish later.
OUTBOX_LIMIT = 100000
# Seconds between PINGs, and for any reply before a connection is dropped.
KEEPALIVE = 5.0
REPLY_TIMEOUT = 10.0

# One call per reactor turn's events. ARGV: stream length, history length,
# then counter, said (1/0), payload for each event. Events already stored
# (counter not above the publisher's last) are skipped; the others are
# numbered, kept, and published as one message: "<first seq>\n<payload>\n...".
PUBLISH = """
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
local keep = tonumber(ARGV[2])
local first, out = nil, {}
for i = 3, #ARGV, 3 do
  local counter = tonumber(ARGV[i])
  if counter > last then
    last = counter
    local seq = redis.call('INCR', KEYS[1])
    first = first or seq
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '0-' .. seq, 'e', ARGV[i + 2])
    if ARGV[i + 1] == '1' and keep > 0 then
      redis.call('RPUSH', KEYS[4], ARGV[i + 2])
    end
    out[#out + 1] = ARGV[i + 2]
  end
end
if first then
  redis.call('SET', KEYS[5], last, 'EX', 86400)
  if keep > 0 then redis.call('LTRIM', KEYS[4], -keep, -1) end
  redis.call('PUBLISH', KEYS[3], first .. '\\n' .. table.concat(out, '\\n'))
end
return last
"""

# Events in one PUBLISH call at most (a reconnect resends the queue in these).
BATCH = 1000

# Where a subscriber stands: the epoch (a new one when Redis lost its data),
# the last number, the history, and what it missed since ARGV[3].
SYNC = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local after
if ARGV[2] == '' then after = seq
elseif ARGV[2] ~= epoch then after = 0
else after = tonumber(ARGV[3]) end
local entries = {}
if after < seq then
  entries = redis.call('XRANGE', KEYS[4], '0-' .. (after + 1), '+')
end
return {epoch, tostring(seq), tostring(after), redis.call('LRANGE', KEYS[3], 0, -1), entries}
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: nicks, our members, leases. ARGV: node, lease ms, then folded, nick...
REGISTER = _NOW + """
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
local prefix = ARGV[1] .. '\\n'
local wanted = {}
for i = 3, #ARGV, 2 do wanted[ARGV[i]] = ARGV[i + 1] end
for _, folded in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not wanted[folded] then
    local v = redis.call('HGET', KEYS[1], folded)
    if v and string.sub(v, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], folded) end
    redis.call('SREM', KEYS[2], folded)
  end
end
local regained, lost = {}, {}
for folded, nick in pairs(wanted) do
  local v = redis.call('HGET', KEYS[1], folded)
  if not v then
    redis.call('HSET', KEYS[1], folded, prefix .. nick)
    redis.call('SADD', KEYS[2], folded)
    table.insert(regained, nick)
  elseif string.sub(v, 1, #prefix) ~= prefix then
    table.insert(lost, nick)
  end
end
return {regained, lost}
"""

# KEYS: nicks, our members, leases. ARGV: node, folded, nick.
CLAIM = """
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[1] .. '\\n' .. ARGV[3]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: nicks, our members. ARGV: node, folded.
RELEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[2])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: leases, nicks. ARGV: node, lease ms, the members keys' prefix.
# Renews our lease (unless it was reaped: 0) and reaps the dead.
RENEW = _NOW + """
local alive = 1
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then alive = 0
else redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
local left = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], node)
  local members = ARGV[3] .. node
  for _, folded in ipairs(redis.call('SMEMBERS', members)) do
    local v = redis.call('HGET', KEYS[2], folded)
    if v and string.sub(v, 1, #node + 1) == node .. '\\n' then
      redis.call('HDEL', KEYS[2], folded)
      table.insert(left, string.sub(v, #node + 2))
    end
  end
  redis.call('DEL', members)
end
return {alive, left}
"""

# KEYS: nicks, our members, leases. ARGV: node. A node leaving for good.
DEREGISTER = """
local prefix = ARGV[1] .. '\\n'
for _, folded in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local v = redis.call('HGET', KEYS[1], folded)
  if v and string.sub(v, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], folded) end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def _call(method, *args):
    """C{method(*args)} as a Deferred: txredisapi raises ConnectionError at
    once on a connection it knows is closed, rather than failing a Deferred."""
    return defer.maybeDeferred(method, *args)


def parse_url(url):
    """C{redis://host[:port][/db][?prefix=...]} as C{(host, port, db, prefix)}.
    ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError("not a redis://host:port/db URL: %r" % (url,))
    path = parts.path.strip("/")
    db = int(path) if path else 0
    prefix = parse_qs(parts.query).get("prefix", ["mailsvc:"])[0]
    return parts.hostname, parts.port or 6379, db, prefix


class _Factory(protocol.Factory):
    """What txredisapi's protocols expect of a factory, for ClientService."""

    isLazy = True
    noisy = False  # a reconnect is logged once, by the link
    log = Logger()

    def __init__(self, protocol_class, db):
        self.protocol_class = protocol_class
        self.db = db

    def buildProtocol(self, addr):
        made = self.protocol_class(
            "utf-8", replyTimeout=REPLY_TIMEOUT, dbid=self.db or None, convertNumbers=False
        )
        made.factory = self
        return made

    def stopTrying(self):
        pass  # a failed SELECT: the next attempt says it again

    def connectionError(self, message):
        self.log.error("redis: {message}", message=message)


class _AllRepliesAtOnce:
    """
    txredisapi reads what follows each bulk reply in a later reactor turn
    (C{setLineMode} pauses the transport and calls itself back with
    C{callLater(0)}): one published event a turn, two C{epoll_ctl} calls each,
    and every fan-out its own C{send()} per member. Measured (bench/cluster.py)
    that capped one node on Redis at a quarter of the local bus. Here what
    follows is read in the same loop, so the events of one read share a turn
    and the coalescer's C{send()}s.
    """

    _carry = None

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        if extra:
            self._carry = extra

    def dataReceived(self, data, unpause=False):
        while True:
            self._carry = None
            super().dataReceived(data)
            if self._carry is None or self.transport is None or self.transport.disconnecting:
                return
            data = self._carry


class _Publisher(_AllRepliesAtOnce, txredisapi.RedisProtocol):
    pass


class _Subscriber(_AllRepliesAtOnce, txredisapi.SubscriberProtocol):
    heard = None  # set by the link: heard(channel, message)

    def messageReceived(self, pattern, channel, message):
        self.heard(message)


class _Link(service.Service):
    """
    One connection to Redis, kept: made again with a backoff when lost, PINGed
    every L{KEEPALIVE} seconds (a reply later than L{REPLY_TIMEOUT} drops it),
    and C{prepare(protocol)} run on each before it counts as ready
    (C{self.protocol}); C{lost()} is called when a ready one is lost.
    """

    log = Logger()

    def __init__(self, reactor, host, port, db, protocol_class, prepare, lost, name):
        self.reactor = reactor
        self.name = name
        self.protocol = None
        self._prepare_made = prepare
        self._lost = lost
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=REPLY_TIMEOUT)
        self._client = ClientService(
            endpoint,
            _Factory(protocol_class, db),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0),
            clock=reactor,
            prepareConnection=self._prepare,
        )
        self._keepalive = task.LoopingCall(self._ping)
        self._keepalive.clock = reactor
        self._was_up = False

    def startService(self):
        super().startService()
        self._client.startService()
        self._keepalive.start(KEEPALIVE, now=False)

    def stopService(self):
        super().stopService()
        if self._keepalive.running:
            self._keepalive.stop()
        return self._client.stopService()

    def _prepare(self, proxy):
        made = getattr(proxy, "_protocol", proxy)

        def connected(_):
            # Nagle's algorithm would hold a turn's call until the last one's
            # reply came back: 40 ms stalls under load (bench/cluster.py).
            made.transport.setTcpNoDelay(True)
            made.whenDisconnected().addCallback(self._disconnected)
            self.protocol = made
            return self._prepare_made(made)

        def failed(failure):
            self.protocol = None
            if made.transport is not None:
                made.transport.abortConnection()
            if not failure.check(txredisapi.ConnectionError):
                self.log.failure(
                    "redis {name}: preparing a connection failed", failure, name=self.name
                )
            return failure

        if not self._was_up:
            self.log.info("redis {name}: connected", name=self.name)
        self._was_up = True
        return made.whenConnected().addCallback(connected).addErrback(failed)

    def _disconnected(self, made):
        if self.protocol is made:
            self.protocol = None
            if self.running:
                self.log.warn("redis {name}: connection lost; reconnecting", name=self.name)
            self._was_up = False
            self._lost()

    def _ping(self):
        if self.protocol is not None:
            self.protocol.ping().addErrback(lambda _: None)  # a timeout drops it


@implementer(IBus)
class RedisBus(service.MultiService):
    """
    L{IBus} across nodes; its C{presence} is the matching L{RedisPresence}.
    A child service of the process: it starts before the shared service and
    stops after it, once what this node published has reached Redis.

    @param node: this node's name (C{--node}); @param lease: C{--node-lease}.
    @param history: how many recent lines the room keeps (C{--history}).
    """

    log = Logger()

    def __init__(self, url, reactor, node, lease=15.0, history=20):
        super().__init__()
        host, port, db, prefix = parse_url(url)
        self.url = url
        self.reactor = reactor
        self.node = node
        self.history = history
        self.keys = _Keys(prefix)
        self._subscribers = []
        # Events not yet acknowledged by Redis: (counter, said "1" or "0", payload).
        self._outbox = collections.deque()
        self._unsent = 0  # how many of the queue's first events were sent on this connection
        self._flush_call = None
        self._publisher = "%s-%s" % (node, os.urandom(6).hex())
        self._counter = 0
        # Where this node stands in the room's sequence.
        self._epoch = ""
        self._last = 0
        self._synced = False
        self._syncing = False
        self._pending = {}  # seq -> payload heard while not synced
        self.ready = defer.Deferred()  # fires once first in step with the room
        self._publish_link = _Link(
            reactor, host, port, db, _Publisher, self._publisher_ready,
            self._publisher_lost, "publish",
        )
        self._subscribe_link = _Link(
            reactor, host, port, db, _Subscriber, self._subscriber_ready,
            self._subscriber_lost, "subscribe",
        )
        self._publish_link.setServiceParent(self)
        self._subscribe_link.setServiceParent(self)
        self.presence = RedisPresence(self, node, lease)

    def startService(self):
        self.log.info("node {node}: chat bus {url}", node=self.node, url=self.url)
        super().startService()
        self.presence.start()

    @defer.inlineCallbacks
    def stopService(self):
        self.presence.stop()
        self._flush()  # the last turn's events, now
        yield self._flushed(timeout=5.0)
        yield self.presence.deregister()
        yield super().stopService()

    def available(self):
        """Whether this node is in step with the room (and so may take joins)."""
        return self._publish_link.protocol is not None and self._synced

    # IBus

    def subscribe(self, callback):
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, message):
        self._counter += 1
        entry = (self._counter, "1" if isinstance(message, Said) else "0", to_wire(message))
        if len(self._outbox) >= OUTBOX_LIMIT:
            self.log.error("node {node}: cut off too long; dropping an event", node=self.node)
            self._outbox.popleft()
            self._unsent = max(0, self._unsent - 1)
        self._outbox.append(entry)
        if self._flush_call is None and self._publish_link.protocol is not None:
            # What this reactor turn publishes goes in one call: at 10k lines
            # a second, one EVALSHA per line cost more than the rest of a
            # line's way (bench/cluster.py).
            self._flush_call = self.reactor.callLater(0, self._flush)

    # Publishing

    def _flush(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        connection = self._publish_link.protocol
        if connection is None:
            return
        while self._unsent < len(self._outbox):
            batch = list(itertools.islice(self._outbox, self._unsent, self._unsent + BATCH))
            self._unsent += len(batch)
            self._send(connection, batch)

    def _send(self, connection, batch):
        keys = self.keys
        args = [STREAM_LENGTH, self.history]
        for entry in batch:
            args.extend(entry)
        d = _call(connection.eval,
            PUBLISH,
            [keys.seq, keys.stream, keys.channel, keys.history, keys.sent(self._publisher)],
            args,
        )
        last = batch[-1][0]
        d.addCallbacks(lambda _: self._acknowledged(last), self._send_failed)

    def _acknowledged(self, counter):
        while self._outbox and self._outbox[0][0] <= counter:
            self._outbox.popleft()
            self._unsent -= 1

    def _send_failed(self, failure):
        # A lost connection: the event stays queued and goes again.
        if not failure.check(txredisapi.ConnectionError):
            self.log.failure("publishing to redis failed", failure)

    def _flushed(self, timeout):
        """Fire once the queue is empty, or after C{timeout} seconds."""
        d = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def check():
            if not self._outbox or self.reactor.seconds() >= deadline:
                if self._outbox:
                    self.log.warn(
                        "node {node}: {n} events never reached redis", node=self.node,
                        n=len(self._outbox),
                    )
                d.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return d

    def _publisher_ready(self, connection):
        # Whatever was not acknowledged goes again; the script skips what it has.
        self._unsent = 0
        self._flush()
        d = self.presence.register(connection)
        d.addCallback(lambda _: self._sync())
        return d

    def _publisher_lost(self):
        self.presence.cut_off()

    # Hearing

    def _subscriber_ready(self, connection):
        connection.heard = self._heard
        d = _call(connection.subscribe, self.keys.channel)
        d.addCallback(lambda _: self._sync())
        return d

    def _subscriber_lost(self):
        self._synced = False

    def _heard(self, message):
        first, *payloads = message.split("\n")
        first = int(first)
        for seq, payload in enumerate(payloads, first):
            if not self._synced:
                self._pending[seq] = payload
            elif seq == self._last + 1:
                self._deliver(seq, payload)
            elif seq > self._last + 1:  # a gap: read the stream
                self._pending[seq] = payload
                self._synced = False
                self._sync()
            # else: already delivered (heard again after a resync)

    def _sync(self):
        connection = self._publish_link.protocol
        if self._synced or self._syncing or connection is None:
            return
        if self._subscribe_link.protocol is None:
            return
        self._syncing = True
        keys = self.keys
        d = _call(connection.eval,
            SYNC,
            [keys.epoch, keys.seq, keys.history, keys.stream],
            [os.urandom(8).hex(), self._epoch, self._last],
        )
        d.addCallbacks(self._synced_with, self._sync_failed)

    def _sync_failed(self, failure):
        self._syncing = False
        if not failure.check(txredisapi.ConnectionError):
            self.log.failure("resynchronising with redis failed", failure)

    def _synced_with(self, result):
        self._syncing = False
        epoch, seq, after, history, entries = result
        seq, after = int(seq), int(after)
        if self._epoch and epoch != self._epoch:
            self.log.warn("redis lost its data: the room's sequence starts again")
        self._epoch = epoch
        self._last = after
        missed = 0
        for entry_id, fields in entries:
            number = int(entry_id.split("-")[1])
            if number > self._last + 1:
                missed += number - self._last - 1
            self._deliver(number, dict(zip(fields[::2], fields[1::2]))["e"])
        if seq > self._last:
            missed += seq - self._last
        if missed:
            self.log.warn(
                "node {node}: {missed} events were trimmed from the stream before this"
                " node read them", node=self.node, missed=missed,
            )
        self._last = seq
        self._fan_out(History([from_wire(text) for text in history]))
        # Lost again meanwhile: the next subscription resynchronises.
        self._synced = self._subscribe_link.protocol is not None
        pending, self._pending = self._pending, {}
        for number in sorted(pending):
            if number <= self._last or not self._synced:
                continue
            if number != self._last + 1:
                self._synced = False
                self._pending = {n: pending[n] for n in pending if n >= number}
                self._sync()
                break
            self._deliver(number, pending[number])
        if not self.ready.called and self._synced:
            self.ready.callback(None)

    def _deliver(self, seq, payload):
        self._last = seq
        try:
            event = from_wire(payload)
        except (ValueError, KeyError, TypeError):
            self.log.failure("an event from redis that this node cannot read: {p!r}", p=payload)
            return
        self._fan_out(event)

    def _fan_out(self, event):
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self.log.failure("a subscriber failed on {message!r}", message=event)


class _Keys:
    def __init__(self, prefix):
        self.prefix = prefix
        self.seq = prefix + "seq"
        self.stream = prefix + "stream"
        self.channel = prefix + "events"
        self.history = prefix + "history"
        self.epoch = prefix + "epoch"
        self.nicks = prefix + "nicks"
        self.leases = prefix + "leases"
        self.members_prefix = prefix + "members:"

    def sent(self, publisher):
        return self.prefix + "sent:" + publisher

    def members(self, node):
        return self.members_prefix + node


@implementer(IPresence)
class RedisPresence:
    """
    L{IPresence} across nodes (see the module's docstring). Claims fail with
    L{errors.ChatUnavailable} while this node is cut off from Redis.
    """

    log = Logger()

    def __init__(self, bus, node, lease):
        self.bus = bus
        self.node = node
        self.lease = lease
        self.keys = bus.keys
        self._mine = {}  # folded -> nick: what this node's members hold
        self._registered = False
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = bus.reactor

    def start(self):
        self._renewal.start(self.lease / 4.0, now=False)

    def stop(self):
        if self._renewal.running:
            self._renewal.stop()

    def _connection(self):
        connection = self.bus._publish_link.protocol
        if connection is None or not self._registered or not self.bus.available():
            raise errors.ChatUnavailable()
        return connection

    def _lease_ms(self):
        # Expires after half the lease: renewed every quarter, a live node
        # can miss one renewal; a dead one is reaped within 3/4 of the lease.
        return int(self.lease * 500)

    def register(self, connection):
        """Renew this node's lease and claim its members' nicknames again
        (after a reconnect: they may have been reaped meanwhile)."""
        args = [self.node, self._lease_ms()]
        for folded, nick in self._mine.items():
            args += [folded, nick]
        keys = self.keys
        d = _call(
            connection.eval, REGISTER, [keys.nicks, keys.members(self.node), keys.leases], args
        )

        def registered(result):
            regained, lost = result
            self._registered = True
            for nick in lost:
                self.log.warn(
                    "node {node}: {nick} was taken elsewhere while this node was cut off",
                    node=self.node, nick=nick,
                )
            for nick in regained:
                self.bus.publish(Joined(nick))

        return d.addCallback(registered)

    def cut_off(self):
        self._registered = False

    def deregister(self):
        connection = self.bus._publish_link.protocol
        if connection is None:
            return defer.succeed(None)
        keys = self.keys
        d = _call(connection.eval,
            DEREGISTER, [keys.nicks, keys.members(self.node), keys.leases], [self.node]
        )
        return d.addErrback(lambda f: self.log.failure("leaving redis", f))

    def _renew(self):
        connection = self.bus._publish_link.protocol
        if connection is None or not self._registered:
            return
        keys = self.keys
        d = _call(connection.eval,
            RENEW, [keys.leases, keys.nicks], [self.node, self._lease_ms(), keys.members_prefix]
        )

        def renewed(result):
            alive, left = result
            for nick in left:
                self.log.info("a node's lease ran out: {nick} left", nick=nick)
                self.bus.publish(Left(nick))
            if not int(alive):
                self.log.warn("node {node}: its lease ran out; claiming again", node=self.node)
                return self.register(connection)

        d.addCallback(renewed).addErrback(self._failed, "renewing the lease")

    def _failed(self, failure, doing):
        if not failure.check(txredisapi.ConnectionError):
            self.log.failure(doing, failure)

    # IPresence

    def claim(self, nick):
        try:
            connection = self._connection()
        except errors.ChatUnavailable:
            return defer.fail()
        folded = fold(nick)
        keys = self.keys
        d = _call(connection.eval,
            CLAIM, [keys.nicks, keys.members(self.node), keys.leases], [self.node, folded, nick]
        )

        def claimed(result):
            result = int(result)
            if result == 0:
                raise errors.NickTaken()
            if result < 0:
                self._registered = False
                self.register(connection).addErrback(self._failed, "renewing the lease")
                raise errors.ChatUnavailable()
            self._mine[folded] = nick

        return d.addCallbacks(claimed, self._unavailable)

    def _unavailable(self, failure):
        failure.trap(txredisapi.ConnectionError)
        raise errors.ChatUnavailable()

    def release(self, nick):
        folded = fold(nick)
        if self._mine.pop(folded, None) is None:
            return
        connection = self.bus._publish_link.protocol
        if connection is None:
            return  # register() forgets it on reconnect
        keys = self.keys
        # Fired once Redis has it (tests wait for that; the room does not).
        return _call(connection.eval,
            RELEASE, [keys.nicks, keys.members(self.node)], [self.node, folded]
        ).addErrback(self._failed, "releasing a nickname")

    def respell(self, nick):
        folded = fold(nick)
        if folded not in self._mine:
            return
        self._mine[folded] = nick
        connection = self.bus._publish_link.protocol
        if connection is None:
            return  # register() claims it again, spelled so, on reconnect
        return _call(
            connection.execute_command, "HSET", self.keys.nicks, folded, self.node + "\n" + nick
        ).addErrback(self._failed, "respelling a nickname")

    def holds(self, nick):
        try:
            connection = self._connection()
        except errors.ChatUnavailable:
            return defer.fail()
        d = _call(connection.execute_command, "HEXISTS", self.keys.nicks, fold(nick))
        return d.addCallbacks(lambda n: bool(int(n)), self._unavailable)

    def who(self):
        try:
            connection = self._connection()
        except errors.ChatUnavailable:
            return defer.fail()
        d = _call(connection.execute_command, "HVALS", self.keys.nicks)
        return d.addCallbacks(
            lambda held: sorted(value.partition("\n")[2] for value in held), self._unavailable
        )

    def where(self, nick):
        try:
            connection = self._connection()
        except errors.ChatUnavailable:
            return defer.fail()
        d = _call(connection.execute_command, "HGET", self.keys.nicks, fold(nick))
        return d.addCallbacks(
            lambda held: held.partition("\n")[0] if held else None, self._unavailable
        )
