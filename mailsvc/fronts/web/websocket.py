"""
The web front's WebSocket (C{/ws}): a room participant speaking JSON, one
object per message both ways (docs/protocol.md, "The web front").

A browser or a bot joins with C{{"type": "join", "nick": ...}} (a mail
account's name takes its password, through the shared portal), then says,
asks who is here and sends private messages; the room's events arrive as
objects with a C{type}. Every request is answered, in the order asked, with
C{ok} or C{error}, carrying the request's C{id} when it had one.

Why it is built so: autobahn parses the frames (a message split across frames
or TCP reads arrives whole, at most C{--max-line} bytes, and checks the
Origin and the handshake); what the server sends is framed here instead, once
per event however many members receive it (L{json_frame}, through
L{events.Event.render}), and written through the same send queue, flood
control and write coalescer as the line chat (L{RoomMember}). Requests that
wait for the service (a join's password, C{who}) hold the ones after them, as
the line fronts' C{respond()} does, so answers leave in order.
"""

import collections
import json
import re
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core import events
from mailsvc.fronts import reason_for
from mailsvc.fronts.admission import Admission
from mailsvc.fronts.coalesce import WriteCoalescer
from mailsvc.fronts.lines import OutputBuffer
from mailsvc.fronts.member import RoomMember
from mailsvc.interfaces import IParticipant

# Requests that may wait, not yet handled, behind one the service is working on.
MAX_WAITING = 64
# Seconds a closing connection may take to finish before it is aborted.
CLOSE_PATIENCE = 5.0

# Close codes (RFC 6455 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
POLICY = 1008


def frame(message):
    """C{message} as one WebSocket text frame from the server, JSON."""
    payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # Unmasked and uncompressed: the same bytes suit every client.
    return PreparedMessage(payload, False, False, True).payloadHybi


def _said(event):
    done = events.action(event.text)
    if done is not None:
        return {"type": "said", "nick": event.nick, "text": done, "time": event.time, "action": True}
    return {"type": "said", "nick": event.nick, "text": event.text, "time": event.time}


_MESSAGES = {
    events.Said: _said,
    events.Joined: lambda e: {"type": "joined", "nick": e.nick},
    events.Left: lambda e: {"type": "left", "nick": e.nick},
    events.Renamed: lambda e: {"type": "renamed", "nick": e.nick, "new": e.new},
    events.Private: lambda e: {
        "type": "private",
        "from": e.sender,
        "to": e.recipient,
        "text": e.text,
    },
    events.NewMail: lambda e: {
        "type": "mail",
        "from": e.sender,
        "subject": e.subject,
        "count": e.count,
    },
    events.Shutdown: lambda e: {"type": "shutdown", "seconds": e.seconds},
    events.History: lambda e: {"type": "history", "messages": [_said(s) for s in e.events]},
}


def json_frame(event):
    """A room event as this front's bytes (L{events.Event.render} caches them)."""
    return frame(_MESSAGES[type(event)](event))


# The service's errors in this front's words (the reason for the others).
WORDS = {
    errors.NickReserved: "this nickname belongs to a mail account: give its password",
    errors.BadCredentials: "wrong password for that nickname",
    errors.NotHere: lambda e: "%s is not here (mail to a mailbox needs a registered nickname)"
    % (e.nick,),
    errors.NoSuchNick: lambda e: "no such nickname or mailbox: %s" % (e.nick,),
}


def error_code(error):
    """C{NickTaken} -> C{"nick_taken"}: what a bot tests, whatever the words."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


class BadRequest(errors.MailsvcError):
    pass


def _text(request, name):
    value = request.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("%s: a non-empty string is needed" % (name,))
    return value


@implementer(IParticipant)
class WebParticipant(RoomMember):
    """
    What the room holds of one WebSocket client: its send queue, flood
    control and nickname. A small object of its own, not the protocol:
    autobahn's protocol carries about a hundred attributes, and every
    delivery read its attributes 1.5 (CPython) to 4 (PyPy) times slower
    (the room's hottest loop calls L{send} once per member per event).
    """

    format = staticmethod(json_frame)
    nick = None
    account = None

    def __init__(self, connection):
        self.connection = connection
        self.factory = connection.factory
        self.transport = connection.transport
        self.output = connection.output
        self.peer = connection.peer
        self.log = connection._log

    def close(self):
        self.connection.close(POLICY, "flooding")

    def tooFast(self, rate):
        self.connection.tooFast(rate)

    def flooded(self):
        self.connection.flooded()


class WebSocketMember(TimeoutMixin, WebSocketServerProtocol):
    """One WebSocket client; L{WebParticipant} is what the room holds of it."""

    # self.log is autobahn's (txaio's, which drops its debug lines unless
    # asked); this front's own lines go to _log.
    _log = Logger()
    peerHost = None
    ready = False
    output = None
    member = None
    _lost = False
    _admitted = False
    _closing = False
    _busy = False
    _abortLater = None

    def __init__(self):
        super().__init__()
        self._waiting = collections.deque()
        self._whenClosed = []

    @property
    def service(self):
        return self.factory.service

    # The connection

    def connectionMade(self):
        address = self.transport.getPeer()
        self.peerHost = getattr(address, "host", None)
        self.callLater = self.factory.clock.callLater
        super().connectionMade()
        # The chat log's form of it, as the line fronts give it.
        port = getattr(address, "port", None)
        self.peer = "%s:%s" % (self.peerHost, port) if self.peerHost else str(address)

    def onConnect(self, request):
        if not self.factory.origin_allowed(
            request.headers.get("origin"), request.headers.get("host")
        ):
            self._log.info(
                "refused a WebSocket from {peer}: origin {origin!r} not allowed",
                peer=self.peer,
                origin=request.headers.get("origin"),
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        refusal = self.factory.admission.admit(self, self.peerHost)
        if refusal is not None:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, refusal)
        self._admitted = True
        return None

    def onOpen(self):
        self.output = OutputBuffer(self)
        # The transport was the HTTP channel's, which registered itself.
        try:
            self.transport.unregisterProducer()
        except RuntimeError:  # none was (a test's transport says so)
            pass
        self.transport.registerProducer(self.output, True)
        self.member = WebParticipant(self)
        self.member.startFloodControl()
        self.setTimeout(self.factory.nick_timeout)
        self.sendMessage_({"type": "hello", "server": "mailsvc", "version": self.factory.version})

    def connectionLost(self, reason):
        self._lost = True
        if self.member is not None:
            self.factory.writes.forget(self.member)
        self.setTimeout(None)
        if self._abortLater is not None and self._abortLater.active():
            self._abortLater.cancel()
        if self.ready:
            self.service.leave_chat(self.member)
        if self._admitted:
            self.factory.admission.release(self, self.peerHost)
        self._waiting.clear()
        if self.output is not None:
            self.output.detach()
        super().connectionLost(reason)
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)

    def hold(self, reason):
        # OutputBuffer's: the send queue bound (RoomMember.send) does the work.
        pass

    def release(self, reason):
        pass

    def close(self, code=NORMAL, reason=None):
        """Send what waits, then the close frame; abort it if the closing
        handshake has not ended after L{CLOSE_PATIENCE} seconds."""
        if self._lost or self._closing:
            return
        self._closing = True
        if self.member is not None:
            self.factory.writes.flush(self.member)
        # sendClose() allows applications 1000 and 3000-4999 only; a server
        # may say 1001 (going away) and 1008 (policy) too (RFC 6455 7.4.1).
        self.sendCloseFrame(code, reason.encode("utf-8") if reason else None, isReply=False)
        self._abortLater = self.factory.clock.callLater(
            CLOSE_PATIENCE, self.transport.abortConnection
        )

    def whenClosed(self):
        if self._lost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._whenClosed.append(d)
        return d

    def timeoutConnection(self):
        self.sendError(None, errors.MailsvcError("idle timeout"), "idle_timeout")
        self.close(POLICY, "idle timeout")

    # What the room and the requests send

    def receive(self, event):
        if self.member is not None:  # None: admitted, not open yet
            self.member.send(event.render(json_frame))

    def sendMessage_(self, message):
        """Send C{message} (a dict) through the send queue."""
        if not self._lost:
            self.member.send(frame(message))

    def sendError(self, request_id, error, code=None):
        message = {"type": "error", "error": code or error_code(error)}
        message["reason"] = reason_for(error, WORDS)
        if request_id is not None:
            message["id"] = request_id
        self.sendMessage_(message)

    def tooFast(self, rate):
        self.sendError(
            None,
            errors.MailsvcError(
                "you are sending too fast; slow down (at most %g message%s a second)"
                % (rate, "" if rate == 1 else "s")
            ),
            "too_fast",
        )

    def flooded(self):
        self.sendError(None, errors.MailsvcError("flooding: disconnected"), "flooding")
        self.close(POLICY, "flooding")

    # Requests

    def onMessage(self, payload, isBinary):
        if self._closing:
            return
        if self.ready:
            self.resetTimeout()
        if self._busy:
            if len(self._waiting) >= MAX_WAITING:
                self.sendError(None, errors.MailsvcError("too many requests waiting"), "flooding")
                self.close(POLICY, "too many requests waiting")
                return
            self._waiting.append((payload, isBinary))
            return
        self._handle(payload, isBinary)

    def _handle(self, payload, isBinary):
        request_id = None
        try:
            if isBinary:
                raise BadRequest("send text messages, each a JSON object")
            try:
                request = json.loads(payload.decode("utf-8"))
            except ValueError:
                raise BadRequest("not JSON: send one JSON object a message")
            if not isinstance(request, dict):
                raise BadRequest("send one JSON object a message")
            request_id = request.get("id")
            kind = request.get("type")
            handler = getattr(self, "do_" + kind, None) if isinstance(kind, str) else None
            if handler is None:
                raise BadRequest("unknown type %r: join, say, msg, who or ping" % (kind,))
            if self.ready and not self.member.withinRate():
                return
            result = handler(request)
        except Exception:
            self._answer(Failure(), request_id)
            return
        if not isinstance(result, defer.Deferred):
            self._answer(result, request_id)
            return
        self._busy = True
        result.addBoth(self._answer, request_id)
        result.addBoth(lambda _: self._next())

    def _next(self):
        self._busy = False
        while self._waiting and not self._busy and not self._lost:
            self._handle(*self._waiting.popleft())

    def _answer(self, result, request_id):
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, errors.MailsvcError):
                self._log.failure("web request failed", result)
                error = errors.MailsvcError("internal error")
            self.sendError(request_id, error)
            return
        answer = {"type": "ok"}
        if request_id is not None:
            answer["id"] = request_id
        answer.update(result or {})
        self.sendMessage_(answer)
        after = getattr(result, "after", None)
        if after is not None:
            after()

    def _mustBeReady(self):
        if not self.ready:
            raise BadRequest("join first: {\"type\": \"join\", \"nick\": ...}")

    def do_ping(self, request):
        return None

    def do_join(self, request):
        if self.ready or self.member.nick is not None:
            raise BadRequest("already joined as %s" % (self.member.nick,))
        nick = _text(request, "nick").strip()
        password = request.get("password")
        if password is not None and not isinstance(password, str):
            raise BadRequest("password: a string")

        def joined(history):
            if self._lost:
                # Gone while its password was being checked: it must not
                # stay in the room with nobody behind it.
                self.service.leave_chat(self.member)
                return None
            self.ready = True
            self.setTimeout(self.factory.idle_timeout)
            member = self.member
            answer = _Answer(nick=member.nick, registered=member.account is not None)
            if history.events:
                answer.after = lambda: self.receive(history)
            return answer

        d = self.service.join_chat(self.member, nick, password or None, self.peerHost)
        return d.addCallback(joined)

    def do_say(self, request):
        self._mustBeReady()
        text = _text(request, "text")
        self.service.say(self.member, text)
        return None

    def do_who(self, request):
        self._mustBeReady()
        return self.service.room.who().addCallback(lambda nicks: {"nicks": nicks})

    def do_msg(self, request):
        self._mustBeReady()
        nick, text = _text(request, "to").strip(), _text(request, "text")

        def sent(message_id):
            return {"mailed": message_id is not None}

        return self.service.chat_private(self.member, nick, text).addCallback(sent)


class _Answer(dict):
    """An answer's fields, and what to send right after it (C{after})."""

    after = None


class WebSocketMembers(WebSocketServerFactory):
    """
    Builds L{WebSocketMember}s, holds their limits, and checks the Origin:
    the page's own (the request's Host) always, others if C{--web-origin}
    names them (C{*}: any). A client that sends no Origin is not a browser
    and is let in: the check keeps other sites' pages out, not bots.
    """

    protocol = WebSocketMember
    log = Logger()

    def __init__(
        self,
        service,
        clock,
        version,
        origins=(),
        max_message=8192,
        max_sendq=1024 * 1024,
        nick_timeout=30,
        idle_timeout=3600,
        flood_rate=5.0,
        flood_burst=20,
        max_connections=None,
        max_per_peer=None,
    ):
        super().__init__()
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            openHandshakeTimeout=nick_timeout,
            closeHandshakeTimeout=CLOSE_PATIENCE,
            # A client that breaks the rules (a message too long) is told why
            # with a close frame, not only dropped.
            failByDrop=False,
        )
        self.service = service
        self.clock = clock
        self.version = version
        self.origins = {o.lower().rstrip("/") for o in origins}
        self.writes = WriteCoalescer(clock)
        self.max_sendq = max_sendq
        self.sendq_drops = 0
        self.nick_timeout = nick_timeout
        self.idle_timeout = idle_timeout
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst
        self.admission = Admission(max_connections, max_per_peer)
        self.connections = self.admission.connections

    def origin_allowed(self, origin, host):
        if origin is None or "*" in self.origins:
            return True
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == (host or "").lower()

    def announce_shutdown(self, event):
        for connection in list(self.connections):
            connection.receive(event)

    def closeAll(self, clock, patience=CLOSE_PATIENCE):
        """Close every connection; fire when all have (each aborts itself
        after its patience)."""
        connections = list(self.connections)
        closed = defer.gatherResults([c.whenClosed() for c in connections])
        for connection in connections:
            connection.close(GOING_AWAY, "server shutting down")
        return closed
