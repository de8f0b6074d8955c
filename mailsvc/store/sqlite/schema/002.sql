-- 2: what each mailbox holds, kept by triggers, for quotas; when each
-- session was last used, for expiry.
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

