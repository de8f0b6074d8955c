"""What account names, passwords, cookies and subjects look like."""

import re

NAME = re.compile(r"[A-Za-z0-9]{1,32}\Z")

# 43 URL-safe characters (256 random bits): longer than any user name, so a
# word of this shape at the end of a request is always a cookie, never a name.
COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\Z")

MAX_PASSWORD = 1024

# Upper-case ASCII letters to lower case, and nothing else: str.lower() would
# also fold U+212A KELVIN SIGN to "k" (and U+0130 to "i̇"), so that a name no
# account may have would stand for one that exists.
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def fold(name):
    """C{name} with its ASCII letters in lower case: the key of a name or
    nickname wherever case must not matter. Never folds beyond ASCII."""
    return name.translate(_ASCII_LOWER)
# The longest subject, in characters: RFC 5322's bound on a header line.
MAX_SUBJECT = 998
