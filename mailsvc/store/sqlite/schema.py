"""
The versioned SQLite schema: C{schema/NNN.sql}, one upgrade step a file.

C{PRAGMA user_version} records how many steps a database has had. Add a new
file for a change; never edit one that has shipped.
"""

from mailsvc.store import sql_steps


MIGRATIONS = sql_steps(__package__)


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
