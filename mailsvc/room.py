"""
The chat room: who is here, and what reaches whom.

The room pushes finished lines into its participants (L{IChatParticipant.send}),
as twisted.words' groups push into IChatClients. Each line is encoded once, however
many participants receive it. A participant whose delivery raises is removed and
the others carry on.
"""

import collections
import re

from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mailsvc import errors

NICK = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")


class IChatParticipant(Interface):
    nick = Attribute("The nickname, set by the room on join.")
    account = Attribute("The mail account this nickname belongs to, or None.")
    peer = Attribute("Where the participant connects from, for the chat log.")

    def send(data):
        """Deliver C{data}: one or more encoded lines, each ending in CRLF."""


def encode(line):
    return line.encode("utf-8") + b"\r\n"


class ChatRoom:
    """
    @param chat_log: a L{mailsvc.chatlog.ChatLog}, or None.
    @param history: how many recent messages a newcomer is shown.
    """

    log = Logger()
    # Set while the server closes every connection: nobody needs to hear that
    # each of the others left.
    closing = False

    def __init__(self, chat_log=None, history=20):
        self._members = {}  # nick folded to lower case -> participant
        self._history = collections.deque(maxlen=history)
        self._chat_log = chat_log

    def __contains__(self, nick):
        return nick.lower() in self._members

    def who(self):
        return sorted(p.nick for p in self._members.values())

    def participants(self):
        return list(self._members.values())

    def check_nick(self, nick):
        if not NICK.match(nick):
            raise errors.InvalidNick()
        if nick in self:
            raise errors.NickTaken()

    def join(self, participant, nick, account=None):
        """
        Add C{participant} as C{nick}; return the recent history (encoded
        lines) for it to be shown after its acknowledgement.
        """
        self.check_nick(nick)
        participant.nick = nick
        participant.account = account
        self._members[nick.lower()] = participant
        self._broadcast(encode("* %s joined" % (nick,)), participant)
        if self._chat_log:
            self._chat_log.joined(nick, participant.peer)
        return b"".join(self._history)

    def leave(self, participant):
        nick = getattr(participant, "nick", None)
        if nick is None or self._members.get(nick.lower()) is not participant:
            return
        del self._members[nick.lower()]
        if not self.closing:
            self._broadcast(encode("* %s left" % (nick,)))
        if self._chat_log:
            self._chat_log.left(nick)

    def say(self, participant, text):
        """Send C{text} from C{participant} to everyone else."""
        data = encode("%s: %s" % (participant.nick, text))
        if self._history.maxlen:
            self._history.append(b"[history] " + data)
        self._broadcast(data, participant)
        if self._chat_log:
            self._chat_log.said(participant.nick, text)

    def private(self, sender, nick, text):
        """Send C{text} to C{nick} alone. L{errors.NoSuchNick}."""
        recipient = self._members.get(nick.lower())
        if recipient is None:
            raise errors.NoSuchNick("no such nickname: %s" % (nick,))
        self._deliver(recipient, encode("*%s* %s" % (sender.nick, text)))

    def notify_account(self, account, line):
        """Tell the participant holding C{account}'s nickname, if one is here."""
        participant = self._members.get(account.lower())
        if participant is not None and participant.account is not None:
            self._deliver(participant, encode(line))

    def _broadcast(self, data, sender=None):
        # The room's hottest loop: _deliver inlined.
        for participant in list(self._members.values()):
            if participant is not sender:
                try:
                    participant.send(data)
                except Exception:
                    self._failed(participant)

    def _deliver(self, participant, data):
        try:
            participant.send(data)
        except Exception:
            self._failed(participant)

    def _failed(self, participant):
        self.log.failure("delivery to {nick} failed", nick=participant.nick)
        self.leave(participant)
