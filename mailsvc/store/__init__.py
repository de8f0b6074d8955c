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


def sql_steps(package):
    """The text of each C{schema/*.sql} file of C{package}, in the order of
    their names: a backend's schema, one upgrade step a file."""
    from importlib import resources

    folder = resources.files(package) / "schema"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


def sqlite_path(url):
    """The file of a C{sqlite:} URL (C{sqlite:///abs/path}, C{sqlite:rel/path}),
    or C{url} itself when it is a plain path."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        return path
    return url


class OpenFailed(Exception):
    """The database cannot be opened or prepared at start; the message says why."""


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_shared(url):
    """Whether C{url} names a database that several nodes may share."""
    return url.startswith(POSTGRES_SCHEMES)


def open_store(url, reactor, quotas=Quotas()):
    """
    The store at C{url}, created or upgraded now, so that a bad path or a
    database out of reach fails before the server listens (L{OpenFailed}):
    a path or C{sqlite:} URL is an SQLite database; a C{postgresql://} or
    C{postgres://} URL (any libpq URL) a PostgreSQL one.
    """
    if is_shared(url):
        from mailsvc.store.postgres import PostgresStorage

        return PostgresStorage.open(url, reactor, quotas)
    if "://" in url and not url.startswith("sqlite:"):
        raise OpenFailed("unknown database URL scheme: %s" % (url.split(":", 1)[0],))
    import sqlite3

    from mailsvc.store.sqlite import SQLiteStorage
    from mailsvc.store.sqlite.schema import SchemaTooNew

    path = sqlite_path(url)
    if path != ":memory:":
        path = os.path.abspath(path)
    try:
        return SQLiteStorage.open(path, reactor, quotas)
    except (sqlite3.Error, SchemaTooNew) as e:
        raise OpenFailed("cannot use the database %s: %s" % (path, e)) from e
