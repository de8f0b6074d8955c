"""
C{twistd mailsvc}: the options, made from the front registry, and
L{makeService}. The service tree itself is L{mailsvc.application.assemble}.
"""

import os

from twisted.python import usage

from mailsvc.application import ListenFailed, OneByOne, assemble
from mailsvc.fronts import registry
from mailsvc.options import check_bounds, endpoint, non_negative_int, positive_int

GENERAL = [
    ["db", "d", "mailsvc.sqlite", "SQLite database file (created if missing)."],
    ["chat-log", None, "chat.log", "File that records chat joins, messages, leaves."],
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
    ["session-ttl", None, 86400, "Seconds a session cookie may go unused.", positive_int],
    ["mail-domain", None, "localhost", "The domain of every account's address (SMTP, POP3)."],
    ["tls-cert", None, None, "PEM certificate for STARTTLS (SMTP) and STLS (POP3)."],
    ["tls-key", None, None, "PEM private key of --tls-cert."],
]


def _port_rows(front):
    return [
        front.option,
        None,
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
        " front a plugin adds) over one shared state in a SQLite database"
        " (--db). See docs/operations.md."
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
        check_bounds(self, self.rows)


class _Process(OneByOne):
    """The top of a twistd process: a port that cannot be had ends it with a
    one-line message instead of a traceback."""

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except ListenFailed as e:
            raise SystemExit("mailsvc: %s" % (e,))


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    assembly = assemble(config, reactor, top=_Process())
    assembly.listening.addErrback(lambda failure: None)  # said by SystemExit
    return assembly.top
