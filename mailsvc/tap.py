"""
C{twistd mailsvc}: the options, made from the front registry, and
L{makeService}. The service tree itself is L{mailsvc.application.assemble}.
"""

import os

from twisted.python import usage

from mailsvc import listeners
from mailsvc.bus import LOCAL, default_node
from mailsvc.application import ListenFailed, OneByOne, assemble
from mailsvc.bus.redis import parse_url
from mailsvc.fronts import registry
from mailsvc.store import OpenFailed
from mailsvc.options import (
    check_bounds,
    endpoint,
    non_negative_int,
    positive_float,
    positive_int,
)

GENERAL = [
    [
        "db",
        "d",
        "mailsvc.sqlite",
        "The database: an SQLite file (created if missing), or a PostgreSQL URL"
        " (postgresql://user@host/dbname, any libpq URL) that several nodes may share.",
    ],
    ["chat-log", None, "chat.log", "File that records chat joins, messages, leaves."],
    [
        "chat-log-size",
        None,
        10 * 1024 * 1024,
        "Bytes the chat log may reach before it is rotated (to <chat-log>.1).",
        positive_int,
    ],
    ["chat-log-keep", None, 10, "Rotated chat logs kept (<chat-log>.1 ...).", positive_int],
    ["history", None, 20, "Recent chat messages shown to a newcomer (0: none).", non_negative_int],
    [
        "shutdown-grace",
        None,
        5,
        "Seconds the fronts keep working after the shutdown notice.",
        non_negative_int,
    ],
    ["max-line", None, 8192, "Longest request line, in bytes (line fronts).", positive_int],
    ["quota-messages", None, 10000, "Messages one mailbox may hold.", positive_int],
    ["quota-bytes", None, 100 * 1024 * 1024, "Bytes one mailbox may hold.", positive_int],
    ["max-staged", None, 100, "Staged (MESSAGE) texts one session may hold.", positive_int],
    ["max-connections", None, 10000, "Connections to each front at once.", positive_int],
    ["max-per-peer", None, 100, "Connections to each front from one address.", positive_int],
    [
        "backlog",
        None,
        4096,
        "Connections each front's port may queue before they are accepted (for tcp:,"
        " ssl: and unix: descriptions without a backlog= of their own).",
        positive_int,
    ],
    ["session-ttl", None, 86400, "Seconds a session cookie may go unused.", positive_int],
    [
        "max-sends",
        None,
        30,
        "Messages one account may send at once, on every front (then --send-rate).",
        positive_int,
    ],
    ["send-rate", None, 1.0, "Messages a second one account may send on average.", positive_float],
    [
        "max-registrations",
        None,
        60,
        "Accounts one address may create per hour (all of them at once, at most).",
        positive_int,
    ],
    [
        "min-free-disk",
        None,
        100 * 1024 * 1024,
        "Bytes that must stay free on the database's disk: below, new accounts and"
        " deliveries are refused (0: no guard).",
        non_negative_int,
    ],
    [
        "bus",
        None,
        "local",
        "How the chat reaches other nodes: local (one node) or redis://host:port/db"
        " (every node on that Redis is one room).",
    ],
    ["node", None, None, "This node's name in logs and in Redis (default: host name-pid)."],
    [
        "node-lease",
        None,
        15.0,
        "Seconds after which a node that stopped answering (--bus redis) loses its"
        " members' nicknames.",
        positive_float,
    ],
    ["mail-domain", None, "localhost", "The domain of every account's address (SMTP, POP3)."],
    ["tls-cert", None, None, "PEM certificate for STARTTLS (SMTP) and STLS (POP3)."],
    ["tls-key", None, None, "PEM private key of --tls-cert."],
]


def _port_rows(front):
    return [
        front.option,
        front.short,
        front.default,
        "%s: a port number or an endpoint description (tcp:%s:interface=127.0.0.1,"
        " ssl:..., unix:...); %s: not served." % (
            front.description,
            front.default.rsplit(":", 1)[-1],
            registry.OFF,
        ),
        endpoint,
    ]


def _alias(front):
    def set_port(self, description):
        self[front.option] = endpoint(description)

    set_port.__doc__ = "Same as --%s." % (front.option,)
    return set_port


class Options(usage.Options):
    """
    The options of C{twistd mailsvc}. The fronts' own (C{--<name>-port} and
    their limits) come from the registry each time options are made, so a
    front registered or installed later has its options too.
    """

    longdesc = (
        "Serves every front (the mail command port, the group chat, and any"
        " front a plugin adds) over one shared state in a database (--db: SQLite,"
        " or PostgreSQL for several nodes). See docs/operations.md."
    )

    def __new__(cls, *args, **kwargs):
        fronts = registry.fronts()
        rows = GENERAL + [
            row for front in fronts for row in [_port_rows(front), *map(list, front.parameters)]
        ]
        namespace = {"optParameters": rows, "fronts": fronts, "rows": rows}
        for front in fronts:
            setter = _alias(front)  # one function: --help shows the aliases as one
            for alias in front.aliases:
                namespace["opt_" + alias] = setter
        made = type(cls.__name__, (cls,), namespace)
        return super().__new__(made)

    def postOptions(self):
        # Absolute now: twistd may change directory (--rundir) before starting.
        if ":" not in self["db"]:  # a path, not a URL
            self["db"] = os.path.abspath(self["db"])
        self["chat-log"] = os.path.abspath(self["chat-log"])
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for name in ("tls-cert", "tls-key"):
            if self[name]:
                self[name] = os.path.abspath(self[name])
                if not os.access(self[name], os.R_OK):
                    raise usage.UsageError("--%s: cannot read %s" % (name, self[name]))
        self["mail-domain"] = self["mail-domain"].lower()
        if self["node"] is None:
            self["node"] = default_node()
        if self["bus"] != LOCAL:
            try:
                parse_url(self["bus"])
            except ValueError as e:
                raise usage.UsageError("--bus: %s" % (e,))
        check_bounds(self, self.rows)
        for front in self.fronts:
            description = self[front.option]
            why = listeners.refusal(description) if description != registry.OFF else None
            if why is not None:
                raise usage.UsageError("--%s %s: %s" % (front.option, description, why))


class _Process(OneByOne):
    """The top of a twistd process: a port that cannot be had ends it with a
    one-line message instead of a traceback."""

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except ListenFailed as e:
            raise SystemExit("mailsvc: %s" % (e,))


# The files mailsvc creates hold password hashes, mail and chat: its own only.
UMASK = 0o077


def _set_umask(config):
    """
    Make the files of this process its owner's only, unless twistd was given
    C{--umask}: set now, before twistd opens its log file (it does so right
    after makeService; its own umask, for a daemon, comes only later).
    """
    parent = getattr(config, "parent", None)
    chosen = parent.get("umask") if parent is not None else None
    os.umask(UMASK if chosen is None else chosen)


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    _set_umask(config)
    try:
        assembly = assemble(config, reactor, top=_Process())
    except OpenFailed as e:
        raise SystemExit("mailsvc: %s" % (e,))
    # Before anything listens; a process, not a test's reactor, owns its limits.
    listeners.fit_open_files(
        listeners.files_needed(assembly.factories.values(), config["max-connections"])
    )
    assembly.listening.addErrback(lambda failure: None)  # said by SystemExit
    return assembly.top
