"""
The versioned SQLite schema.

C{PRAGMA user_version} records how many of L{MIGRATIONS} a database has had.
Append new migrations; never edit one that has shipped.
"""

MIGRATIONS = [
    # 1: accounts, sessions, per-session staging, mailboxes.
    """
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL
    );
    -- Only a hash of each cookie is kept: a copy of the database is not a
    -- bag of live sessions.
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts(name),
        created REAL NOT NULL
    );
    CREATE TABLE staged (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session BLOB NOT NULL REFERENCES sessions(token_hash) ON DELETE CASCADE,
        text TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX staged_by_session ON staged(session, id);
    -- AUTOINCREMENT: message ids are never reused, even after deletes.
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient TEXT NOT NULL REFERENCES accounts(name),
        sender TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX messages_by_recipient ON messages(recipient, id);
    """,
    # 2: what each mailbox holds, kept by triggers, for quotas; when each
    # session was last used, for expiry.
    """
    CREATE TABLE mailbox_usage (
        account TEXT PRIMARY KEY REFERENCES accounts(name),
        messages INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO mailbox_usage (account, messages, bytes)
        SELECT recipient, count(*), sum(length(CAST(subject || body AS BLOB)))
        FROM messages GROUP BY recipient;
    CREATE TRIGGER mailbox_usage_insert AFTER INSERT ON messages BEGIN
        INSERT OR IGNORE INTO mailbox_usage (account, messages, bytes)
            VALUES (new.recipient, 0, 0);
        UPDATE mailbox_usage
            SET messages = messages + 1,
                bytes = bytes + length(CAST(new.subject || new.body AS BLOB))
            WHERE account = new.recipient;
    END;
    CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON messages BEGIN
        UPDATE mailbox_usage
            SET messages = messages - 1,
                bytes = bytes - length(CAST(old.subject || old.body AS BLOB))
            WHERE account = old.recipient;
    END;
    ALTER TABLE sessions ADD COLUMN last_used REAL;
    UPDATE sessions SET last_used = created;
    CREATE INDEX sessions_by_last_use ON sessions(last_used);
    """,
]


class SchemaTooNew(Exception):
    """The database was written by a newer mailsvc."""


def migrate(connection):
    """
    Bring C{connection}'s database up to the newest schema, one migration
    per transaction.
    """
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            "database schema version %d is newer than this mailsvc (%d)"
            % (version, len(MIGRATIONS))
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        connection.executescript(
            "BEGIN IMMEDIATE;\n%s\nPRAGMA user_version = %d;\nCOMMIT;" % (script, number)
        )
