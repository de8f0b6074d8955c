"""
How the terminal client shows things: chat lines with a time stamp and a
colour per nickname, and the mail list as a table that fits the width.

Pure functions of their arguments (the time and the width are passed in), so
that the tests need no terminal.
"""

import re
import time
import zlib

# Nicknames get one of these, by a hash of the nickname: the same colour for
# the same person on every screen and in every session (Python's hash() is
# salted per process; CRC-32 is not).
NICK_COLOURS = [
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
]

STAMP = "class:stamp"
OWN = "bold reverse"


def nick_colour(nick):
    return NICK_COLOURS[zlib.crc32(nick.lower().encode("utf-8")) % len(NICK_COLOURS)]


def stamp(seconds):
    """The short local time stamp before every chat line."""
    return time.strftime("%H:%M", time.localtime(seconds))


def mentions(text, nick):
    """C{nick} stands in C{text} as a word of its own (any case)."""
    if not nick:
        return False
    pattern = r"(?<![A-Za-z0-9_-])%s(?![A-Za-z0-9_-])" % (re.escape(nick),)
    return re.search(pattern, text, re.IGNORECASE) is not None


def _said(nick, text, me, colour_text=""):
    style = OWN if nick.lower() == (me or "").lower() else "bold " + nick_colour(nick)
    if mentions(text, me) and nick.lower() != (me or "").lower():
        colour_text = "bold ansiyellow"
    return [("", "<"), (style, nick), ("", "> "), (colour_text, text)]


def chat_line(event, me, now):
    """
    The formatted text (prompt_toolkit fragments) for one L{ChatEvent}: a
    time stamp, then a look per kind, so that private messages, notices and
    the shutdown notice stand apart from what is said in the room.
    """
    head = [(STAMP, stamp(now) + " ")]
    kind = event.kind
    if kind == "message":
        return head + _said(event.nick, event.text, me)
    if kind == "history":  # said before we came: when, the line chat does not say
        return [(STAMP, "--:-- "), ("ansibrightblack", "[history] <%s> %s" % (event.nick, event.text))]
    if kind == "private":
        return head + [
            ("bold ansimagenta", "*%s*" % (event.nick,)),
            ("ansimagenta", " " + event.text),
        ]
    if kind == "shutdown":
        return head + [
            ("bold ansired", "*** the server is shutting down in %d seconds" % event.seconds)
        ]
    if kind == "error":
        return head + [("ansired", "-!- error: " + event.text)]
    match = re.match(r"(\S+) (joined|left)\Z", event.text)
    if match:
        arrow = "-->" if match.group(2) == "joined" else "<--"
        colour = "ansigreen" if match.group(2) == "joined" else "ansiyellow"
        return head + [
            (colour, arrow + " "),
            (nick_colour(match.group(1)), match.group(1)),
            ("", " " + match.group(2)),
        ]
    return head + [("ansicyan", "-!- " + event.text)]


def own_line(line, me, now):
    """What the person typed, as the room will see it (the server does not echo)."""
    head = [(STAMP, stamp(now) + " ")]
    if line.startswith("//"):
        return head + _said(me, line[1:], me)
    if not line.startswith("/"):
        return head + _said(me, line, me)
    match = re.match(r"/msg\s+(\S+)\s+(.*)\Z", line, re.IGNORECASE | re.DOTALL)
    if match:
        return head + [
            ("bold ansimagenta", "-> *%s*" % (match.group(1),)),
            ("ansimagenta", " " + match.group(2)),
        ]
    return head + [("ansibrightblack", line)]


def status_line(text, now):
    """The client's own notes (reconnecting, not connected)."""
    return [(STAMP, stamp(now) + " "), ("bold ansicyan", "-!- " + text)]


def _cut(text, width):
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}" if width > 1 else text[:width]


def message_table(messages, width):
    """
    The mail list as lines no wider than C{width}: id, sender, date and
    subject in aligned columns under a header. The subject gives way first,
    then the sender (down to 8 characters), then the date's seconds go.
    """
    if not messages:
        return ["no messages"]
    headers = ("ID", "FROM", "DATE", "SUBJECT")
    rows = [(str(m.id), m.sender, m.date, m.subject) for m in messages]
    id_width = max(len(headers[0]), *(len(r[0]) for r in rows))
    sender_width = max(len(headers[1]), *(len(r[1]) for r in rows))
    date_width = max(len(headers[2]), *(len(r[2]) for r in rows))
    gaps = 3 * 2
    subject_width = width - (id_width + sender_width + date_width + gaps)
    if subject_width < 10 and sender_width > 8:
        sender_width = max(8, sender_width - (10 - subject_width))
        subject_width = width - (id_width + sender_width + date_width + gaps)
    if subject_width < 10 and date_width > 16:
        date_width = 16  # 2026-11-21T14:41, without the seconds and the zone
        subject_width = width - (id_width + sender_width + date_width + gaps)
    lines = []
    for row in [headers] + rows:
        line = "%s  %s  %s  %s" % (
            row[0].rjust(id_width),
            _cut(row[1], sender_width).ljust(sender_width),
            row[2][:date_width].ljust(date_width),
            _cut(row[3], max(subject_width, 0)),
        )
        lines.append(line.rstrip()[:width])
    return lines
