"""
The SQLite store's SQL: one work function a request, C{work(connection,
*args)}, run on the database thread inside a savepoint of its own
(L{mailsvc.store.sqlite}).
"""

import sqlite3

from mailsvc import errors
from mailsvc.store import Message
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


def add_session(db, token_hash, account, now):
    db.execute(
        "INSERT INTO sessions (token_hash, account, created, last_used)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, account, now, now),
    )


@quick
def session_account(db, token_hash):
    return db.execute(
        "SELECT account, last_used FROM sessions WHERE token_hash = ?", (token_hash,)
    ).fetchone()


def touch_session(db, token_hash, now):
    db.execute("UPDATE sessions SET last_used = ? WHERE token_hash = ?", (now, token_hash))


def expire_sessions(db, before):
    return db.execute("DELETE FROM sessions WHERE last_used < ?", (before,)).rowcount


def remove_session(db, token_hash):
    return (
        db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)).rowcount
        > 0
    )


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


@reading
def messages(db, account):
    rows = db.execute(
        "SELECT id, sender, created, subject, body, raw FROM messages"
        " WHERE recipient = ? ORDER BY id",
        (account,),
    )
    return [Message(*row) for row in rows]


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


def _mailbox_query(columns, account, sender, after=None):
    query = "SELECT " + columns + " FROM messages WHERE recipient = ?"
    parameters = [account]
    if sender is not None:
        query += " AND sender = ? COLLATE NOCASE"
        parameters.append(sender)
    if after is not None:
        query += " AND id > ?"
        parameters.append(after)
    return query, parameters


@reading
def extent(db, account, sender):
    # Over the (recipient, id) index; with a sender, each of the mailbox's rows.
    query, parameters = _mailbox_query("count(*), max(id)", account, sender)
    count, newest = db.execute(query, parameters).fetchone()
    return count, newest


@reading
def headers(db, account, sender, after=None, limit=None):
    query, parameters = _mailbox_query("id, sender, created, subject", account, sender, after)
    query += " ORDER BY id"
    if limit is not None:
        query += " LIMIT ?"
        parameters.append(limit)
    return [Message(*row) for row in db.execute(query, parameters)]


@reading
def message(db, account, message_id):
    query = (
        "SELECT id, sender, created, subject, body, raw FROM messages WHERE recipient = ?"
    )
    if message_id is None:
        row = db.execute(query + " ORDER BY id LIMIT 1", (account,)).fetchone()
        if row is None:
            raise errors.EmptyMailbox()
    else:
        row = db.execute(query + " AND id = ?", (account, message_id)).fetchone()
        if row is None:
            raise errors.NoSuchMessage("no such message: %d" % (message_id,))
    return Message(*row)


def delete(db, account, message_id):
    message_id = message(db, account, message_id).id
    db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    return message_id


def delete_subject(db, account, subject):
    return db.execute(
        "DELETE FROM messages WHERE recipient = ? AND subject = ?", (account, subject)
    ).rowcount


@reading
def summary(db):
    def one(query):
        return db.execute(query).fetchone()

    (accounts,) = one("SELECT count(*) FROM accounts")
    (sessions,) = one("SELECT count(*) FROM sessions")
    staged, staged_bytes = one("SELECT count(*), coalesce(sum(length(text)), 0) FROM staged")
    # From the per-mailbox counts the triggers keep (schema 002): one row a
    # mailbox, never a scan of the messages (80 MB of them took seconds of the
    # one database thread, and every write waited).
    messages, message_bytes, mailboxes, largest = one(
        "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0),"
        " count(*), coalesce(max(messages), 0) FROM mailbox_usage WHERE messages > 0"
    )
    return {
        "accounts": accounts,
        "sessions": sessions,
        "staged": staged,
        "staged_chars": staged_bytes,
        "messages": messages,
        "message_chars": message_bytes,
        "mailboxes": mailboxes,
        "largest_mailbox": largest,
    }


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


def forgive(db, key):
    db.execute("DELETE FROM login_failures WHERE key = ?", (key,))
