"""
The versioned PostgreSQL schema: C{schema/NNN-*.sql}, one upgrade step a
file, applied in order of their numbers.

C{mailsvc_schema.version} records how many steps a database has had. Every
node checks it at start under C{pg_advisory_lock}, so of several nodes
starting together on a new database one creates the schema and the others
wait for it, then find it done. Add a new file for a change; never edit one
that has shipped.
"""

from mailsvc.store import sql_steps

# The advisory lock's key: any number no other application on the database
# uses (the digits of "mailsvc" on a phone keypad).
LOCK = 6245782


MIGRATIONS = sql_steps(__package__)


class SchemaTooNew(Exception):
    """The database was written by a newer mailsvc."""


def migrate(connection):
    """
    Bring C{connection}'s database (in autocommit mode) up to the newest
    schema, each step in a transaction of its own, under the advisory lock.
    """
    connection.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS mailsvc_schema (version INTEGER NOT NULL)"
        )
        row = connection.execute("SELECT version FROM mailsvc_schema").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                "database schema version %d is newer than this mailsvc (%d)"
                % (version, len(MIGRATIONS))
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with connection.transaction():
                connection.execute(script)
                connection.execute("DELETE FROM mailsvc_schema")
                connection.execute("INSERT INTO mailsvc_schema (version) VALUES (%s)", (number,))
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
