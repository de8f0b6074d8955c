-- 4: failed logins per throttle key ("name:<folded name>", "peer:<address>"),
-- so that several processes on one database count them together.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure REAL NOT NULL
);
