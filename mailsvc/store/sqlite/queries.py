"""
The SQLite store's SQL: one work function a request, C{work(connection,
*args)}, run on the database thread inside a savepoint of its own
(L{mailsvc.store.sqlite}).
"""

import sqlite3

from mailsvc import errors
from mailsvc.store import sql
from mailsvc.store.executor import quick, reading

def add_account(db, name, password_hash, now):
    try:
        db.execute(
            "INSERT INTO accounts (name, password_hash, created) VALUES (?, ?, ?)",
            (name, password_hash, now),
        )
    except sqlite3.IntegrityError:
        raise errors.NameTaken()
    return name


@quick
def account(db, name):
    return db.execute(
        "SELECT name, password_hash FROM accounts WHERE name = ?", (name,)
    ).fetchone()


# What both dialects write alike (mailsvc.store.sql).
_common = sql.statements("?", "sender = ? COLLATE NOCASE")
# add_session, session_account, messages, sizes, ...: every function it shares.
globals().update(vars(_common))
quick(_common.session_account)


def stage(db, token_hash, text, now, quotas):
    if quotas.staged is not None:
        (staged,) = db.execute(
            "SELECT count(*) FROM staged WHERE session = ?", (token_hash,)
        ).fetchone()
        if staged >= quotas.staged:
            raise errors.TooManyStaged(quotas.staged)
    db.execute(
        "INSERT INTO staged (session, text, created) VALUES (?, ?, ?)",
        (token_hash, text, now),
    )


def _recipient(db, name):
    row = db.execute("SELECT name FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise errors.UnknownUser("no such user: %s" % (name,))
    return row[0]


def deliver_staged(db, token_hash, sender, recipient, now, quotas):
    row = db.execute(
        "SELECT id, text FROM staged WHERE session = ? ORDER BY id DESC LIMIT 1",
        (token_hash,),
    ).fetchone()
    if row is None:
        raise errors.NothingStaged()
    staged_id, text = row
    message_id = deliver(db, recipient, sender, "", text, now, quotas)
    db.execute("DELETE FROM staged WHERE id = ?", (staged_id,))
    return message_id


def deliver(db, recipient, sender, subject, body, now, quotas, raw=None):
    recipient = _recipient(db, recipient)
    if quotas.messages is not None or quotas.bytes is not None:
        size = len((subject + body).encode("utf-8")) + len(raw or b"")
        _check_quota(db, recipient, size, quotas)
    return db.execute(
        "INSERT INTO messages (recipient, sender, subject, body, created, raw)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (recipient, sender, subject, body, now, raw),
    ).lastrowid


def deliver_all(db, recipients, sender, subject, body, now, quotas, raw):
    # One savepoint for the lot: a refusal for one mailbox undoes the others.
    return [deliver(db, r, sender, subject, body, now, quotas, raw) for r in recipients]


def delete_ids(db, account, message_ids):
    deleted = 0
    for message_id in message_ids:
        deleted += db.execute(
            "DELETE FROM messages WHERE recipient = ? AND id = ?", (account, message_id)
        ).rowcount
    return deleted


def _check_quota(db, recipient, size, quotas):
    row = db.execute(
        "SELECT messages, bytes FROM mailbox_usage WHERE account = ?", (recipient,)
    ).fetchone()
    messages, used = row or (0, 0)
    if quotas.messages is not None and messages + 1 > quotas.messages:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d messages" % (recipient, quotas.messages)
        )
    if quotas.bytes is not None and used + size > quotas.bytes:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d bytes" % (recipient, quotas.bytes)
        )


@quick
def count(db, account):
    # Kept by triggers (schema.py): no scan of the mailbox.
    row = db.execute(
        "SELECT messages FROM mailbox_usage WHERE account = ?", (account,)
    ).fetchone()
    return row[0] if row else 0


# Failed logins, per throttle key, for throttling across nodes
# (mailsvc.core.auth): read by every node, so that an attacker gains nothing
# by spreading guesses over them.


@reading
def failures(db, keys):
    found = {}
    for key in keys:
        row = db.execute(
            "SELECT failures, last_failure FROM login_failures WHERE key = ?", (key,)
        ).fetchone()
        if row is not None:
            found[key] = tuple(row)
    return found


def record_failure(db, key, now, forget_after):
    # A key whose last failure is older than forget_after starts afresh.
    db.execute(
        "INSERT INTO login_failures (key, failures, last_failure) VALUES (?, 1, ?)"
        " ON CONFLICT (key) DO UPDATE SET"
        " failures = CASE WHEN login_failures.last_failure < ? THEN 1"
        " ELSE login_failures.failures + 1 END,"
        " last_failure = excluded.last_failure",
        (key, now, now - forget_after),
    )
    (count,) = db.execute(
        "SELECT failures FROM login_failures WHERE key = ?", (key,)
    ).fetchone()
    return count
