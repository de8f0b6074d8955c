-- 1: accounts, sessions, per-session staging, mailboxes.
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

