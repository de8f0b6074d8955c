"""
The mail command front (C{--mail-port}, alias C{--port}): parse a request
line, call the shared service, reply.

Replies keep request order (see L{mailsvc.fronts.lines.TextLineProtocol.respond}), and a
client that half-closes its side still gets every reply before the server closes.

A SEND's body is read to its "." line even when the SEND line is bad, so a
body line is never run as a command. Half-close (C{IHalfCloseableProtocol})
is what lets C{printf ... | nc -N} get every reply; shutdown reuses it: the
request in progress is answered, the ones waiting behind it are dropped.
The service's errors become C{KO <reason>}, in this front's words where
L{WORDS} has some (they name this protocol's commands).
"""

import collections
import hashlib
import re
import time

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.names import COOKIE, MAX_SUBJECT
from mailsvc.fronts import reason_for
from mailsvc.fronts.lines import (
    TextLineFactory,
    TextLineProtocol,
    discard_unread,
    line_limits,
    unread,
)
from mailsvc.fronts.registry import Front
from mailsvc.options import positive_int

CHECKSUM = re.compile(r"#([0-9A-Fa-f]{40})\Z")
LOGIN_FIRST = "You should log in first."
MAX_MESSAGE_ID = 2**63 - 1  # SQLite's largest integer

HELP = [
    "REGISTER <user> <password>       create an account and log in",
    "LOGIN <user> <password>          log in; replies OK <cookie>",
    "LOGOUT [<cookie>]                end the session (LOGOFF too)",
    "MESSAGE <text> [<cookie>]        stage a message",
    "STORE <user> [<cookie>]          deliver the most recent staged message",
    "COUNT [<cookie>]                 how many messages are in your mailbox",
    "GETMSG [<cookie>]                show the oldest message",
    "DELMSG [<cookie>]                delete the oldest message",
    "SEND <user> <subject...>         then the body lines, then a line with .",
    "LIST [FROM <sender>]             one line a message: id sender date subject",
    "READ <id>                        show a message",
    "DELETE <id>                      delete a message",
    "DELETE SUBJECT <subject...>      delete every message with that subject",
    "DUMP                             log a summary of the server's state",
    "HELP                             this list",
    "QUIT                             close the connection",
    "A session's cookie may end any request; a connection that logged in may",
    "leave it out. A request may end with #<sha1 hex of what precedes the #>.",
]


# The service's errors in this front's words (the reason for the others).
WORDS = {
    errors.NothingStaged: "no staged message: send MESSAGE <text> first",
    errors.TooManyStaged: lambda e: "too many staged messages: at most %d, STORE some first"
    % (e.limit,),
}


class Usage(errors.MailsvcError):
    def __init__(self, syntax):
        super().__init__("usage: " + syntax)


def format_date(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def message_lines(message):
    return [
        "OK message %d" % (message.id,),
        "Id: %d" % (message.id,),
        "From: " + message.sender,
        "Date: " + format_date(message.date),
        "Subject: " + message.subject,
        "",
    ] + message.body.split("\n")


def header_line(message):
    """A message's line in a C{LIST} reply."""
    return "%d %s %s %s" % (message.id, message.sender, format_date(message.date), message.subject)


def _message_id(word, syntax):
    if not word.isdigit() or not word.isascii():
        raise Usage(syntax)
    # Compare lengths first: int() refuses strings of thousands of digits.
    digits = word.lstrip("0") or "0"
    if len(digits) > len(str(MAX_MESSAGE_ID)) or int(digits) > MAX_MESSAGE_ID:
        raise errors.NoSuchMessage("no such message: %s" % (word[:40],))
    return int(digits)


class _Body:
    """
    A SEND whose body is still arriving: counted line by line, kept (when
    C{keep}) as one growing UTF-8 buffer, never as a string per line: a body
    of 2-byte lines costs its size, not 24 times it. A body that cannot be
    delivered whatever it holds (no session to send it from, a bad request
    line) is only counted, so a stranger's body costs nothing to hold.
    """

    __slots__ = ("request", "size", "max_size", "error", "_kept")

    def __init__(self, request, max_size, keep=True):
        self.request = request
        self.size = 0
        self.max_size = max_size
        self.error = None
        self._kept = bytearray() if keep else None

    def add(self, line):
        data = line.encode("utf-8")
        self.size += len(data) + 1
        if self.size > self.max_size:
            self.fail(errors.TooLarge("message too large: at most %d bytes" % self.max_size))
        elif self._kept is not None:
            if self.size > len(data) + 1:
                self._kept += b"\n"
            self._kept += data

    def fail(self, error):
        if self.error is None:
            self.error = error
            self._kept = None

    def text(self):
        """The body's lines joined by LF ("" if it was not kept)."""
        return "" if self._kept is None else self._kept.decode("utf-8")


@implementer(IHalfCloseableProtocol)
class MailProtocol(TextLineProtocol):
    # The session this connection logged in to, used when a request names none.
    cookie = None
    _body = None
    _inputEnded = False
    _verb = "other"

    @property
    def service(self):
        return self.factory.service

    # Line handling

    def textReceived(self, text):
        if self._body is not None:
            self._bodyLine(text)
        else:
            self.respond(self._request, text)

    def undecodableLine(self):
        if self._body is not None:
            self._body.fail(errors.MailsvcError("message is not valid UTF-8"))
        else:
            self.sendText("KO request is not valid UTF-8")

    def lineTooLong(self):
        reason = "line too long: at most %d bytes" % (self.LINE_LIMIT,)
        if self._body is not None:
            self._body.fail(errors.MailsvcError(reason))
        else:
            self.sendText("KO " + reason)

    def refusal(self, reason):
        return "KO " + reason

    def reply(self, reply):
        self._count("ok")
        if reply is None:
            return
        if isinstance(reply, str):
            self.sendText(reply)
        else:
            first, *content = reply
            self.sendText(
                first,
                *("." + line if line.startswith(".") else line for line in content),
                ".",
            )

    def _count(self, result):
        if self._verb is not None:
            self.factory.commands[self._verb, result] += 1

    def refuse(self, failure):
        self._count("ko")
        if failure.check(errors.MailsvcError):
            self.sendText("KO " + reason_for(failure.value, WORDS))
        else:
            self.log.failure("request failed", failure)
            self.sendText("KO internal error")

    def connectionLost(self, reason):
        # A body still arriving dies with its connection.
        self._body = None
        super().connectionLost(reason)

    # Half-close: netcat at the end of its input still gets every reply.

    def readConnectionLost(self):
        self._inputEnded = True
        self._closeIfInputDone()

    def writeConnectionLost(self):
        self.close()

    def requestsDone(self):
        self._closeIfInputDone()

    def shutdown(self):
        # Finish the request in progress, then close.
        self._inputEnded = True
        discard_unread(self)
        self._closeIfInputDone()

    def _closeIfInputDone(self):
        if not self._inputEnded or self.paused:
            return
        if unread(self):
            # A last request with no newline after it.
            self.dataReceived(self.delimiter)
            if self.paused:
                return
        self.close()

    # Requests

    def _request(self, line):
        match = CHECKSUM.search(line) if "#" in line else None
        if match:
            content = line[: match.start()]
            intact = (
                hashlib.sha1(content.encode("utf-8")).hexdigest()
                == match.group(1).lower()
            )
        else:
            content, intact = line, True
        verb, rest = (content.split(None, 1) + ["", ""])[:2]
        verb = verb.upper()
        rest = rest.strip()
        # Counted by verb when answered (SEND once its body has ended); a
        # verb that is not one is "other", so that clients cannot add label
        # values without bound.
        self._verb = verb if hasattr(self, "do_" + verb) else "other"
        if verb == "SEND":
            self._verb = None
            # The body follows whatever we think of this line: read it all,
            # so that no body line is ever run as a command. Keep it only if
            # it may be delivered: without a session (none on the connection,
            # none ending the line) it is refused at its end, so it is only
            # counted until then.
            self._body = _Body(rest, self.factory.max_body, keep=self._deliverable(rest))
            if not intact:
                self._body.fail(errors.MailsvcError("checksum mismatch"))
            return None
        if not intact:
            raise errors.MailsvcError("checksum mismatch")
        if not verb:
            raise errors.MailsvcError("empty request, try HELP")
        command = getattr(self, "do_" + verb, None)
        if command is None:
            raise errors.MailsvcError("unknown command, try HELP")
        return command(rest)

    def _session(self, rest):
        """Split a request's arguments from the cookie that may end them."""
        words = rest.rsplit(None, 1)
        if words and COOKIE.match(words[-1]):
            return (words[0] if len(words) == 2 else ""), words[-1]
        return rest, self.cookie

    def _bind(self, cookie):
        self.cookie = cookie
        return "OK " + cookie

    def do_REGISTER(self, rest):
        name, password = _credentials(rest, "REGISTER <user> <password>")
        return self.service.register(name, password, self.peerHost).addCallback(self._bind)

    def do_LOGIN(self, rest):
        name, password = _credentials(rest, "LOGIN <user> <password>")
        d = self.service.login(name, password, self.peerHost)
        return d.addCallback(self._bind)

    def do_LOGOUT(self, rest):
        extra, cookie = self._session(rest)
        if extra:
            raise Usage("LOGOUT [<cookie>]")
        if cookie is None:
            raise errors.NotLoggedIn("you are not logged in")

        def loggedOut(_):
            if cookie == self.cookie:
                self.cookie = None
            return "OK"

        return self.service.logout(cookie).addCallback(loggedOut)

    do_LOGOFF = do_LOGOUT

    def do_MESSAGE(self, rest):
        text, cookie = self._session(rest)
        if not text:
            raise Usage("MESSAGE <text> [<cookie>]")

        def notLoggedIn(failure):
            failure.trap(errors.NotLoggedIn)
            return LOGIN_FIRST

        d = self.service.stage(cookie, text)
        return d.addCallbacks(lambda _: "OK", notLoggedIn)

    def do_STORE(self, rest):
        recipient, cookie = self._session(rest)
        if not recipient or " " in recipient:
            raise Usage("STORE <user> [<cookie>]")
        return self.service.store(cookie, recipient).addCallback(lambda _: "OK")

    def do_COUNT(self, rest):
        cookie = self._cookieOnly(rest, "COUNT [<cookie>]")
        return self.service.count(cookie).addCallback(lambda n: "COUNTED %d" % (n,))

    def do_GETMSG(self, rest):
        cookie = self._cookieOnly(rest, "GETMSG [<cookie>]")
        return self.service.read(cookie).addCallback(message_lines)

    def do_DELMSG(self, rest):
        cookie = self._cookieOnly(rest, "DELMSG [<cookie>]")
        return self.service.delete(cookie).addCallback(lambda _: "OK")

    def _cookieOnly(self, rest, syntax):
        extra, cookie = self._session(rest)
        if extra:
            raise Usage(syntax)
        return cookie

    def do_LIST(self, rest):
        rest, cookie = self._session(rest)
        words = rest.split()
        if not words:
            sender = None
        elif len(words) == 2 and words[0].upper() == "FROM":
            sender = words[1]
        else:
            raise Usage("LIST [FROM <sender>]")
        return self.service.listing(cookie, sender).addCallback(self._stream)

    @defer.inlineCallbacks
    def _stream(self, listing):
        """
        Send a listing as storage yields it, a page at a time; after each
        page, while the connection's output is full (a client that does not
        read), wait before reading the next. The connection stays held until
        the final "." is queued, so the replies after it keep their order.
        """
        self.sendText("OK %d messages" % (listing.count,))
        try:
            while not self._connectionLost:
                page = yield listing.next_page()
                if not page or self._connectionLost:
                    break
                self.sendText(*(header_line(m) for m in page))
                # Into the transport now, so that it says whether it is full.
                self.factory.writes.flush(self)
                yield self.output.whenWritable()
        except Exception:
            # Part of the reply is out: it cannot end in a KO. Cut it short.
            failure = Failure()
            if failure.check(errors.MailsvcError):
                self.log.warn(
                    "LIST to {peer} cut short: {reason}", peer=self.peerHost, reason=failure.value
                )
            else:
                self.log.failure("LIST to {peer} failed", failure, peer=self.peerHost)
            self.close()
            return None
        if not self._connectionLost:
            self.sendText(".")
        return None

    def do_READ(self, rest):
        rest, cookie = self._session(rest)
        message_id = _message_id(rest, "READ <id>")
        return self.service.read(cookie, message_id).addCallback(message_lines)

    def do_DELETE(self, rest):
        rest, cookie = self._session(rest)
        keyword, _, subject = rest.partition(" ")
        if keyword.upper() == "SUBJECT" and subject.strip():
            d = self.service.delete_subject(cookie, subject.strip())
            return d.addCallback(lambda n: "OK deleted %d" % (n,))
        message_id = _message_id(rest, "DELETE <id> | DELETE SUBJECT <subject>")
        d = self.service.delete(cookie, message_id)
        return d.addCallback(lambda _: "OK deleted 1")

    def do_DUMP(self, rest):
        def logged(result):
            if not isinstance(result, dict):
                self.log.warn("DUMP failed: {failure}", failure=result.value)
            return "OK"

        return self.service.dump().addBoth(logged)

    def do_HELP(self, rest):
        return ["OK commands"] + HELP

    def do_QUIT(self, rest):
        self.sendText("BYE")
        self.close()

    # SEND's body

    def _bodyLine(self, line):
        body = self._body
        if line != ".":
            body.add(line[1:] if line.startswith(".") else line)
            return
        self._body = None
        self.respond(self._send, body)

    def _deliverable(self, request):
        """Whether a SEND line could lead to a delivery, whatever its body."""
        try:
            recipient, subject, cookie = self._sendHeader(request)
        except errors.MailsvcError:
            return False
        return cookie is not None and len(subject) <= MAX_SUBJECT

    def _send(self, body):
        self._verb = "SEND"
        if body.error is not None:
            raise body.error
        recipient, subject, cookie = self._sendHeader(body.request)
        d = self.service.send(cookie, recipient, subject, body.text())
        return d.addCallback(lambda message_id: "OK %d" % (message_id,))

    def _sendHeader(self, request):
        rest, cookie = self._session(request)
        recipient, _, subject = rest.partition(" ")
        if not recipient:
            raise Usage("SEND <user> <subject...>, then the body, then .")
        return recipient, subject.strip(), cookie


def _credentials(rest, syntax):
    """C{<user> <password>}: the password is the rest of the line."""
    parts = rest.split(None, 1)
    if len(parts) != 2:
        raise Usage(syntax)
    return parts[0], parts[1].strip()


class MailFactory(TextLineFactory):
    protocol = MailProtocol

    def __init__(self, service, max_body=1024 * 1024, **limits):
        super().__init__(**limits)
        self.service = service
        self.max_body = max_body
        # (verb, "ok" or "ko") -> requests answered so (the web front's /metrics).
        self.commands = collections.Counter()


FRONT = Front(
    name="mail",
    default="tcp:8025",
    description="Mail command port",
    short="p",
    aliases=("port",),
    parameters=(
        ("max-body", None, 1024 * 1024, "Largest SEND body accepted, in bytes.", positive_int),
        ("idle-timeout", None, 300, "Seconds a mail connection may stay silent.", positive_int),
    ),
    build=lambda service, config, reactor: MailFactory(
        service,
        max_body=config["max-body"],
        idle_timeout=config["idle-timeout"],
        **line_limits(config, reactor),
    ),
)
