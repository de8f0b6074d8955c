"""
User text made safe for a log that is read by lines or on a terminal.

A bare CR, U+0085 (NEL) or U+2028/2029 starts a new line for many readers, and
an escape sequence reaches the terminal of whoever runs C{tail -f}: written as
is, a chat line could forge a genuine-looking log line. L{escape} writes every
character that Python does not call printable (the categories Cc, Cf, Cs, Co,
Cn, Zl, Zp and every space but U+0020) as a Python escape, and the backslash as
two, so the log stays one line per entry and can be read back unambiguously.
"""


def _escaped(character):
    if character == "\\":
        return "\\\\"
    code = ord(character)
    if code < 0x100:
        return "\\x%02x" % (code,)
    if code < 0x10000:
        return "\\u%04x" % (code,)
    return "\\U%08x" % (code,)


def escape(text):
    """C{text} with every unprintable character (and the backslash) escaped."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, at the cost of one scan
    return "".join(_escaped(c) if c == "\\" or not c.isprintable() else c for c in text)
