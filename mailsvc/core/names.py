"""What account names, passwords and cookies look like."""

import re

NAME = re.compile(r"[A-Za-z0-9]{1,32}\Z")

# 43 URL-safe characters (256 random bits): longer than any user name, so a
# word of this shape at the end of a request is always a cookie, never a name.
COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\Z")

MAX_PASSWORD = 1024
