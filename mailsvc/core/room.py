"""
The chat room: who is here, and what reaches whom.

Everything said in the room travels as an event over the bus (L{IBus}), and
the room of every node hands each event it hears to its own members, as
twisted.words' groups push into IChatClients: rendered by each member's front
(L{IParticipant.format}) once per format, however many members share it, and
sent as bytes (L{IParticipant.send}).
Nicknames are claimed through L{IPresence}, so that two nodes never hand out
the same one. A participant whose delivery raises is removed and the others
carry on.

Why events, not bytes: each front words them itself, and L{Event.render}
keeps one rendering per format, so a message to a thousand line clients is
encoded once. The room never waits for a participant (a slow reader is the
front's business: the chat's send queue), and it knows nothing of sockets,
so tests drive it with fake participants. The history keeps L{Said} events,
rendered when shown. While C{closing} is set (this node closes every
connection at shutdown) nobody is told who left; the chat log still is.
"""

import collections
import re
import time

from twisted.internet import defer
from twisted.logger import Logger

from mailsvc import errors
from mailsvc.bus.local import LocalBus, LocalPresence
from mailsvc.core.events import History, Joined, Left, NewMail, Private, Renamed, Said
from mailsvc.core.names import fold

NICK = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")


def check_nick(nick):
    if not NICK.match(nick):
        raise errors.InvalidNick()


class ChatRoom:
    """
    @param bus: an L{IBus}; presence: an L{IPresence} (in-process ones by default).
    @param chat_log: a L{mailsvc.core.chatlog.ChatLog}, or None.
    @param history: how many recent messages a newcomer is shown.
    @param clock: an L{IReactorTime}: the time of what is said, and the
        coalescing of new-mail notices (the first to a member goes at once;
        the others within C{mail_window} seconds become one notice with their
        count when the window ends, so mail can never flood anyone's chat).
        None: the wall clock, and every notice at once. SharedService sets
        its own.
    """

    log = Logger()
    # Set while this node closes every connection: nobody here needs to hear
    # that each of the others left.
    closing = False
    # Counted for /metrics: messages said in the room as this node heard
    # them, and the deliveries of room events to this node's members.
    said = 0
    deliveries = 0

    def __init__(
        self, chat_log=None, history=20, bus=None, presence=None, clock=None, mail_window=1.0
    ):
        self.clock = clock
        self.mail_window = mail_window
        # member folded -> _MailWindow: notices held back in the current window.
        self._mail_windows = {}
        self._members = {}  # nick folded to lower case -> local participant
        # format -> {nick folded: participant}: a broadcast renders once per format.
        self._formats = {}
        self._history = collections.deque(maxlen=history)
        self._chat_log = chat_log
        self.bus = bus if bus is not None else LocalBus()
        self.presence = presence if presence is not None else LocalPresence()
        self._handlers = {
            Said: self._said,
            Joined: self._joined,
            Left: self._left,
            Renamed: self._renamed,
            Private: self._private,
            NewMail: self._new_mail,
            History: self._history_told,
        }
        self.bus.subscribe(self._heard)

    def __contains__(self, nick):
        """Whether C{nick} is a member on this node."""
        return fold(nick) in self._members

    def who(self):
        """Fire with every nickname in the room, on every node, sorted."""
        return self.presence.who()

    def history(self):
        """The room's recent L{History}, as a newcomer is shown it."""
        return History(list(self._history))

    def participants(self):
        """The members on this node."""
        return list(self._members.values())

    def join(self, participant, nick, account=None):
        """
        Add C{participant} as C{nick}; fire with the L{History} it is to be
        shown after its acknowledgement. L{errors.InvalidNick},
        L{errors.NickTaken}.
        """
        try:
            check_nick(nick)
        except errors.MailsvcError:
            return defer.fail()

        def claimed(_):
            participant.nick = nick
            participant.account = account
            self._members[fold(nick)] = participant
            self._formats.setdefault(participant.format, {})[fold(nick)] = participant
            self.bus.publish(Joined(nick, participant.peer))
            return History(list(self._history))

        return self.presence.claim(nick).addCallback(claimed)

    def leave(self, participant):
        nick = getattr(participant, "nick", None)
        if nick is None or self._members.get(fold(nick)) is not participant:
            return
        del self._members[fold(nick)]
        group = self._formats[participant.format]
        del group[fold(nick)]
        if not group:
            del self._formats[participant.format]
        self.presence.release(nick)
        self.bus.publish(Left(nick))

    def rename(self, participant, new, account=None):
        """
        Give member C{participant} the nickname C{new} (and C{account}); fire
        with None. L{errors.InvalidNick}, L{errors.NickTaken}.
        """
        try:
            check_nick(new)
        except errors.MailsvcError:
            return defer.fail()
        old = participant.nick
        if old is None or self._members.get(fold(old)) is not participant:
            return defer.fail(errors.MailsvcError("not in the room"))
        if new == old:
            participant.account = account
            return defer.succeed(None)
        same = fold(old) == fold(new)

        def claimed(_):
            del self._members[fold(old)]
            group = self._formats[participant.format]
            del group[fold(old)]
            participant.nick = new
            participant.account = account
            self._members[fold(new)] = participant
            group[fold(new)] = participant
            if same:
                self.presence.respell(new)
            else:
                self.presence.release(old)
            self.bus.publish(Renamed(old, new))

        # A change of case keeps the nickname it holds.
        d = defer.succeed(None) if same else self.presence.claim(new)
        return d.addCallback(claimed)

    def say(self, participant, text):
        """Send C{text} from C{participant} to everyone else."""
        self.bus.publish(Said(participant.nick, text, self.now()))

    def now(self):
        return time.time() if self.clock is None else self.clock.seconds()

    def private(self, sender, nick, text):
        """Send C{text} to C{nick} alone, wherever it is."""
        self.bus.publish(Private(sender.nick, nick, text))

    def new_mail(self, account, sender, subject):
        """Tell whoever holds C{account}'s nickname, on any node, of a new message."""
        self.bus.publish(NewMail(account, sender, subject))

    # What the bus brings

    def _heard(self, event):
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _said(self, event):
        self.said += 1
        if self._history.maxlen:
            self._history.append(event)
        self._broadcast(event, self._members.get(fold(event.nick)))
        if self._chat_log:
            self._chat_log.said(event.nick, event.text)

    def _history_told(self, event):
        # A bus across nodes keeps the history, and tells it on (re)joining
        # the room: every node then shows a newcomer the same lines.
        self._history.clear()
        self._history.extend(event.events)

    def _joined(self, event):
        self._broadcast(event, self._members.get(fold(event.nick)))
        if self._chat_log:
            self._chat_log.joined(event.nick, event.peer)

    def _left(self, event):
        if not self.closing:
            # A member still here under that nickname is not told it left:
            # another node reaped this one's lease while it was cut off from
            # Redis, and it claims its members' nicknames again.
            self._broadcast(event, self._members.get(fold(event.nick)))
        if self._chat_log:
            self._chat_log.left(event.nick)

    def _renamed(self, event):
        self._broadcast(event, self._members.get(fold(event.new)))
        if self._chat_log:
            self._chat_log.renamed(event.nick, event.new)

    def _private(self, event):
        recipient = self._members.get(fold(event.recipient))
        if recipient is not None:
            if recipient.nick != event.recipient:
                # Addressed without regard to case: to it as it spells itself.
                event = Private(event.sender, recipient.nick, event.text)
            self._deliver(recipient, event)

    def _new_mail(self, event):
        key = fold(event.account)
        participant = self._members.get(key)
        if participant is None or participant.account is None:
            return
        if self.clock is None:
            self._deliver(participant, event)
            return
        window = self._mail_windows.get(key)
        if window is None:
            # The first: at once, and later ones wait for the window's end.
            self._deliver(participant, event)
            self._open_mail_window(key)
        else:
            window.count += event.count
            window.latest = event

    def _open_mail_window(self, key):
        window = self._mail_windows[key] = _MailWindow()
        window.call = self.clock.callLater(self.mail_window, self._mail_window_ended, key)

    def _mail_window_ended(self, key):
        window = self._mail_windows.pop(key)
        if not window.count:
            return
        participant = self._members.get(key)
        if participant is None or participant.account is None:
            return
        latest = window.latest
        self._deliver(
            participant, NewMail(latest.account, latest.sender, latest.subject, window.count)
        )
        # Mail still coming: one notice a window, for as long as it comes.
        self._open_mail_window(key)

    def stop(self):
        """Cancel the notices still held back (the server is stopping)."""
        for window in self._mail_windows.values():
            if window.call.active():
                window.call.cancel()
        self._mail_windows.clear()

    def _broadcast(self, event, sender=None):
        # The room's hottest loop: one rendering per format, _deliver inlined.
        for format, group in list(self._formats.items()):
            data = event.render(format)
            self.deliveries += len(group) - (sender is not None and sender.format is format)
            for participant in list(group.values()):
                if participant is not sender:
                    try:
                        participant.send(data)
                    except Exception:
                        self._failed(participant)

    def _deliver(self, participant, event):
        self.deliveries += 1
        try:
            participant.send(event.render(participant.format))
        except Exception:
            self._failed(participant)

    def _failed(self, participant):
        self.log.failure("delivery to {nick} failed", nick=participant.nick)
        self.leave(participant)


class _MailWindow:
    __slots__ = ("count", "latest", "call")

    def __init__(self):
        self.count = 0
        self.latest = None
        self.call = None
