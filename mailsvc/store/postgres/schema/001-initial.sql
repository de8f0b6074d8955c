-- 1: accounts, sessions, per-session staging, mailboxes, what each mailbox
-- holds (for quotas and COUNT), failed logins per throttle key.
-- Names compare without case (lower(), as SQLite's NOCASE: names are ASCII).
CREATE TABLE accounts (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX accounts_by_folded_name ON accounts (lower(name));
-- Only a hash of each cookie is kept: a copy of the database is not a bag of
-- live sessions.
CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts (name),
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_by_last_use ON sessions (last_used);
CREATE TABLE staged (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session BYTEA NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    text TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX staged_by_session ON staged (session, id);
-- A sequence never hands out an id twice: message ids are never reused.
CREATE TABLE messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient TEXT NOT NULL REFERENCES accounts (name),
    sender TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    -- The RFC 5322 source of a message that arrived by SMTP; it counts for
    -- the mailbox's bytes too.
    raw BYTEA
);
CREATE INDEX messages_by_recipient ON messages (recipient, id);
-- One row per account, made with it: a delivery locks its recipient's row
-- (SELECT ... FOR UPDATE) to check the quota, so two nodes cannot both take
-- the last place; kept by triggers.
CREATE TABLE mailbox_usage (
    account TEXT PRIMARY KEY REFERENCES accounts (name),
    messages INTEGER NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE FUNCTION mailbox_usage_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE mailbox_usage
            SET messages = messages + 1,
                bytes = bytes + octet_length(NEW.subject || NEW.body)
                    + coalesce(octet_length(NEW.raw), 0)
            WHERE account = NEW.recipient;
        RETURN NEW;
    END IF;
    UPDATE mailbox_usage
        SET messages = messages - 1,
            bytes = bytes - octet_length(OLD.subject || OLD.body)
                - coalesce(octet_length(OLD.raw), 0)
        WHERE account = OLD.recipient;
    RETURN OLD;
END
$$;
CREATE TRIGGER mailbox_usage_insert AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION mailbox_usage_kept();
CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION mailbox_usage_kept();
-- Failed logins per throttle key ("name:<folded name>", "peer:<address>"),
-- counted together by every node.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure DOUBLE PRECISION NOT NULL
);
