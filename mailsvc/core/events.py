"""
What the room tells its participants, and what travels over the bus.

An event is rendered by each front into its own words, once per format however
many participants receive it: L{Event.render} keeps what each format made of it,
so a thousand line-chat clients share one bytes object and every IRC client
another.
"""


class Event:
    __slots__ = ("_rendered",)

    def __init__(self):
        self._rendered = {}

    def render(self, format):
        """C{format(self)}, computed once per format."""
        rendered = self._rendered.get(format)
        if rendered is None:
            rendered = self._rendered[format] = format(self)
        return rendered

    def __repr__(self):
        fields = ", ".join(
            "%s=%r" % (name, getattr(self, name))
            for cls in type(self).__mro__
            for name in getattr(cls, "__slots__", ())
            if not name.startswith("_")
        )
        return "%s(%s)" % (type(self).__name__, fields)


ACTION = "\x01ACTION "


def action(text):
    """What C{text} says is done, for an action ("/me waves": IRC's CTCP
    C{"\\x01ACTION waves\\x01"}, the form every front stores), or None."""
    if text.startswith(ACTION):
        return text[len(ACTION):].rstrip("\x01")
    return None


def as_action(text):
    """C{text} ("waves") as an action, in IRC's CTCP form."""
    return ACTION + text + "\x01"


class Said(Event):
    """C{nick} said C{text} to the room at C{time} (seconds since the epoch,
    or None: unknown), which IRC's server-time tags show."""

    __slots__ = ("nick", "text", "time")

    def __init__(self, nick, text, time=None):
        super().__init__()
        self.nick = nick
        self.text = text
        self.time = time


class Joined(Event):
    __slots__ = ("nick", "peer")

    def __init__(self, nick, peer=None):
        super().__init__()
        self.nick = nick
        self.peer = peer


class Left(Event):
    __slots__ = ("nick",)

    def __init__(self, nick):
        super().__init__()
        self.nick = nick


class Renamed(Event):
    """The member called C{nick} is now called C{new}."""

    __slots__ = ("nick", "new")

    def __init__(self, nick, new):
        super().__init__()
        self.nick = nick
        self.new = new


class Private(Event):
    """C{sender} said C{text} to C{recipient} alone."""

    __slots__ = ("sender", "recipient", "text")

    def __init__(self, sender, recipient, text):
        super().__init__()
        self.sender = sender
        self.recipient = recipient
        self.text = text


class NewMail(Event):
    """C{count} messages arrived in C{account}'s mailbox, the latest from
    C{sender} with C{subject} (the room coalesces notices: L{ChatRoom})."""

    __slots__ = ("account", "sender", "subject", "count")

    def __init__(self, account, sender, subject, count=1):
        super().__init__()
        self.account = account
        self.sender = sender
        self.subject = subject
        self.count = count


class History(Event):
    """The room's recent L{Said} events, oldest first, for a newcomer."""

    __slots__ = ("events",)

    def __init__(self, events):
        super().__init__()
        self.events = events


class Shutdown(Event):
    """The server stops in C{seconds}."""

    __slots__ = ("seconds",)

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds


# Cache invalidations: what one node changed that others may have cached.


class SessionEnded(Event):
    __slots__ = ("token_hash",)

    def __init__(self, token_hash):
        super().__init__()
        self.token_hash = token_hash


class MailboxChanged(Event):
    __slots__ = ("account",)

    def __init__(self, account):
        super().__init__()
        self.account = account


# On the wire between nodes (mailsvc.bus.redis): JSON, the type's name and its
# public fields; a History carries its events the same way.

import json  # noqa: E402

_TYPES = {
    cls.__name__: cls
    for cls in (Said, Joined, Left, Renamed, Private, NewMail, History, Shutdown,
                SessionEnded, MailboxChanged)
}


def _fields(event):
    return [name for name in type(event).__slots__ if not name.startswith("_")]


def _value(value):
    # JSON has no bytes (a session's token hash): hex in a one-key object.
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _unvalue(value):
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value


def _plain(event):
    values = {name: _value(getattr(event, name)) for name in _fields(event)}
    if isinstance(event, History):
        values["events"] = [_plain(e) for e in event.events]
    return [type(event).__name__, values]


def _event(plain):
    name, values = plain
    cls = _TYPES[name]
    values = {key: _unvalue(value) for key, value in values.items()}
    if cls is History:
        values = dict(values, events=[_event(e) for e in values["events"]])
    return cls(**values)


def to_wire(event):
    """C{event} as one line of JSON text (never a newline in it)."""
    return json.dumps(_plain(event), ensure_ascii=False, separators=(",", ":"))


def from_wire(text):
    """The event L{to_wire} made C{text} of. ValueError, KeyError or
    TypeError for text it could not have made."""
    return _event(json.loads(text))
