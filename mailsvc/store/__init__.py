"""
Durable state behind L{mailsvc.interfaces.IMailStorage}: what every backend
shares, and L{open_store}, which picks a backend by URL.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Quotas:
    """What one mailbox and one session may hold; None is no limit."""

    messages: int = None
    bytes: int = None
    staged: int = None


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    date: float
    subject: str
    body: str = ""
    # The RFC 5322 source of a message that arrived by SMTP (bytes, lines
    # ending in CRLF), or None for one sent on the mail port or the chat:
    # then subject and body are all there is (see mailsvc.core.rfc5322).
    raw: bytes = None


def sqlite_path(url):
    """The file of a C{sqlite:} URL (C{sqlite:///abs/path}, C{sqlite:rel/path}),
    or C{url} itself when it is a plain path."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        return path
    return url


def open_store(url, reactor, quotas=Quotas()):
    """
    The store at C{url}: a path or C{sqlite:} URL is an SQLite database
    (created and migrated now, so that a bad path fails before the server
    listens). Other backends plug in here.
    """
    if "://" in url and not url.startswith("sqlite:"):
        raise ValueError("unknown database URL scheme: %s" % (url.split(":", 1)[0],))
    from mailsvc.store.sqlite import SQLiteStorage

    path = sqlite_path(url)
    if path != ":memory:":
        path = os.path.abspath(path)
    return SQLiteStorage.open(path, reactor, quotas)
