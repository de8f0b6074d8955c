"""
The PostgreSQL store's SQL: one work function a request, C{work(connection,
*args)}, run on the database thread inside a batch's transaction
(L{mailsvc.store.postgres}).

Most of them can fail only before they write (a refusal is raised after
reads alone), so they need no savepoint; those that can fail after writing
are C{guarded} and get one. Every write that could meet another node's
(an account's name, a session's staging, a mailbox's quota) is written so
that it waits for the other instead of breaking the transaction: C{ON
CONFLICT}, C{SELECT ... FOR UPDATE}.
"""

from mailsvc import errors
from mailsvc.store import sql
from mailsvc.store.executor import guarded, reading


def _text(*values):
    """PostgreSQL's text holds no NUL character: refuse it before writing."""
    for value in values:
        if "\x00" in value:
            raise errors.InvalidText()


def add_account(db, name, password_hash, now):
    row = db.execute(
        "INSERT INTO accounts (name, password_hash, created) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING name",
        (name, password_hash, now),
    ).fetchone()
    if row is None:
        raise errors.NameTaken()
    db.execute(
        "INSERT INTO mailbox_usage (account, messages, bytes) VALUES (%s, 0, 0)", (name,)
    )
    return name


@reading
def account(db, name):
    return db.execute(
        "SELECT name, password_hash FROM accounts WHERE lower(name) = lower(%s)", (name,)
    ).fetchone()


# What both dialects write alike (mailsvc.store.sql).
_common = sql.statements("%s", "lower(sender) = lower(%s)")
# add_session, session_account, messages, sizes, ...: every function it shares.
globals().update(vars(_common))


# Guarded: another node may remove the session between this read and the
# insert's foreign key check, which then breaks the transaction.
@guarded
def stage(db, token_hash, text, now, quotas):
    _text(text)
    (sessions, staged) = db.execute(
        "SELECT count(*), (SELECT count(*) FROM staged WHERE session = %s)"
        " FROM sessions WHERE token_hash = %s",
        (token_hash, token_hash),
    ).fetchone()
    if not sessions:
        raise errors.Conflict()
    if quotas.staged is not None and staged >= quotas.staged:
        raise errors.TooManyStaged(quotas.staged)
    db.execute(
        "INSERT INTO staged (session, text, created) VALUES (%s, %s, %s)",
        (token_hash, text, now),
    )


def _recipient(db, name, size, quotas):
    """The account's spelling of C{name}, its mailbox's usage row locked
    until the transaction ends, once C{size} more bytes fit in it."""
    row = db.execute(
        "SELECT account, messages, bytes FROM mailbox_usage"
        " WHERE account = (SELECT name FROM accounts WHERE lower(name) = lower(%s))"
        " FOR UPDATE",
        (name,),
    ).fetchone()
    if row is None:
        raise errors.UnknownUser("no such user: %s" % (name,))
    recipient, messages, used = row
    if quotas.messages is not None and messages + 1 > quotas.messages:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d messages" % (recipient, quotas.messages)
        )
    if quotas.bytes is not None and used + size > quotas.bytes:
        raise errors.MailboxFull(
            "mailbox of %s is full: at most %d bytes" % (recipient, quotas.bytes)
        )
    return recipient


def _size(subject, body, raw):
    return len((subject + body).encode("utf-8")) + len(raw or b"")


def _insert(db, recipient, sender, subject, body, now, raw):
    (message_id,) = db.execute(
        "INSERT INTO messages (recipient, sender, subject, body, created, raw)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (recipient, sender, subject, body, now, raw),
    ).fetchone()
    return message_id


def deliver_staged(db, token_hash, sender, recipient, now, quotas):
    # Locked: the same session's text cannot be delivered twice by two nodes.
    row = db.execute(
        "SELECT id, text FROM staged WHERE session = %s ORDER BY id DESC LIMIT 1 FOR UPDATE",
        (token_hash,),
    ).fetchone()
    if row is None:
        raise errors.NothingStaged()
    staged_id, text = row
    recipient = _recipient(db, recipient, _size("", text, None), quotas)
    message_id = _insert(db, recipient, sender, "", text, now, None)
    db.execute("DELETE FROM staged WHERE id = %s", (staged_id,))
    return message_id


def deliver(db, recipient, sender, subject, body, now, quotas, raw=None):
    _text(sender, subject, body)
    recipient = _recipient(db, recipient, _size(subject, body, raw), quotas)
    return _insert(db, recipient, sender, subject, body, now, raw)


# Guarded: one savepoint for the lot, so a refusal for one mailbox undoes
# the others.
@guarded
def deliver_all(db, recipients, sender, subject, body, now, quotas, raw):
    _text(sender, subject, body)
    # Mailboxes are locked in one order on every node, so that two such
    # deliveries cannot each wait for the other.
    size = _size(subject, body, raw)
    accounts = {
        name: _recipient(db, name, size, quotas)
        for name in sorted(set(r.lower() for r in recipients))
    }
    return [_insert(db, accounts[r.lower()], sender, subject, body, now, raw) for r in recipients]


def delete_ids(db, account, message_ids):
    return db.execute(
        "DELETE FROM messages WHERE recipient = %s AND id = ANY(%s)",
        (account, list(message_ids)),
    ).rowcount


@reading
def count(db, account):
    row = db.execute(
        "SELECT messages FROM mailbox_usage WHERE account = %s", (account,)
    ).fetchone()
    return row[0] if row else 0


@reading
def failures(db, keys):
    rows = db.execute(
        "SELECT key, failures, last_failure FROM login_failures WHERE key = ANY(%s)",
        (list(keys),),
    )
    return {key: (count, last) for key, count, last in rows}


def record_failure(db, key, now, forget_after):
    # A key whose last failure is older than forget_after starts afresh.
    (count,) = db.execute(
        "INSERT INTO login_failures AS f (key, failures, last_failure) VALUES (%s, 1, %s)"
        " ON CONFLICT (key) DO UPDATE SET"
        " failures = CASE WHEN f.last_failure < %s THEN 1 ELSE f.failures + 1 END,"
        " last_failure = excluded.last_failure"
        " RETURNING failures",
        (key, now, now - forget_after),
    ).fetchone()
    return count
