"""
The IRC front (C{--irc-port}, 6667): real IRC clients in the chat room.

The room is one channel (C{--irc-channel}, C{#chat}). A client registers as
today's clients do (C{CAP LS 302} ... C{CAP END}, C{PASS}, C{NICK}, C{USER},
or SASL PLAIN); registration puts its nickname in the room, as the line
chat's C{NICK} does, so that C{/msg} and new-mail notices reach it; it hears
the channel once it has sent C{JOIN #chat}, and C{PART} takes it out of the
room again.

Lines are split on bytes and decoded one by one (L{TextLineProtocol}), bad
UTF-8 replaced; C{twisted.words.protocols.irc.parsemsg} parses them.
C{twisted.words.service} is not used: no CAP, the MOTD before 001, no 005,
PONG without the token, per-chunk decoding.
"""

import base64
import binascii
import time

from twisted.words.protocols.irc import IRCBadMessage, parsemsg
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core import events
from mailsvc.core.names import MAX_PASSWORD, fold
from mailsvc.fronts.lines import TextLineFactory, TextLineProtocol, line_limits
from mailsvc.fronts.member import RoomMember
from mailsvc.fronts.registry import Front
from mailsvc.interfaces import IParticipant
from mailsvc.options import positive_int

VERSION = "mailsvc-0.1"
# RFC 1459: 512 bytes with the CRLF; IRCv3 message tags may add 8191 before it.
MESSAGE_LIMIT = 510
TAGS_LIMIT = 8191
NICKLEN = 32
CHANNELLEN = 50
# What CAP LS offers (302 and later: with values).
CAPS = {"echo-message": None, "message-tags": None, "sasl": "PLAIN", "server-time": None}
# Capabilities that change how the room's events are rendered: fixed once the
# client is in the room (the room groups members by format).
RENDERING = frozenset(["server-time"])


class ChannelLine(bytes):
    """Bytes of a channel event: a client hears them only once it has joined."""

    __slots__ = ()


def _clean(text):
    # A line chat text has no line ending, but may hold a lone CR or a NUL.
    if "\r" in text or "\0" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    return text


def server_time(seconds):
    """An IRCv3 C{time} tag value: UTC, milliseconds."""
    if seconds is None:
        seconds = time.time()
    whole = int(seconds)
    return "%s.%03dZ" % (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)),
        int((seconds - whole) * 1000),
    )


def _pieces(head, text, tail=""):
    """
    C{head + piece + tail} lines, C{text} cut at character boundaries so that
    no line passes 512 bytes with its CRLF (a line chat line may be 8192).
    """
    line = head + text + tail
    encoded = line.encode("utf-8")
    if len(encoded) <= MESSAGE_LIMIT:
        return [encoded + b"\r\n"]
    room = MESSAGE_LIMIT - len((head + tail).encode("utf-8"))
    lines, data = [], text.encode("utf-8")
    while data:
        cut = min(room, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        lines.append(head.encode("utf-8") + data[:cut] + tail.encode("utf-8") + b"\r\n")
        data = data[cut:]
    return lines


class Formats:
    """
    The IRC front's words for the room's events, one format per capability
    set that changes them: C{plain} and C{server_time} (an C{@time} tag on
    what was said). Made once per factory, as they hold the channel's and the
    server's names; every IRC member of the room shares one of the two.
    """

    def __init__(self, server, channel):
        self.server = server
        self.channel = channel
        self.plain = self._format(False)
        self.server_time = self._format(True)

    def source(self, nick):
        return "%s!%s@%s" % (nick, nick, self.server)

    def said(self, event, tagged):
        head = ":%s PRIVMSG %s :" % (self.source(event.nick), self.channel)
        if tagged:
            head = "@time=%s %s" % (server_time(event.time), head)
        return b"".join(_pieces(head, _clean(event.text)))

    def _format(self, tagged):
        source, channel, server = self.source, self.channel, self.server
        words = {
            events.Said: lambda e: ChannelLine(self.said(e, tagged)),
            events.Joined: lambda e: ChannelLine(
                (":%s JOIN %s\r\n" % (source(e.nick), channel)).encode("utf-8")
            ),
            events.Left: lambda e: ChannelLine(
                (":%s PART %s :left\r\n" % (source(e.nick), channel)).encode("utf-8")
            ),
            events.Renamed: lambda e: ChannelLine(
                (":%s NICK :%s\r\n" % (source(e.nick), e.new)).encode("utf-8")
            ),
            events.Private: lambda e: b"".join(
                _pieces(":%s PRIVMSG %s :" % (source(e.sender), e.recipient), _clean(e.text))
            ),
            events.NewMail: lambda e: b"".join(
                _pieces(
                    ":%s NOTICE %s :new mail from %s: " % (server, e.account, e.sender),
                    _clean(e.subject),
                )
            ),
        }

        def irc(event):
            return words[type(event)](event)

        irc.__name__ = irc.__qualname__ = "irc_server_time" if tagged else "irc_plain"
        return irc

    def history(self, event, tagged):
        """A L{events.History} as one client is shown it on JOIN: with the time
        of each line as a tag, or, without server-time, marked as history."""
        if tagged:
            return b"".join(self.said(said, True) for said in event.events)
        return b"".join(
            b"".join(
                _pieces(
                    ":%s PRIVMSG %s :[history] " % (self.source(said.nick), self.channel),
                    _clean(said.text),
                )
            )
            for said in event.events
        )


class IRCError(errors.MailsvcError):
    """A refusal in IRC's own terms: a numeric and its parameters (the last
    one is the text)."""

    def __init__(self, numeric, *params):
        self.numeric = numeric
        self.params = params
        super().__init__(params[-1])


def _account_words(numeric, text):
    return lambda e, asked: (numeric, text if text else e.reason)


# The service's errors as IRC numerics: (numeric, [param,] text); C{asked}
# is the nickname the request was about.
WORDS = {
    errors.InvalidNick: lambda e, asked: ("432", asked, "Erroneous nickname: " + e.reason),
    errors.NickTaken: lambda e, asked: ("433", asked, "Nickname is already in use"),
    errors.NickReserved: lambda e, asked: (
        "433",
        asked,
        "Nickname belongs to a mail account: send PASS <password> before NICK,"
        " or log in with SASL",
    ),
    errors.ChatUnavailable: lambda e, asked: ("263", "NICK", e.reason),
    errors.BadCredentials: lambda e, asked: ("464", "Password incorrect"),
    errors.TooManyFailures: lambda e, asked: ("464", e.reason),
    errors.NoSuchNick: lambda e, asked: ("401", e.nick, "No such nick/channel"),
    errors.NotHere: lambda e, asked: (
        "401",
        e.nick,
        "No such nick/channel (a mailbox takes messages only from a registered nickname)",
    ),
}

# Commands a client may send before it is registered.
BEFORE_REGISTRATION = {"CAP", "PASS", "NICK", "USER", "PING", "PONG", "QUIT", "AUTHENTICATE"}
# Commands that flood control does not count.
UNCOUNTED = {"PING", "PONG", "QUIT"}


@implementer(IParticipant)
class IRCProtocol(RoomMember, TextLineProtocol):
    decodeErrors = "replace"
    nick = None
    account = None
    peer = None
    format = None
    # 001 was sent: the nickname is in the room (or was, before a PART).
    registered = False
    inRoom = False
    inChannel = False
    away = None
    _pinged = False
    _negotiating = False
    _registering = False
    _wanted = None
    _user = None
    _realname = None
    _password = None
    _sasl = None  # the mechanism under way
    _saslBuffer = ""
    _saslAccount = None
    _asked = None

    @property
    def service(self):
        return self.factory.service

    @property
    def server(self):
        return self.factory.server_name

    def connectionMade(self):
        self.caps = set()
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        self.peer = "%s:%s" % (host, port) if host is not None else str(address)
        self.format = self.factory.formats.plain
        # Channel traffic waits for JOIN (see send).
        self.send = self._sendOutsideChannel
        super().connectionMade()
        if self._admitted:
            self.startFloodControl()

    def connectionLost(self, reason):
        if self.inRoom:
            self.inRoom = False
            self.service.leave_chat(self)
        super().connectionLost(reason)

    # Output

    def _sendOutsideChannel(self, data):
        if type(data) is not ChannelLine:
            RoomMember.send(self, data)

    def _enterChannel(self):
        self.inChannel = True
        del self.send  # RoomMember.send: everything goes out

    def _leaveChannel(self):
        self.inChannel = False
        self.send = self._sendOutsideChannel

    def write(self, *lines):
        """Send text lines (replies), through the send queue."""
        if lines:
            RoomMember.send(
                self, b"".join(line.encode("utf-8") + b"\r\n" for line in lines)
            )

    def target(self):
        return self.nick or self._wanted or "*"

    def numeric(self, code, *params):
        """A numeric reply line to this client; the last parameter is the text."""
        middle = " ".join((self.target(),) + params[:-1])
        return ":%s %s %s :%s" % (self.server, code, middle, params[-1])

    def notice(self, text):
        return ":%s NOTICE %s :%s" % (self.server, self.target(), text)

    def me(self):
        return self.factory.formats.source(self.nick)

    def receive(self, event):
        """An event for this connection alone: the shutdown notice."""
        if type(event) is events.Shutdown:
            self.write(self.notice("Server will shut down in %d seconds" % (event.seconds,)))
        else:
            self.send(event.render(self.format))

    def shutdown(self):
        self.closeWith("Server shutting down")

    def closeWith(self, reason):
        self.write("ERROR :Closing link: %s[%s] (%s)" % (self.target(), self.peerHost, reason))
        self.close()

    # Line handling

    def refusal(self, reason):
        return "ERROR :Closing link: (%s)" % (reason,)

    def lineTooLong(self):
        self.write(self.numeric("417", "Input line was too long"))

    def undecodableLine(self):
        # decodeErrors = "replace": never called.
        pass

    def idleTimeout(self):
        if self.registered:
            return self.factory.ping_interval
        return self.factory.registration_timeout

    def lineResetsTimeout(self):
        if self._pinged:
            # Anything at all answers the PING.
            self._pinged = False
            self.setTimeout(self.factory.ping_interval)
            return False
        return self.registered

    def timeoutConnection(self):
        if not self.registered:
            self.closeWith("Registration timed out")
        elif not self._pinged:
            self._pinged = True
            self.write("PING :%s" % (self.server,))
            self.setTimeout(self.factory.ping_timeout)
        else:
            self.closeWith("Ping timeout: %d seconds" % (self.factory.ping_timeout,))

    def textReceived(self, text):
        if text.startswith("@"):
            tags, _, text = text.partition(" ")
            if len(tags.encode("utf-8")) > TAGS_LIMIT:
                self.lineTooLong()
                return
        text = text.lstrip(" ")
        if not text:
            return
        if len(text.encode("utf-8")) > MESSAGE_LIMIT:
            self.lineTooLong()
            return
        try:
            _, command, params = parsemsg(text)
        except (IRCBadMessage, ValueError, IndexError):
            return
        command = command.upper()
        if not self.registered and command not in BEFORE_REGISTRATION:
            self.write(self.numeric("451", "You have not registered"))
            return
        if self.registered and command not in UNCOUNTED and not self.withinRate():
            return
        handler = getattr(self, "irc_" + command, None)
        if handler is None or (command == "TAGMSG" and "message-tags" not in self.caps):
            self.write(self.numeric("421", command, "Unknown command"))
            return
        self.respond(handler, params)

    def tooFast(self, rate):
        self.write(
            self.notice(
                "you are sending too fast; slow down (at most %g line%s a second)"
                % (rate, "" if rate == 1 else "s")
            )
        )

    def flooded(self):
        self.write("ERROR :Closing link: %s[%s] (Excess Flood)" % (self.target(), self.peerHost))

    def reply(self, lines):
        if lines:
            self.write(*lines)

    def refuse(self, failure):
        error = getattr(failure, "value", failure)
        if isinstance(error, IRCError):
            self.write(self.numeric(error.numeric, *error.params))
            return
        words = WORDS.get(type(error))
        if words is not None:
            self.write(self.numeric(*words(error, self._asked or self.target())))
        elif isinstance(error, errors.MailsvcError):
            self.write(self.notice(error.reason))
        else:
            self.log.failure("IRC request failed", failure)
            self.write(self.notice("internal error"))

    @staticmethod
    def need(params, count, command):
        if len(params) < count or not all(params[:count]):
            raise IRCError("461", command, "Not enough parameters")

    # Registration

    def irc_CAP(self, params):
        self.need(params, 1, "CAP")
        sub = params[0].upper()
        target = self.nick or "*"
        if sub == "LS":
            if not self.registered:
                self._negotiating = True
            modern = len(params) > 1 and params[1].isdigit() and int(params[1]) >= 302
            offered = " ".join(
                name + ("=" + value if modern and value else "")
                for name, value in sorted(CAPS.items())
            )
            return [":%s CAP %s LS :%s" % (self.server, target, offered)]
        if sub == "LIST":
            return [":%s CAP %s LIST :%s" % (self.server, target, " ".join(sorted(self.caps)))]
        if sub == "REQ":
            if not self.registered:
                self._negotiating = True
            asked = params[1] if len(params) > 1 else ""
            wanted = asked.split()
            names = [w.lstrip("-") for w in wanted]
            if not wanted or any(n not in CAPS for n in names) or (
                self.inRoom and any(n in RENDERING for n in names)
            ):
                return [":%s CAP %s NAK :%s" % (self.server, target, asked)]
            for word in wanted:
                if word.startswith("-"):
                    self.caps.discard(word[1:])
                else:
                    self.caps.add(word)
            return [":%s CAP %s ACK :%s" % (self.server, target, asked)]
        if sub == "END":
            self._negotiating = False
            return self._tryRegister()
        raise IRCError("410", params[0], "Invalid CAP command")

    def irc_AUTHENTICATE(self, params):
        self.need(params, 1, "AUTHENTICATE")
        if "sasl" not in self.caps or self.registered:
            raise IRCError("904", "SASL authentication failed")
        if params[0] == "*":
            self._sasl, self._saslBuffer = None, ""
            raise IRCError("906", "SASL authentication aborted")
        if self._sasl is None:
            if params[0].upper() != "PLAIN":
                self.write(self.numeric("908", "PLAIN", "are available SASL mechanisms"))
                raise IRCError("904", "SASL authentication failed")
            self._sasl = "PLAIN"
            return ["AUTHENTICATE +"]
        chunk = params[0]
        if chunk != "+":
            self._saslBuffer += chunk
        if len(chunk) == 400:
            return None  # more to come
        data, self._sasl, self._saslBuffer = self._saslBuffer, None, ""
        if len(data) > 4 * (2 * 64 + MAX_PASSWORD + 2):
            raise IRCError("905", "SASL message too long")
        try:
            _, name, password = base64.b64decode(data, validate=True).decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise IRCError("904", "SASL authentication failed")

        def authenticated(account):
            self._saslAccount = account
            return [
                self.numeric(
                    "900",
                    "%s!%s@%s" % (self.target(), self._user or "*", self.peerHost),
                    account,
                    "You are now logged in as %s" % (account,),
                ),
                self.numeric("903", "SASL authentication successful"),
            ]

        def failed(failure):
            failure.trap(errors.BadCredentials, errors.TooManyFailures, errors.InvalidPassword)
            raise IRCError("904", "SASL authentication failed")

        d = self.service.authenticate(name, password, self.peerHost, "sasl")
        return d.addCallbacks(authenticated, failed)

    def irc_PASS(self, params):
        self.need(params, 1, "PASS")
        if self.registered:
            raise IRCError("462", "You may not reregister")
        self._password = params[0]

    def irc_USER(self, params):
        self.need(params, 4, "USER")
        if self.registered or self._user is not None:
            raise IRCError("462", "You may not reregister")
        self._user = "".join(c for c in params[0] if c.isalnum() or c in "_-.")[:10] or "user"
        self._realname = params[3]
        return self._tryRegister()

    def irc_NICK(self, params):
        if not params or not params[0]:
            raise IRCError("431", "No nickname given")
        nick = params[0]
        self._asked = nick
        if self.registered:
            return self._rename(nick)
        self._wanted = nick
        return self._tryRegister()

    def _tryRegister(self):
        if (
            self.registered
            or self._registering
            or self._negotiating
            or self._wanted is None
            or self._user is None
        ):
            return None
        nick = self._asked = self._wanted
        self._registering = True
        if "server-time" in self.caps:
            self.format = self.factory.formats.server_time
        d = self.service.join_chat(self, nick, self._password, self.peerHost, self._saslAccount)

        def joined(history):
            self._registering = False
            self._password = None
            if self._connectionLost:
                # Gone while its NICK was being checked: it must not stay in
                # the room with nobody behind it.
                self.service.leave_chat(self)
                return None
            self.registered = self.inRoom = True
            self.setTimeout(self.idleTimeout())
            self.log.info(
                "IRC client {nick} registered from {peer}", nick=self.nick, peer=self.peer
            )
            return self.welcome()

        def refused(failure):
            self._registering = False
            # The client tries another NICK (or PASS, then NICK).
            self._wanted = None
            return failure

        return d.addCallbacks(joined, refused)

    def welcome(self):
        factory = self.factory
        lines = [
            self.numeric(
                "001",
                "Welcome to the %s IRC network %s!%s@%s"
                % (factory.network, self.nick, self._user, self.peerHost),
            ),
            self.numeric("002", "Your host is %s, running version %s" % (self.server, VERSION)),
            self.numeric("003", "This server was created %s" % (factory.created,)),
            ":%s 004 %s %s %s i bnt" % (self.server, self.nick, self.server, VERSION),
            self.numeric(
                "005",
                "CASEMAPPING=ascii",
                "CHANTYPES=#",
                "CHANMODES=b,,,nt",
                "NICKLEN=%d" % (NICKLEN,),
                "CHANNELLEN=%d" % (CHANNELLEN,),
                "NETWORK=%s" % (factory.network,),
                "PREFIX=(ov)@+",
                "are supported by this server",
            ),
        ]
        return lines + self.motd()

    def motd(self):
        if not self.factory.motd:
            return [self.numeric("422", "MOTD File is missing")]
        return (
            [self.numeric("375", "- %s Message of the day - " % (self.server,))]
            + [self.numeric("372", "- " + line) for line in self.factory.motd]
            + [self.numeric("376", "End of /MOTD command.")]
        )

    def _rename(self, nick):
        if nick == self.nick:
            return None
        if not self.inRoom:
            raise IRCError("484", "Your connection is restricted: JOIN %s first" % (
                self.factory.channel,
            ))
        before, old = self.nick, self.me()

        def renamed(_):
            # A mail account keeps the account's spelling: then nothing changed.
            if self.nick != before:
                return [":%s NICK :%s" % (old, self.nick)]
            return None

        d = self.service.rename_chat(self, nick, None, self.peerHost, self.account)
        return d.addCallback(renamed)

    # The channel

    def isChannel(self, name):
        return name.lower() == self.factory.channel.lower()

    def irc_JOIN(self, params):
        self.need(params, 1, "JOIN")
        if params[0] == "0":
            return self.irc_PART([self.factory.channel]) if self.inChannel else None
        lines = []
        joining = False
        for name in params[0].split(","):
            if self.isChannel(name):
                joining = not self.inChannel
            else:
                lines.append(self.numeric("403", name, "No such channel"))
        if not joining:
            return lines
        self.write(*lines)
        if self.inRoom:
            return self._joined()
        # Back after a PART: into the room again, on the same terms.
        d = self.service.join_chat(self, self.nick, None, self.peerHost, self.account)

        def joined(_):
            if self._connectionLost:
                self.service.leave_chat(self)
                return None
            self.inRoom = True
            return self._joined()

        return d.addCallback(joined)

    def _joined(self):
        self.write(":%s JOIN %s" % (self.me(), self.factory.channel))
        self.write(*self.topic())
        d = self.names()

        def listed(lines):
            self.write(*lines)
            history = self.service.room.history()
            if history.events:
                RoomMember.send(
                    self,
                    self.factory.formats.history(history, "server-time" in self.caps),
                )
            # From now on, the channel's traffic.
            self._enterChannel()

        return d.addCallback(listed)

    def topic(self):
        channel = self.factory.channel
        if self.factory.topic:
            return [self.numeric("332", channel, self.factory.topic)]
        return [self.numeric("331", channel, "No topic is set")]

    def names(self):
        channel = self.factory.channel

        def listed(nicks):
            lines, batch = [], []
            for nick in nicks:
                batch.append(nick)
                if len(batch) == 15:
                    lines.append(self.numeric("353", "=", channel, " ".join(batch)))
                    batch = []
            if batch:
                lines.append(self.numeric("353", "=", channel, " ".join(batch)))
            return lines + [self.numeric("366", channel, "End of /NAMES list")]

        return self.service.room.who().addCallback(listed)

    def irc_PART(self, params):
        self.need(params, 1, "PART")
        lines = []
        for name in params[0].split(","):
            if not self.isChannel(name):
                lines.append(self.numeric("403", name, "No such channel"))
            elif not self.inChannel:
                lines.append(self.numeric("442", name, "You're not on that channel"))
            else:
                reason = params[1] if len(params) > 1 else "left"
                lines.append(":%s PART %s :%s" % (self.me(), self.factory.channel, reason))
                self._leaveChannel()
                self.inRoom = False
                self.service.leave_chat(self)
        return lines

    def irc_QUIT(self, params):
        self.closeWith("Quit: " + params[0] if params and params[0] else "Quit")

    def irc_PING(self, params):
        if not params:
            raise IRCError("409", "No origin specified")
        return [":%s PONG %s :%s" % (self.server, self.server, params[-1])]

    def irc_PONG(self, params):
        pass  # any line resets the ping timer

    def irc_NAMES(self, params):
        if params and not self.isChannel(params[0].split(",")[0]):
            return [self.numeric("366", params[0], "End of /NAMES list")]
        return self.names()

    def irc_TOPIC(self, params):
        self.need(params, 1, "TOPIC")
        if not self.isChannel(params[0]):
            raise IRCError("403", params[0], "No such channel")
        if len(params) > 1:
            raise IRCError("482", params[0], "You're not channel operator")
        return self.topic()

    def irc_MODE(self, params):
        self.need(params, 1, "MODE")
        name = params[0]
        if self.isChannel(name):
            if len(params) == 1:
                return [self.numeric("324", self.factory.channel, "+nt")]
            if params[1].lstrip("+") == "b":
                return [self.numeric("368", self.factory.channel, "End of channel ban list")]
            raise IRCError("482", self.factory.channel, "You're not channel operator")
        if name.startswith("#"):
            raise IRCError("403", name, "No such channel")
        if name.lower() != self.nick.lower():
            raise IRCError("502", "Can't change mode for other users")
        if len(params) == 1:
            return [self.numeric("221", "+")]
        return None  # user modes change nothing here

    def irc_WHO(self, params):
        mask = params[0] if params else "*"

        def listed(nicks):
            if not (self.isChannel(mask) or mask == "*"):
                nicks = [n for n in nicks if n.lower() == mask.lower()]
            lines = [
                self.numeric(
                    "352",
                    self.factory.channel,
                    nick,
                    self.server,
                    self.server,
                    nick,
                    "H",
                    "0 " + nick,
                )
                for nick in nicks
            ]
            return lines + [self.numeric("315", mask, "End of /WHO list")]

        return self.service.room.who().addCallback(listed)

    def irc_WHOIS(self, params):
        self.need(params, 1, "WHOIS")
        asked = params[-1]
        presence = self.service.room.presence

        def found(nicks):
            # Its own spelling, whatever the case asked.
            key = fold(asked)
            nick = next((n for n in nicks if fold(n) == key), None)
            if nick is None:
                return [
                    self.numeric("401", asked, "No such nick/channel"),
                    self.numeric("318", asked, "End of /WHOIS list"),
                ]
            return presence.where(nick).addCallback(lambda node: [
                self.numeric("311", nick, nick, self.server, "*", nick),
                # Across nodes, the node it is on (--node) as its server.
                self.numeric("312", nick, node or self.server, self.factory.network),
                self.numeric("319", nick, self.factory.channel),
                self.numeric("318", nick, "End of /WHOIS list"),
            ])

        return self.service.room.who().addCallback(found)

    def irc_ISON(self, params):
        asked = " ".join(params).split()

        def listed(nicks):
            here = {n.lower(): n for n in nicks}
            return [
                self.numeric("303", " ".join(here[n.lower()] for n in asked if n.lower() in here))
            ]

        return self.service.room.who().addCallback(listed)

    def irc_USERHOST(self, params):
        self.need(params, 1, "USERHOST")
        asked = " ".join(params).split()[:5]

        def listed(nicks):
            here = {n.lower(): n for n in nicks}
            replies = [
                "%s=+%s@%s" % (here[n.lower()], here[n.lower()], self.server)
                for n in asked
                if n.lower() in here
            ]
            return [self.numeric("302", " ".join(replies))]

        return self.service.room.who().addCallback(listed)

    def irc_AWAY(self, params):
        if params and params[0]:
            self.away = params[0]
            return [self.numeric("306", "You have been marked as being away")]
        self.away = None
        return [self.numeric("305", "You are no longer marked as being away")]

    def irc_MOTD(self, params):
        return self.motd()

    def irc_TAGMSG(self, params):
        pass  # client-only tags (typing notices): nothing to carry them to

    def irc_PRIVMSG(self, params):
        return self._message(params, "PRIVMSG")

    def irc_NOTICE(self, params):
        d = self._message(params, "NOTICE")
        # A NOTICE is never answered, not even with an error.
        if d is not None and hasattr(d, "addErrback"):
            return d.addErrback(lambda failure: failure.trap(errors.MailsvcError) and None)
        return None

    def _message(self, params, command):
        if not params or not params[0]:
            if command == "NOTICE":
                return None
            raise IRCError("411", "No recipient given (%s)" % (command,))
        if len(params) < 2 or not params[1]:
            if command == "NOTICE":
                return None
            raise IRCError("412", "No text to send")
        target, text = params[0].split(",")[0], params[1]
        echo = "echo-message" in self.caps
        if self.isChannel(target):
            if not self.inChannel:
                if command == "NOTICE":
                    return None
                raise IRCError("404", target, "Cannot send to channel")
            self.service.say(self, text)
            if echo:
                said = events.Said(self.nick, text, self.service.room.now())
                RoomMember.send(self, said.render(self.format))
            return None
        if target.startswith("#"):
            if command == "NOTICE":
                return None
            raise IRCError("403", target, "No such channel")

        def sent(message_id):
            lines = []
            if echo:
                lines.append(":%s %s %s :%s" % (self.me(), command, target, _clean(text)))
            if message_id is not None and command == "PRIVMSG":
                lines.append(
                    self.notice("%s is not here: your message is in their mailbox" % (target,))
                )
            return lines

        return self.service.chat_private(self, target, text).addCallback(sent)


class IRCFactory(TextLineFactory):
    protocol = IRCProtocol

    def __init__(
        self,
        service,
        channel="#chat",
        server_name="mailsvc",
        network="mailsvc",
        topic="",
        motd=(),
        ping_interval=120,
        ping_timeout=60,
        registration_timeout=30,
        max_sendq=1024 * 1024,
        flood_rate=5.0,
        flood_burst=20,
        **limits
    ):
        limits.setdefault("line_limit", TAGS_LIMIT + 1 + MESSAGE_LIMIT)
        super().__init__(**limits)
        self.service = service
        self.channel = channel
        self.server_name = server_name
        self.network = network
        self.topic = topic
        self.motd = list(motd)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.registration_timeout = registration_timeout
        self.max_sendq = max_sendq
        self.sendq_drops = 0  # clients dropped for an unread send queue (/metrics)
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst
        self.formats = Formats(server_name, channel)
        self.created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.clock.seconds()))

    def closeAll(self, clock, patience=5.0):
        self.service.room.closing = True
        return super().closeAll(clock, patience)

    def announce_shutdown(self, event):
        """Tell every IRC connection, registered or not, that the server is
        stopping (an L{events.Shutdown}), as a NOTICE."""
        for connection in list(self.connections):
            connection.receive(event)


def channel_name(value):
    if not (
        value.startswith("#")
        and 1 < len(value) <= CHANNELLEN
        and not any(c in value for c in " ,:\x07\r\n\0")
    ):
        raise ValueError("a channel name: # and up to %d characters, no space or comma" % (
            CHANNELLEN - 1,
        ))
    return value


channel_name.coerceDoc = "A channel name (#...)."


def server_name(value):
    if not value or any(c in value for c in " :!@,\r\n\0"):
        raise ValueError("a server name: no space, colon, ! or @")
    return value


server_name.coerceDoc = "A name with no space, colon, ! or @."


def motd_lines(value):
    """The MOTD option: text with \\n between lines, or @path of a file."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8", errors="replace") as f:
            value = f.read()
    else:
        value = value.replace("\\n", "\n")
    return [line.rstrip("\r") for line in value.rstrip("\n").split("\n")] if value else []


FRONT = Front(
    name="irc",
    default="tcp:6667",
    description="IRC port (the chat room as one channel)",
    parameters=(
        ("irc-channel", None, "#chat", "The IRC channel that is the chat room.", channel_name),
        (
            "irc-server-name",
            None,
            "mailsvc",
            "The server name IRC clients see in replies.",
            server_name,
        ),
        ("irc-network", None, "mailsvc", "The network name in IRC's 001 and 005.", server_name),
        (
            "irc-topic",
            None,
            "mailsvc chat: IRC and the line chat in one room",
            "The channel's topic (empty: none).",
        ),
        (
            "irc-motd",
            None,
            "Welcome to mailsvc. The chat room is the one channel: /join #chat",
            "Message of the day: text (\\n between lines) or @<file>; empty: none.",
        ),
        (
            "irc-ping-interval",
            None,
            120,
            "Seconds of silence before the server PINGs an IRC client.",
            positive_int,
        ),
        (
            "irc-ping-timeout",
            None,
            60,
            "Seconds an IRC client has to answer the server's PING.",
            positive_int,
        ),
    ),
    build=lambda service, config, reactor: IRCFactory(
        service,
        channel=config["irc-channel"],
        server_name=config["irc-server-name"],
        network=config["irc-network"],
        topic=config["irc-topic"],
        motd=motd_lines(config["irc-motd"]),
        ping_interval=config["irc-ping-interval"],
        ping_timeout=config["irc-ping-timeout"],
        registration_timeout=config["nick-timeout"],
        max_sendq=config["max-sendq"],
        flood_rate=config["flood-rate"],
        flood_burst=config["flood-burst"],
        **dict(line_limits(config, reactor), line_limit=TAGS_LIMIT + 1 + MESSAGE_LIMIT),
    ),
)
