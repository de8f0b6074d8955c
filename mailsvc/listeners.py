"""
How the fronts listen: endpoint descriptions made into endpoints with a
listen backlog and the TLS policy, and an open-file limit that fits the
connections the fronts admit.

A burst of connections overflows a short accept queue: Twisted's descriptions
default to a backlog of 50, and connects beyond it wait for the client's
retransmissions (seconds) or are never answered. So every C{tcp:}, C{tcp6:},
C{ssl:} and C{unix:} description that does not set its own C{backlog=} gets
C{--backlog} (the kernel caps it at C{net.core.somaxconn}). C{ssl:} listeners
get their context from L{mailsvc.tls}, never from the description.

A process often starts with a soft open-file limit of 1024, far below
C{--max-connections}: connections past it fail at accept() with nothing said
to the operator. L{fit_open_files} raises the soft limit to the hard one and
warns when even that cannot hold what the fronts admit.
"""

import resource

from twisted.internet import endpoints
from twisted.logger import Logger

from mailsvc import tls
from mailsvc.fronts import proxy

log = Logger()

# Description types whose listen() takes a backlog (Twisted's parsers and tcp6:).
_QUEUED = {"tcp", "tcp6", "ssl", "unix"}

# Files a process holds besides its connections: the listening sockets, the
# database and its -wal and -shm files, logs, the reactor's own descriptors
# and wake-up pipes. Measured: 18 with the five fronts and no client;
# the rest is room for what comes later (more stores, a bus, the web front).
OTHER_FILES = 128


def _parse(description):
    # Twisted's own tokenizer, so that escapes (\:) mean what they mean to
    # serverFromString.
    return endpoints._parse(description)


def _quote(argument, positional):
    quoted = endpoints.quoteStringArgument(argument)
    return quoted.replace("=", "\\=") if positional else quoted


def _unparse(arguments, parameters):
    parts = [_quote(a, True) for a in arguments]
    parts += ["%s=%s" % (name, _quote(value, False)) for name, value in parameters.items()]
    return ":".join(parts)


def refusal(description):
    """Why mailsvc will not listen on C{description}, or None."""
    if description.startswith(proxy.PREFIX):
        description = description[len(proxy.PREFIX):]
    try:
        arguments, parameters = _parse(description)
    except Exception as e:  # noqa: BLE001 - Twisted's tokenizer fails in several ways
        return "not an endpoint description (%s)" % (e,)
    if arguments and arguments[0].lower() == "ssl":
        unknown = sorted(set(parameters) - _SSL_PARAMETERS - set(tls.WEAKENING))
        if unknown:
            return "ssl: takes no %s= parameter" % (unknown[0],)
        return tls.refusal(parameters)
    return None


def server_endpoint(reactor, description, backlog):
    """
    The server endpoint for C{description}: Twisted's, with C{backlog} as
    its listen backlog unless it sets one, and an C{ssl:} one with the TLS
    policy. Raises ValueError for a description L{refusal} refuses.
    """
    why = refusal(description)
    if why is not None:
        raise ValueError("%s: %s" % (description, why))
    if description.startswith(proxy.PREFIX):
        inner = server_endpoint(reactor, description[len(proxy.PREFIX):], backlog)
        return proxy.behind_proxy(inner)
    arguments, parameters = _parse(description)
    kind = arguments[0].lower()
    if kind in _QUEUED:
        parameters.setdefault("backlog", str(backlog))
    if kind == "ssl":
        return _ssl(reactor, *arguments[1:], **parameters)
    return endpoints.serverFromString(reactor, _unparse(arguments, parameters))


_SSL_PARAMETERS = {"port", "privateKey", "certKey", "interface", "backlog", "extraCertChain"}


def _ssl(
    reactor,
    port,
    privateKey="server.pem",
    certKey=None,
    interface="",
    backlog=None,
    extraCertChain=None,
):
    # The parameters of Twisted's ssl: description, less those tls.refusal refuses.
    return endpoints.SSL4ServerEndpoint(
        reactor,
        int(port),
        tls.server_options(privateKey, certKey, extraCertChain),
        backlog=int(backlog),
        interface=interface,
    )


def fit_open_files(needed, limits=resource):
    """
    Raise the soft open-file limit to the hard one; warn if C{needed} files
    (the fronts' connections and L{OTHER_FILES}) do not fit even so.
    C{limits}: the C{resource} module, or a stand-in for tests.
    """
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    target = hard if hard != limits.RLIM_INFINITY else max(soft, needed)
    if soft != limits.RLIM_INFINITY and soft < target:
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:
            log.warn(
                "cannot raise the open-file limit from {soft} to {target}: {error}",
                soft=soft,
                target=target,
                error=e,
            )
    if soft != limits.RLIM_INFINITY and soft < needed:
        log.warn(
            "the open-file limit ({limit}) is below what the fronts may use ({needed}:"
            " --max-connections on each front, and {other} more): connections past it"
            " will fail; raise the hard limit (ulimit -Hn, systemd's LimitNOFILE=) or"
            " lower --max-connections",
            limit=soft,
            needed=needed,
            other=OTHER_FILES,
        )
    return soft


def files_needed(factories, default):
    """
    The files the fronts of C{factories} may hold: each one's connection limit
    (its L{mailsvc.fronts.admission.Admission}, else C{default}), plus
    L{OTHER_FILES}.
    """
    total = OTHER_FILES
    for factory in factories:
        admission = getattr(factory, "admission", None)
        limit = getattr(admission, "max_connections", None)
        total += limit if limit is not None else default
    return total
