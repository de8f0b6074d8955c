"""
The chat through the IRC front: twisted.words' C{IRCClient}, shaped like
L{mailsvc.client.ChatClient}.

C{mailsvc-client chat --irc} uses it so that a person can reach the room where
only the IRC port is open (or through an IRC bouncer's port). What arrives
becomes the same L{ChatEvent}s the line chat gives, and the line chat's
commands (C{/who}, C{/msg}, C{/help}, C{//text}, C{BYE}) are turned into IRC.

This module imports the reactor (twisted.words does): import it only once the
reactor has been chosen.
"""

import collections

from twisted.internet import defer, endpoints, protocol
from twisted.words.protocols import irc

from mailsvc.client import ChatEvent, NickRefused, NoReply, RequestFailed, _SHUTDOWN

CHANNEL = "#chat"

HELP = [
    "commands (through the IRC front):",
    "  /who                 who is here",
    "  /msg <nick> <text>   a private message",
    "  /help                this list",
    "  /quit or BYE         leave",
    "  //text               send a message that begins with /",
]


def _nick(prefix):
    return (prefix or "").split("!", 1)[0]


class IRCChatClient(irc.IRCClient):
    """
    A chat participant through the IRC front: it registers (C{PASS} first for
    a reserved nickname), joins C{channel}, and calls C{on_event} with a
    L{ChatEvent} for each message, private message, notice, join and leave.

    The parameters are L{mailsvc.client.ChatClient}'s; L{ready} fires once the
    channel's names have come, so L{who} knows them at once, and fails with
    L{NoReply} if that takes more than C{greeting_timeout} seconds (not an
    IRC port, say).
    """

    realname = "mailsvc-client"
    heartbeatInterval = 60

    _greetingCall = None

    def __init__(
        self,
        nick,
        password=None,
        on_retry=None,
        on_event=None,
        channel=CHANNEL,
        greeting_timeout=None,
        clock=None,
    ):
        self.nickname = nick
        self.nick = nick
        self.password = password
        self.on_retry = on_retry or (lambda reason: None)
        self.on_event = on_event or (lambda event: None)
        self.channel = channel
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self._names = []
        self._who = collections.deque()
        self._lost = None
        self._received = b""
        self._lines = 0
        self.greeting_timeout = greeting_timeout
        self.clock = clock

    def connectionMade(self):
        super().connectionMade()
        if self.greeting_timeout is not None:
            self._greetingCall = self.clock.callLater(self.greeting_timeout, self._noGreeting)
        self.ready.addBoth(self._stopWaiting)

    def _noGreeting(self):
        self.ready.errback(NoReply(self._received, self.greeting_timeout))
        self.transport.loseConnection()

    def _stopWaiting(self, result):
        if self._greetingCall is not None and self._greetingCall.active():
            self._greetingCall.cancel()
        return result

    # Receiving

    def dataReceived(self, data):
        if len(self._received) < 64:
            self._received += data[: 64 - len(self._received)]
        super().dataReceived(data)

    def lineReceived(self, line):
        # IRCClient decodes strictly: one bad byte from a peer would end us.
        self._lines += 1
        super().lineReceived(line.decode("utf-8", "replace"))

    def _event(self, kind, text, nick=None, seconds=None):
        self.on_event(ChatEvent(kind, text, nick, seconds))

    def irc_RPL_WELCOME(self, prefix, params):
        super().irc_RPL_WELCOME(prefix, params)
        # The server's word for our nickname (a NICK with a space in it asks
        # for its first word only).
        self.nickname = self.nick = params[0]
        self.join(self.channel)

    def irc_RPL_NAMREPLY(self, prefix, params):
        self._names.extend(name.lstrip("@+") for name in params[-1].split())

    def irc_RPL_ENDOFNAMES(self, prefix, params):
        names, self._names = self._names, []
        if not self.ready.called:
            self.ready.callback(self)
        elif self._who:
            self._who.popleft().callback(names)
        else:
            self._event("notice", "here: " + ", ".join(names))

    def privmsg(self, user, channel, message):
        nick = _nick(user)
        if channel.lower() != self.channel.lower():
            self._event("private", message, nick)
        elif message.startswith("[history] "):
            self._event("history", message[len("[history] ") :], nick)
        else:
            self._event("message", message, nick)

    def action(self, user, channel, data):
        self._event("notice", "%s %s" % (_nick(user), data))

    def noticed(self, user, channel, message):
        match = _SHUTDOWN.match(message)
        if match:
            self._event("shutdown", message, seconds=int(match.group(1)))
        elif self.ready.called:
            self._event("notice", message)

    def userJoined(self, user, channel):
        self._event("notice", "%s joined" % (_nick(user),))

    def userLeft(self, user, channel):
        self._event("notice", "%s left" % (_nick(user),))

    def userQuit(self, user, quitMessage):
        self._event("notice", "%s left" % (_nick(user),))

    def userRenamed(self, oldname, newname):
        self._event("notice", "%s is now known as %s" % (oldname, newname))

    def irc_ERR_NICKNAMEINUSE(self, prefix, params):
        self._refused(params[-1])

    def irc_ERR_ERRONEUSNICKNAME(self, prefix, params):
        self._refused(params[-1])

    def irc_ERR_PASSWDMISMATCH(self, prefix, params):
        self._refused(params[-1])

    def _refused(self, reason):
        if self._registered:
            self._event("error", reason)
            return
        d = defer.maybeDeferred(self.on_retry, reason)

        def offer(nick):
            if nick is None:
                if not self.ready.called:
                    self.ready.errback(NickRefused(reason))
                self.transport.loseConnection()
            else:
                self.nickname = nick
                self.setNick(nick)

        d.addCallback(offer)

    def irc_ERROR(self, prefix, params):
        if not self.ready.called:
            self.ready.errback(RequestFailed(params[-1]))

    def irc_unknown(self, prefix, command, params):
        # Refusals (4xx, 5xx) once in: shown as errors; the rest is the
        # server's business (MOTD, topic, modes).
        refusal = command.startswith("ERR_") or (command.isdigit() and command[0] in "45")
        if refusal and self.ready.called:
            self._event("error", params[-1])

    def connectionLost(self, reason):
        self._lost = reason
        irc.IRCClient.connectionLost(self, reason)
        if not self.ready.called:
            self.ready.errback(reason if self._lines else NoReply(self._received))
        waiting, self._who = self._who, collections.deque()
        for d in waiting:
            d.errback(reason)
        self.closed.callback(None)

    # Speaking: the line chat's words

    def sendText(self, line):
        """A line as a person types it in the line chat: a message or a command."""
        if line.startswith("//"):
            self.say(line[1:])
            return
        if not line.startswith("/"):
            if line.strip().lower() == "bye":
                self.bye()
            else:
                self.say(line)
            return
        command, _, rest = line[1:].partition(" ")
        command = command.lower()
        if command == "who":
            self.who().addCallbacks(
                lambda names: self._event("notice", "here: " + ", ".join(names)),
                lambda failure: None,
            )
        elif command == "msg":
            target, _, text = rest.strip().partition(" ")
            if not target or not text:
                self._event("error", "usage: /msg <nick> <text>")
            else:
                self.msg(target, text)
        elif command == "help":
            for text in HELP:
                self._event("notice", text)
        elif command == "quit":
            self.bye()
        else:
            self._event("error", "unknown command /%s, try /help" % (command,))

    def say(self, text):
        """Send C{text} to the channel."""
        self.msg(self.channel, text)

    def msg(self, user, message, length=None):
        if "\n" in message or "\r" in message or "\n" in user or "\r" in user:
            raise ValueError("a chat line is one line: %r" % (message,))
        irc.IRCClient.msg(self, user, message, length)

    def who(self):
        """Fire with the nicknames in the channel."""
        if self._lost is not None:
            return defer.fail(self._lost)
        d = defer.Deferred()
        self._who.append(d)
        self.sendLine("NAMES " + self.channel)
        return d

    def bye(self):
        """Leave; fire when the server has closed the connection."""
        if self._lost is None:
            self.quit("bye")
        return self.closed


def connect_irc(reactor, description, nick, channel=CHANNEL, **options):
    """
    Connect to the IRC front and join C{channel}; fire with the
    L{IRCChatClient} once its names have come. C{options} are those of
    L{IRCChatClient}: C{password}, C{on_retry}, C{on_event},
    C{greeting_timeout}.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    options.setdefault("clock", reactor)
    factory = protocol.Factory.forProtocol(
        lambda: IRCChatClient(nick, channel=channel, **options)
    )
    return endpoint.connect(factory).addCallback(lambda client: client.ready)
