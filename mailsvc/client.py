"""
The Twisted client library for both ports.

L{MailClient} has one method per mail command, each returning a Deferred that
fires with the parsed reply or fails with L{RequestFailed} carrying the server's
reason. Calls may be made back to back without waiting: the requests are sent
at once (pipelined) and the Deferreds fire in order.

L{ChatClient} joins the chat and hands what arrives to a callback, or to an
async iterator (L{ChatClient.events}).
"""

import collections
import hashlib
import re
from dataclasses import dataclass

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer


class RequestFailed(Exception):
    """The server refused a request; C{reason} is what it said after C{KO}."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class NotLoggedIn(RequestFailed):
    """The request needs a session, and there is none (or it expired)."""


LOGIN_FIRST = "You should log in first."

# The first line of every reply of the mail port.
_REPLY = re.compile(r"(OK|KO|COUNTED|BYE)( |\Z)")

# How the server's refusals begin when the session is missing or gone.
_SESSION_GONE = (
    "you should log in first",
    "you are not logged in",
    "unknown or expired session",
    "session expired",
)


class ChecksumMismatch(RequestFailed):
    """Every send of a request was answered C{KO checksum mismatch}."""


class NickRefused(RequestFailed):
    """The chat answered RETRY to every nickname offered."""


class NoReply(Exception):
    """
    The server sent no reply at all: it closed the connection first (a TLS
    port, when spoken to in plain text, does), or, with C{seconds}, the chat
    port's greeting did not come in time.

    @ivar received: the bytes that came before, not a line (at most the first 64).
    @ivar seconds: how long the greeting was awaited, or None if the server closed.
    """

    def __init__(self, received=b"", seconds=None):
        self.received = received
        self.seconds = seconds
        if seconds is not None:
            text = "no greeting in %s seconds" % (seconds,)
        else:
            text = "the server closed the connection before its first reply"
        if received:
            text += " (it sent %r)" % (received,)
        super().__init__(text)

    @property
    def tls(self):
        """What came looks like TLS: a record (alert or handshake) begins so."""
        return self.received[:1] in (b"\x15", b"\x16")


class UnexpectedReply(Exception):
    """A line that this port never sends: the other end is not this mailsvc
    port (another service, or the other mailsvc port). C{line} is that line."""

    def __init__(self, line):
        super().__init__("not a mailsvc reply: %r" % (line[:80],))
        self.line = line


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    date: str
    subject: str
    body: str = ""


def _parse_message(lines):
    """Headers, a blank line, the body: as GETMSG and READ send them."""
    blank = lines.index("")
    fields = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                  for line in lines[:blank])
    return Message(
        id=int(fields["Id"]),
        sender=fields["From"],
        date=fields["Date"],
        subject=fields.get("Subject", ""),
        body="\n".join(lines[blank + 1 :]),
    )


def _parse_list(lines):
    messages = []
    for row in lines:
        message_id, sender, date, subject = (row.split(" ", 3) + [""])[:4]
        messages.append(Message(int(message_id), sender, date, subject))
    return messages


class _Request:
    def __init__(self, data, parse, multiline):
        self.data = data
        self.parse = parse
        self.multiline = multiline
        self.deferred = defer.Deferred()
        self.sends = 0
        self.status = None
        self.lines = None


@implementer(IHandshakeListener)
class _LineClient(LineReceiver):
    # LF ends a line; a CR before it is removed, as the server does.
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    # The first bytes received (to tell TLS or another service from a silent
    # close), and how many lines: until one, there has been no reply.
    _received = b""
    _linesReceived = 0

    def connectionMade(self):
        # Fires once the connection can be trusted: at once over plain TCP,
        # after the TLS handshake (and the certificate checks) otherwise.
        self.secured = defer.Deferred()
        if not ISSLTransport.providedBy(self.transport):
            self.secured.callback(self)

    def handshakeCompleted(self):
        # Twisted 25.5 (the last for Python 3.9) checks the certificate's names
        # after the handshake and, when they are wrong, aborts the connection and
        # still calls this: then nothing is secured, and connectionLost says why.
        if not self.transport.disconnecting:
            self.secured.callback(self)

    def connectionLost(self, reason):
        if not self.secured.called:
            self.secured.errback(reason)

    def dataReceived(self, data):
        if len(self._received) < 64:
            self._received += data[: 64 - len(self._received)]
        super().dataReceived(data)

    def lineReceived(self, line):
        self._linesReceived += 1
        if line.endswith(b"\r"):
            line = line[:-1]
        self.textReceived(line.decode("utf-8", "replace"))

    def sendText(self, *lines):
        self.transport.write(b"".join(l.encode("utf-8") + b"\r\n" for l in lines))


class MailClient(_LineClient):
    """
    A client of the mail port.

    @param checksums: end every request with C{#<sha1>}, and send a request
        again (up to 3 sends in all) while the server answers C{KO checksum
        mismatch}.
    """

    MAX_SENDS = 3

    _lost = None

    def __init__(self, checksums=False):
        self.checksums = checksums
        self.cookie = None
        self._pending = collections.deque()
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._lost = reason
        if not self._linesReceived:
            # Not a word: a TLS port spoken to in plain text, or not a mail port.
            reason = NoReply(self._received)
        pending, self._pending = self._pending, collections.deque()
        for request in pending:
            request.deferred.errback(reason)
        self.closed.callback(None)

    # Sending

    def _line(self, line):
        if self.checksums:
            line = "%s#%s" % (line, hashlib.sha1(line.encode("utf-8")).hexdigest())
        return line

    def _request(self, line, parse=None, multiline=False, body=None):
        if "\n" in line or "\r" in line:
            # It would be two requests, and every later reply would be off by one.
            # (Not quoted in the error: the line may hold a password.)
            return defer.fail(ValueError("a request is one line: no CR or LF in it"))
        if self._lost is not None:
            return defer.fail(self._lost)
        data = [self._line(line)]
        if body is not None:
            lines = body.replace("\r\n", "\n").split("\n")
            data += ["." + l if l.startswith(".") else l for l in lines]
            data.append(".")
        request = _Request(data, parse, multiline)
        self._send(request)
        return request.deferred

    def _send(self, request):
        request.sends += 1
        self._pending.append(request)
        self.sendText(*request.data)

    # Receiving

    def textReceived(self, line):
        if not self._pending:
            return
        request = self._pending[0]
        if request.lines is not None:
            if line == ".":
                self._pending.popleft()
                self._done(request, request.status, request.lines)
            else:
                request.lines.append(line[1:] if line.startswith(".") else line)
            return
        if not (_REPLY.match(line) or line == LOGIN_FIRST):
            # Every later reply would be misread: this is not a mail port.
            self._pending.popleft()
            request.deferred.errback(UnexpectedReply(line))
            self.transport.loseConnection()
            return
        if request.multiline and line.startswith("OK"):
            request.status, request.lines = line, []
            return
        self._pending.popleft()
        if line == "KO checksum mismatch" and self.checksums:
            if request.sends < self.MAX_SENDS:
                self._send(request)
            else:
                request.deferred.errback(
                    ChecksumMismatch("checksum mismatch, %d sends" % request.sends)
                )
            return
        self._done(request, line, None)

    def _done(self, request, status, lines):
        if status.startswith("KO"):
            reason = status[3:]
            error = NotLoggedIn if reason.startswith(_SESSION_GONE) else RequestFailed
            request.deferred.errback(error(reason))
        elif status == LOGIN_FIRST:
            request.deferred.errback(NotLoggedIn(status))
        else:
            try:
                result = request.parse(status, lines) if request.parse else None
            except Exception:
                request.deferred.errback(RequestFailed("unexpected reply: %r" % status))
            else:
                request.deferred.callback(result)

    # Commands

    def register(self, user, password):
        return self._request("REGISTER %s %s" % (user, password), self._parse_cookie)

    def login(self, user, password):
        return self._request("LOGIN %s %s" % (user, password), self._parse_cookie)

    def _parse_cookie(self, status, _):
        self.cookie = status.split()[1]
        return self.cookie

    def logout(self):
        def loggedOut(_):
            self.cookie = None

        return self._request("LOGOUT").addCallback(loggedOut)

    def message(self, text):
        return self._request("MESSAGE " + text)

    def store(self, user):
        return self._request("STORE " + user)

    def count(self):
        return self._request("COUNT", lambda status, _: int(status.split()[1]))

    def getmsg(self):
        return self._request("GETMSG", lambda _, lines: _parse_message(lines), True)

    def delmsg(self):
        return self._request("DELMSG")

    def dump(self):
        return self._request("DUMP")

    def send(self, user, subject, body):
        """Send mail; fire with its message id."""
        return self._request(
            "SEND %s %s" % (user, subject),
            lambda status, _: int(status.split()[1]),
            body=body,
        )

    def list(self, sender=None):
        line = "LIST" if sender is None else "LIST FROM " + sender
        return self._request(line, lambda _, lines: _parse_list(lines), True)

    def read(self, message_id):
        return self._request(
            "READ %d" % (message_id,), lambda _, lines: _parse_message(lines), True
        )

    def delete(self, message_id):
        return self._request("DELETE %d" % (message_id,), _deleted)

    def delete_subject(self, subject):
        return self._request("DELETE SUBJECT " + subject, _deleted)

    def help(self):
        return self._request("HELP", lambda _, lines: lines, True)

    def quit(self):
        """Say QUIT; fire once the server has closed the connection."""
        d = self._request("QUIT")
        return d.addCallback(lambda _: self.closed)


def _deleted(status, _):
    return int(status.split()[-1])


@dataclass(frozen=True)
class ChatEvent:
    """
    One line from the chat. C{kind} is one of: C{message} (C{nick} said
    C{text}), C{private}, C{history}, C{notice} (C{text} without its C{* }),
    C{error}, C{shutdown} (C{seconds} until the server stops).
    """

    kind: str
    text: str
    nick: str = None
    seconds: int = None


_SHUTDOWN = re.compile(r"Server will shut down in (\d+) seconds\Z")
_PRIVATE = re.compile(r"\*([A-Za-z0-9_-]+)\* (.*)\Z", re.DOTALL)
_MESSAGE = re.compile(r"([A-Za-z0-9_-]+): (.*)\Z", re.DOTALL)


def parse_chat_line(line):
    """The L{ChatEvent} that a line from the chat port stands for."""
    match = _SHUTDOWN.match(line)
    if match:
        return ChatEvent("shutdown", line, seconds=int(match.group(1)))
    if line.startswith("* error: "):
        return ChatEvent("error", line[len("* error: ") :])
    if line.startswith("* "):
        return ChatEvent("notice", line[2:])
    if line.startswith("[history] "):
        match = _MESSAGE.match(line[len("[history] ") :])
        if match:
            return ChatEvent("history", match.group(2), match.group(1))
    match = _PRIVATE.match(line)
    if match:
        return ChatEvent("private", match.group(2), match.group(1))
    match = _MESSAGE.match(line)
    if match:
        return ChatEvent("message", match.group(2), match.group(1))
    return ChatEvent("notice", line)


class ChatClient(_LineClient):
    """
    A chat participant.

    @param nick: the nickname to ask for; C{password} too for a reserved one.
    @param on_retry: called with the server's reason when it answers RETRY;
        returns the next nickname to try (or a Deferred of it), or None to
        give up (L{ready} then fails with L{NickRefused}). By default, give up.
    @param on_event: called with each L{ChatEvent} after READY. Without it,
        events wait in L{events}.
    @param greeting_timeout: seconds to wait for the server's HELLO; then
        L{ready} fails with L{NoReply} and the connection is closed. By
        default, wait as long as the server keeps the connection.
    @param clock: for C{greeting_timeout}; the reactor by default.
    """

    _refusal = None
    _greetingCall = None

    def __init__(
        self,
        nick,
        password=None,
        on_retry=None,
        on_event=None,
        greeting_timeout=None,
        clock=None,
    ):
        self.nick = nick
        self.password = password
        self.on_retry = on_retry or (lambda reason: None)
        self.on_event = on_event
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self._greeted = False
        self._is_ready = False
        self._queue = defer.DeferredQueue()
        self._who = collections.deque()
        self._lost = None
        self.greeting_timeout = greeting_timeout
        self.clock = clock

    def connectionMade(self):
        super().connectionMade()
        if self.greeting_timeout is not None:
            if self.clock is None:
                from twisted.internet import reactor as clock
            else:
                clock = self.clock
            self._greetingCall = clock.callLater(self.greeting_timeout, self._noGreeting)

    def _noGreeting(self):
        self._notGreeted(NoReply(self._received, self.greeting_timeout))

    def _notGreeted(self, error):
        if not self.ready.called:
            self.ready.errback(error)
        self.transport.loseConnection()

    def _stopWaitingForGreeting(self):
        if self._greetingCall is not None and self._greetingCall.active():
            self._greetingCall.cancel()

    def textReceived(self, line):
        if not self._greeted:
            if line == "HELLO":
                self._greeted = True
                self._stopWaitingForGreeting()
                self._offer(self.nick)
            elif line.startswith("* error: "):
                # Refused before the greeting (too many connections): it closes.
                self._refusal = line[len("* error: ") :]
            elif not self.transport.disconnecting:
                self._stopWaitingForGreeting()
                self._notGreeted(UnexpectedReply(line))
        elif not self._is_ready:
            if line == "READY":
                self._is_ready = True
                self.ready.callback(self)
            elif line.startswith("RETRY"):
                d = defer.maybeDeferred(self.on_retry, line[len("RETRY ") :])
                d.addCallback(self._retry, line[len("RETRY ") :])
            elif _SHUTDOWN.match(line):
                self._event(parse_chat_line(line))
        else:
            event = parse_chat_line(line)
            if event.kind == "notice" and event.text.startswith("here: ") and self._who:
                self._who.popleft().callback(event.text[len("here: ") :].split(", "))
            else:
                self._event(event)

    def _offer(self, nick):
        for word in (nick, self.password or ""):
            if "\n" in word or "\r" in word:
                self.ready.errback(ValueError("a nickname or password is one line"))
                self.transport.loseConnection()
                return
        self.nick = nick
        self.sendText("NICK %s %s" % (nick, self.password) if self.password else "NICK " + nick)

    def _retry(self, nick, reason):
        if nick is None:
            self.ready.errback(NickRefused(reason))
            self.transport.loseConnection()
        else:
            self._offer(nick)

    def _event(self, event):
        if self.on_event is not None:
            self.on_event(event)
        else:
            self._queue.put(event)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._stopWaitingForGreeting()
        self._lost = reason
        if not self.ready.called:
            if self._refusal is not None:
                self.ready.errback(RequestFailed(self._refusal))
            elif not self._linesReceived:
                self.ready.errback(NoReply(self._received))
            else:
                self.ready.errback(reason)
        waiting, self._who = self._who, collections.deque()
        for d in waiting:
            d.errback(reason)
        self._queue.put(None)
        self.closed.callback(None)

    # Speaking

    def say(self, text):
        """Send C{text} to the room, even if it begins with C{/}."""
        self._send_line("/" + text if text.startswith("/") else text)

    def me(self, text):
        """An action: the others see C{* <nick> <text>} (IRC users a CTCP ACTION)."""
        self._send_line("/me " + text)

    def msg(self, nick, text):
        """A private message (or, for a registered user who is not here, mail)."""
        self._send_line("/msg %s %s" % (nick, text))

    def _send_line(self, line):
        if "\n" in line or "\r" in line:
            # It would be two lines, and the second could be a command.
            raise ValueError("a chat line is one line: %r" % (line,))
        self.sendText(line)

    def who(self):
        """Fire with the nicknames in the room."""
        if self._lost is not None:
            return defer.fail(self._lost)
        d = defer.Deferred()
        self._who.append(d)
        self.sendText("/who")
        return d

    def bye(self):
        """Leave; fire when the server has closed the connection."""
        self.sendText("BYE")
        return self.closed

    def events(self):
        """An async iterator of L{ChatEvent}s, ending when the connection does."""
        return _Events(self._queue)


class _Events:
    def __init__(self, queue):
        self._queue = queue

    def __aiter__(self):
        return self

    async def __anext__(self):
        event = await self._queue.get()
        if event is None:
            self._queue.put(None)
            raise StopAsyncIteration
        return event


def connect_mail(reactor, description, checksums=False):
    """
    Connect to a mail port (C{tcp:host:port}, C{tls:host:port:trustRoots=...},
    C{unix:...}); fire with a L{MailClient}, over TLS only once the server's
    certificate has been checked.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    d = endpoint.connect(protocol.Factory.forProtocol(lambda: MailClient(checksums)))
    return d.addCallback(lambda client: client.secured)


def connect_chat(reactor, description, nick, **options):
    """Connect to a chat port and join; fire with the L{ChatClient} once READY."""
    endpoint = endpoints.clientFromString(reactor, description)
    options.setdefault("clock", reactor)
    factory = protocol.Factory.forProtocol(lambda: ChatClient(nick, **options))
    return endpoint.connect(factory).addCallback(lambda client: client.ready)

