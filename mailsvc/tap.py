"""
C{twistd mailsvc}: the options and the service tree.

The store is added to the tree first and the listeners last, so on shutdown the
listeners stop first and the store closes only after they have.
"""

from twisted.application import service, strports
from twisted.python import usage

from mailsvc.mailprotocol import MailFactory
from mailsvc.passwords import Passwords
from mailsvc.service import MailService
from mailsvc.storage import SQLiteStorage


def endpoint(description):
    """A bare port number means TCP on every interface, as twistd's own plugins do."""
    return "tcp:" + description if description.isdigit() else description


class Options(usage.Options):
    optParameters = [
        [
            "port",
            "p",
            "8025",
            "Mail command port: a port number or an endpoint description"
            " (tcp:8025:interface=127.0.0.1, ssl:..., unix:...).",
            endpoint,
        ],
        [
            "chat-port",
            "c",
            "8026",
            "Group chat port: a port number or an endpoint description.",
            endpoint,
        ],
        ["db", "d", "mailsvc.sqlite", "SQLite database file (created if missing)."],
        [
            "max-body",
            None,
            1024 * 1024,
            "Largest SEND body accepted, in bytes.",
            int,
        ],
    ]

    longdesc = (
        "Serves the mail command protocol on --port. State lives in one SQLite"
        " database (--db). See docs/operations.md."
    )


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    top = service.MultiService()
    mail = MailService(
        SQLiteStorage.open(config["db"], reactor),
        Passwords.threaded(reactor),
        reactor,
    )
    mail.setServiceParent(top)
    listener = strports.service(config["port"], MailFactory(mail, config["max-body"]))
    listener.setServiceParent(top)
    return top
