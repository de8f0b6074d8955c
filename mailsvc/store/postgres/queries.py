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
from mailsvc.store import Message
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


def add_session(db, token_hash, account, now):
    db.execute(
        "INSERT INTO sessions (token_hash, account, created, last_used)"
        " VALUES (%s, %s, %s, %s)",
        (token_hash, account, now, now),
    )


@reading
def session_account(db, token_hash):
    return db.execute(
        "SELECT account, last_used FROM sessions WHERE token_hash = %s", (token_hash,)
    ).fetchone()


def touch_session(db, token_hash, now):
    db.execute("UPDATE sessions SET last_used = %s WHERE token_hash = %s", (now, token_hash))


def expire_sessions(db, before):
    return db.execute("DELETE FROM sessions WHERE last_used < %s", (before,)).rowcount


def remove_session(db, token_hash):
    return db.execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash,)).rowcount > 0


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


@reading
def messages(db, account):
    rows = db.execute(
        "SELECT id, sender, created, subject, body, raw FROM messages"
        " WHERE recipient = %s ORDER BY id",
        (account,),
    )
    return [_message(row) for row in rows]


def _message(row):
    id, sender, created, subject, body, raw = row
    return Message(id, sender, created, subject, body, None if raw is None else bytes(raw))


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


def _mailbox_query(columns, account, sender, after=None):
    query = "SELECT " + columns + " FROM messages WHERE recipient = %s"
    parameters = [account]
    if sender is not None:
        query += " AND lower(sender) = lower(%s)"
        parameters.append(sender)
    if after is not None:
        query += " AND id > %s"
        parameters.append(after)
    return query, parameters


@reading
def extent(db, account, sender):
    query, parameters = _mailbox_query("count(*), max(id)", account, sender)
    found, newest = db.execute(query, parameters).fetchone()
    return found, newest


@reading
def headers(db, account, sender, after=None, limit=None):
    query, parameters = _mailbox_query("id, sender, created, subject", account, sender, after)
    query += " ORDER BY id"
    if limit is not None:
        query += " LIMIT %s"
        parameters.append(limit)
    return [Message(*row) for row in db.execute(query, parameters)]


@reading
def message(db, account, message_id):
    query = (
        "SELECT id, sender, created, subject, body, raw FROM messages WHERE recipient = %s"
    )
    if message_id is None:
        row = db.execute(query + " ORDER BY id LIMIT 1", (account,)).fetchone()
        if row is None:
            raise errors.EmptyMailbox()
    else:
        row = db.execute(query + " AND id = %s", (account, message_id)).fetchone()
        if row is None:
            raise errors.NoSuchMessage("no such message: %d" % (message_id,))
    return _message(row)


def delete(db, account, message_id):
    message_id = message(db, account, message_id).id
    db.execute("DELETE FROM messages WHERE id = %s", (message_id,))
    return message_id


def delete_subject(db, account, subject):
    return db.execute(
        "DELETE FROM messages WHERE recipient = %s AND subject = %s", (account, subject)
    ).rowcount


@reading
def summary(db):
    def one(query):
        return db.execute(query).fetchone()

    (accounts,) = one("SELECT count(*) FROM accounts")
    (sessions,) = one("SELECT count(*) FROM sessions")
    staged, staged_chars = one("SELECT count(*), coalesce(sum(length(text)), 0) FROM staged")
    messages, message_bytes, mailboxes, largest = one(
        "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0),"
        " count(*), coalesce(max(messages), 0) FROM mailbox_usage WHERE messages > 0"
    )
    return {
        "accounts": accounts,
        "sessions": sessions,
        "staged": staged,
        "staged_chars": staged_chars,
        "messages": int(messages),
        "message_chars": int(message_bytes),
        "mailboxes": mailboxes,
        "largest_mailbox": largest,
    }


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


def forgive(db, key):
    db.execute("DELETE FROM login_failures WHERE key = %s", (key,))
