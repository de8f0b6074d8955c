"""
The work functions both SQL backends write alike: sessions, reading a
mailbox and deleting from it, the summary, forgiving login failures.
L{statements} makes them for a dialect: its parameter mark (C{?}, C{%s})
and how it compares a sender without case.
"""

from types import SimpleNamespace

from mailsvc import errors
from mailsvc.store import Message
from mailsvc.store.executor import reading


def statements(mark, same_sender):
    """
    The work functions below in a dialect: C{mark} is its parameter
    placeholder, C{same_sender} its condition that C{sender} is the
    parameter, without case. Marks a backend wants on them (C{quick}) it
    adds to its own.
    """
    shared = {}

    def share(work):
        shared[work.__name__] = work
        return work

    @share
    def add_session(db, token_hash, account, now):
        db.execute(
            "INSERT INTO sessions (token_hash, account, created, last_used)"
            " VALUES (%s, %s, %s, %s)" % ((mark,) * 4),
            (token_hash, account, now, now),
        )

    @share
    @reading
    def session_account(db, token_hash):
        return db.execute(
            "SELECT account, last_used FROM sessions WHERE token_hash = " + mark, (token_hash,)
        ).fetchone()

    @share
    def touch_session(db, token_hash, now):
        db.execute(
            "UPDATE sessions SET last_used = %s WHERE token_hash = %s" % (mark, mark),
            (now, token_hash),
        )

    @share
    def expire_sessions(db, before):
        return db.execute("DELETE FROM sessions WHERE last_used < " + mark, (before,)).rowcount

    @share
    def remove_session(db, token_hash):
        deleted = db.execute("DELETE FROM sessions WHERE token_hash = " + mark, (token_hash,))
        return deleted.rowcount > 0

    @share
    def forgive(db, key):
        db.execute("DELETE FROM login_failures WHERE key = " + mark, (key,))

    def mailbox_query(columns, account, sender, after=None):
        query = "SELECT " + columns + " FROM messages WHERE recipient = " + mark
        parameters = [account]
        if sender is not None:
            query += " AND " + same_sender
            parameters.append(sender)
        if after is not None:
            query += " AND id > " + mark
            parameters.append(after)
        return query, parameters

    @share
    @reading
    def extent(db, account, sender):
        # Over the (recipient, id) index; with a sender, each of the mailbox's rows.
        query, parameters = mailbox_query("count(*), max(id)", account, sender)
        found, newest = db.execute(query, parameters).fetchone()
        return found, newest

    @share
    @reading
    def headers(db, account, sender, after=None, limit=None):
        query, parameters = mailbox_query("id, sender, created, subject", account, sender, after)
        query += " ORDER BY id"
        if limit is not None:
            query += " LIMIT " + mark
            parameters.append(limit)
        return [Message(*row) for row in db.execute(query, parameters)]

    whole = "SELECT id, sender, created, subject, body, raw FROM messages WHERE recipient = "

    @share
    @reading
    def messages(db, account):
        return [Message(*row) for row in db.execute(whole + mark + " ORDER BY id", (account,))]

    @share
    @reading
    def sizes(db, account, measure):
        # The cursor reads a row at a time: one body in memory, and no source
        # at all (length() of a BLOB or bytea reads its size, not its bytes).
        rows = db.execute(
            "SELECT id, length(raw), sender, created, subject,"
            " CASE WHEN raw IS NULL THEN body END FROM messages"
            " WHERE recipient = " + mark + " ORDER BY id",
            (account,),
        )
        return [
            (id, octets if octets is not None else measure(Message(id, sender, date, subject, body)))
            for id, octets, sender, date, subject, body in rows
        ]

    @share
    @reading
    def message(db, account, message_id):
        if message_id is None:
            row = db.execute(whole + mark + " ORDER BY id LIMIT 1", (account,)).fetchone()
            if row is None:
                raise errors.EmptyMailbox()
        else:
            row = db.execute(
                whole + mark + " AND id = " + mark, (account, message_id)
            ).fetchone()
            if row is None:
                raise errors.NoSuchMessage("no such message: %d" % (message_id,))
        return Message(*row)

    @share
    def delete(db, account, message_id):
        message_id = message(db, account, message_id).id
        db.execute("DELETE FROM messages WHERE id = " + mark, (message_id,))
        return message_id

    @share
    def delete_subject(db, account, subject):
        return db.execute(
            "DELETE FROM messages WHERE recipient = %s AND subject = %s" % (mark, mark),
            (account, subject),
        ).rowcount

    @share
    @reading
    def summary(db):
        def one(query):
            return db.execute(query).fetchone()

        (accounts,) = one("SELECT count(*) FROM accounts")
        (sessions,) = one("SELECT count(*) FROM sessions")
        staged, staged_chars = one(
            "SELECT count(*), coalesce(sum(length(text)), 0) FROM staged"
        )
        # From the per-mailbox counts the triggers keep: one row a mailbox,
        # never a scan of the messages (80 MB of them took seconds of the one
        # database thread, and every write waited).
        stored, message_bytes, mailboxes, largest = one(
            "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0),"
            " count(*), coalesce(max(messages), 0) FROM mailbox_usage WHERE messages > 0"
        )
        # int(): PostgreSQL's sum of a bigint is a numeric (a Decimal).
        return {
            "accounts": accounts,
            "sessions": sessions,
            "staged": staged,
            "staged_chars": int(staged_chars),
            "messages": int(stored),
            "message_chars": int(message_bytes),
            "mailboxes": mailboxes,
            "largest_mailbox": largest,
        }

    return SimpleNamespace(**shared)
