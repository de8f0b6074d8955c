"""
The line chat front (C{--chat-port}): HELLO, NICK until READY, then every line
is a message to the room, and lines that begin with C{/} are commands
answered to the sender alone.

Each room event becomes bytes once for every chat connection (L{line}
through L{events.Event.render}). A participant that does not read is
counted, not waited for: past C{--max-sendq} bytes beyond Twisted's buffer it
is aborted, since a clean close would wait for the very output it does not
read. Flood control is a token bucket per connection. C{--nick-timeout} is a
deadline, not a silence: lines that are not a good NICK do not put it off.
"""

import re

from zope.interface import implementer

from mailsvc import errors
from mailsvc.core import events
from mailsvc.fronts import reason_for
from mailsvc.fronts.lines import TextLineFactory, TextLineProtocol, line_limits
from mailsvc.fronts.member import RoomMember
from mailsvc.fronts.registry import Front
from mailsvc.interfaces import IParticipant
from mailsvc.options import positive_float, positive_int

# "NICK alice", "NICK alice password", and "NICKalice" as the CSC 328 client sends.
NICK_REQUEST = re.compile(r"NICK\s*(\S+)(?:\s+(.+))?\Z", re.IGNORECASE)

HELP = [
    "* commands:",
    "*   /who                 who is here",
    "*   /me <text>           an action: everyone sees \"* <you> <text>\"",
    "*   /msg <nick> <text>   a private message (or mail, to a registered user who",
    "*                        is not here, if your nickname is registered)",
    "*   /help                this list",
    "*   /quit or BYE         leave",
    "*   //text               send a message that begins with /",
]


def encode(line):
    return line.encode("utf-8") + b"\r\n"


_LINES = {
    events.Said: lambda e: encode(
        "%s: %s" % (e.nick, e.text)
        if events.action(e.text) is None
        else "* %s %s" % (e.nick, events.action(e.text))
    ),
    events.Joined: lambda e: encode("* %s joined" % (e.nick,)),
    events.Left: lambda e: encode("* %s left" % (e.nick,)),
    events.Renamed: lambda e: encode("* %s is now known as %s" % (e.nick, e.new)),
    events.Private: lambda e: encode("*%s* %s" % (e.sender, e.text)),
    events.NewMail: lambda e: encode(
        "* new mail from %s: %s" % (e.sender, e.subject)
        if e.count == 1
        else "* %d new mails, latest from %s: %s" % (e.count, e.sender, e.subject)
    ),
    events.Shutdown: lambda e: encode("Server will shut down in %d seconds" % (e.seconds,)),
    events.History: lambda e: b"".join(b"[history] " + s.render(line) for s in e.events),
}


def line(event):
    """An event as this front's bytes (L{events.Event.render} caches them)."""
    return _LINES[type(event)](event)


# The service's errors in this front's words (the reason for the others).
WORDS = {
    errors.NotHere: lambda e: "%s is not here (mail to a mailbox needs a registered nickname)"
    % (e.nick,),
    errors.NoSuchNick: lambda e: "no such nickname or mailbox: %s" % (e.nick,),
}
# Before READY, the words of a refused NICK.
NICK_WORDS = {
    errors.NickReserved: "nickname belongs to a mail account: NICK <name> <password>",
    errors.BadCredentials: "wrong password for that nickname",
}


@implementer(IParticipant)
class ChatProtocol(RoomMember, TextLineProtocol):
    nick = None
    account = None
    peer = None
    ready = False

    @property
    def service(self):
        return self.factory.service

    def connectionMade(self):
        super().connectionMade()
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        self.peer = "%s:%s" % (host, port) if host is not None else str(address)
        if not self._admitted:
            return
        self.startFloodControl()
        self.sendText("HELLO")

    def connectionLost(self, reason):
        if self.ready:
            self.service.leave_chat(self)
        super().connectionLost(reason)

    format = staticmethod(line)

    def receive(self, event):
        self.send(event.render(line))

    def sendText(self, *lines):
        # Replies count against the send queue like everything else.
        self.send(b"".join(encode(line) for line in lines))

    # Line handling

    def textReceived(self, text):
        if text.strip().upper() == "BYE" or text.strip().lower() == "/quit":
            self.close()
        elif not self.ready:
            self.respond(self._nick, text)
        elif not text or not self.withinRate():
            return
        elif text.startswith("//"):
            self.service.say(self, text[1:])
        elif text.startswith("/"):
            self.respond(self._command, text)
        else:
            self.service.say(self, text)

    def tooFast(self, rate):
        self.sendText(
            "* error: you are sending too fast; slow down (at most %g line%s a second)"
            % (rate, "" if rate == 1 else "s")
        )

    def flooded(self):
        self.sendText("* error: flooding: disconnected")

    def undecodableLine(self):
        self.refuse(errors.MailsvcError("line is not valid UTF-8"))

    def lineTooLong(self):
        self.refuse(
            errors.MailsvcError("line too long: at most %d bytes" % (self.LINE_LIMIT,))
        )

    def reply(self, lines):
        if lines:
            self.sendText(*lines)

    def refusal(self, reason):
        return "* error: " + reason

    def idleTimeout(self):
        return self.factory.idle_timeout if self.ready else self.factory.nick_timeout

    def lineResetsTimeout(self):
        # --nick-timeout is a deadline: lines that are not a good NICK do not
        # put it off.
        return self.ready

    def refuse(self, failure):
        error = getattr(failure, "value", failure)
        if not isinstance(error, errors.MailsvcError):
            self.log.failure("chat request failed", failure)
            error = errors.MailsvcError("internal error")
        if self.ready:
            self.sendText("* error: " + reason_for(error, WORDS))
        else:
            self.sendText("RETRY " + reason_for(error, NICK_WORDS))

    def _nick(self, text):
        match = NICK_REQUEST.match(text.strip())
        if match is None:
            raise errors.MailsvcError("send NICK <name> first")
        nick, password = match.groups()

        def joined(history):
            if self._connectionLost:
                # Gone while its NICK was being checked: it must not stay in
                # the room with nobody behind it.
                self.service.leave_chat(self)
                return
            self.ready = True
            self.setTimeout(self.idleTimeout())
            self.sendText("READY")
            if history.events:
                self.receive(history)

        d = self.service.join_chat(self, nick, password, self.peerHost)
        return d.addCallback(joined)

    # Commands

    def _command(self, text):
        name, _, rest = text.partition(" ")
        command = getattr(self, "command_" + name[1:].lower(), None)
        if command is None:
            raise errors.MailsvcError("unknown command %s, try /help" % (name,))
        return command(rest.strip())

    def command_who(self, rest):
        return self.service.room.who().addCallback(lambda nicks: ["* here: " + ", ".join(nicks)])

    def command_me(self, rest):
        if not rest:
            raise errors.MailsvcError("usage: /me <text>")
        self.service.say(self, events.as_action(rest))

    def command_help(self, rest):
        return HELP

    def command_msg(self, rest):
        nick, _, text = rest.partition(" ")
        if not nick or not text.strip():
            raise errors.MailsvcError("usage: /msg <nick> <text>")

        def sent(message_id):
            if message_id is not None:
                return ["* %s is not here: your message is in their mailbox" % (nick,)]

        return self.service.chat_private(self, nick, text.strip()).addCallback(sent)


class ChatFactory(TextLineFactory):
    protocol = ChatProtocol

    def __init__(
        self,
        service,
        max_sendq=1024 * 1024,
        nick_timeout=None,
        flood_rate=5.0,
        flood_burst=20,
        **limits
    ):
        super().__init__(**limits)
        self.service = service
        self.max_sendq = max_sendq
        self.sendq_drops = 0  # clients dropped for an unread send queue (/metrics)
        self.nick_timeout = nick_timeout
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst

    def closeAll(self, clock, patience=5.0):
        self.service.room.closing = True
        return super().closeAll(clock, patience)

    def announce_shutdown(self, event):
        """Tell every chat connection, ready or not, that the server is stopping
        (an L{events.Shutdown})."""
        for connection in list(self.connections):
            connection.receive(event)


FRONT = Front(
    name="chat",
    default="tcp:8026",
    description="Group chat port",
    short="c",
    parameters=(
        (
            "max-sendq",
            None,
            1024 * 1024,
            "Bytes of output a chat client may leave unread before it is dropped.",
            positive_int,
        ),
        ("nick-timeout", None, 30, "Seconds a chat client has to get a nickname.", positive_int),
        (
            "chat-idle-timeout",
            None,
            3600,
            "Seconds a chat participant may stay silent.",
            positive_int,
        ),
        ("flood-rate", None, 5, "Chat lines a second one participant may send.", positive_float),
        ("flood-burst", None, 20, "Chat lines one participant may send at once.", positive_int),
    ),
    build=lambda service, config, reactor: ChatFactory(
        service,
        max_sendq=config["max-sendq"],
        nick_timeout=config["nick-timeout"],
        idle_timeout=config["chat-idle-timeout"],
        flood_rate=config["flood-rate"],
        flood_burst=config["flood-burst"],
        **line_limits(config, reactor),
    ),
)
