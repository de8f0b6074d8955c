-- 3: a message that arrived by SMTP keeps its RFC 5322 source (raw); its
-- subject and body columns hold what the mail port shows of it. The raw
-- source counts for the mailbox's bytes too.
ALTER TABLE messages ADD COLUMN raw BLOB;
DROP TRIGGER mailbox_usage_insert;
DROP TRIGGER mailbox_usage_delete;
CREATE TRIGGER mailbox_usage_insert AFTER INSERT ON messages BEGIN
    INSERT OR IGNORE INTO mailbox_usage (account, messages, bytes)
        VALUES (new.recipient, 0, 0);
    UPDATE mailbox_usage
        SET messages = messages + 1,
            bytes = bytes + length(CAST(new.subject || new.body AS BLOB))
                + coalesce(length(new.raw), 0)
        WHERE account = new.recipient;
END;
CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON messages BEGIN
    UPDATE mailbox_usage
        SET messages = messages - 1,
            bytes = bytes - length(CAST(old.subject || old.body AS BLOB))
                - coalesce(length(old.raw), 0)
        WHERE account = old.recipient;
END;
