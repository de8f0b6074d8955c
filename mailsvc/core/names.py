"""What account names, passwords, cookies and subjects look like."""

import re

NAME = re.compile(r"[A-Za-z0-9]{1,32}\Z")

# 43 URL-safe characters (256 random bits): longer than any user name, so a
# word of this shape at the end of a request is always a cookie, never a name.
COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\Z")

MAX_PASSWORD = 1024

# The longest subject, in characters: RFC 5322's bound on a header line.
MAX_SUBJECT = 998
