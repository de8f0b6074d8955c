"""
The POP3 front (C{--pop3-port}, RFC 1939 with CAPA, STLS and SASL PLAIN) on
twisted.mail's L{pop3.POP3}, over the same mailboxes as the mail port.

A login (USER/PASS or AUTH PLAIN, through the shared portal, so wrong
passwords count for the shared throttle) takes a snapshot of the mailbox: its
message ids (the UIDLs) and sizes, never the messages themselves (a session
holds at most one message, the one being sent). RETR and TOP read the message
then, so one deleted on the mail port meanwhile answers -ERR. DELE only marks;
deletions happen at QUIT, and a session that ends without QUIT deletes
nothing. Plaintext logins are refused unless the connection is TLS or from
loopback. Pipelined commands are answered in order (POP3's own queue while a
read is pending).
"""

import base64
import binascii

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.auth import Credentials
from mailsvc.core.rfc5322 import render
from mailsvc.fronts.registry import Front
from mailsvc.fronts.standard import Lines, StandardFactory, standard_limits
from mailsvc.options import positive_int

PLAINTEXT_REFUSED = (
    b"[AUTH] plaintext login refused on an unencrypted connection: use STLS first"
)


@implementer(pop3.IMailbox)
class Maildrop:
    """
    A POP3 session's view of a mailbox: the messages there at login.
    C{load()} fills it; L{sync} deletes the marked ones.
    """

    def __init__(self, service, account, domain):
        self.service = service
        self.account = account
        self.domain = domain
        self.ids = []
        self.sizes = []
        self.deleted = set()

    def load(self):
        """Take the snapshot: ids and sizes only; a message is read on RETR or TOP."""
        account, domain = self.account, self.domain

        def loaded(sizes):
            self.ids = [message_id for message_id, _ in sizes]
            self.sizes = [octets for _, octets in sizes]
            return self

        d = self.service.sizes(account, lambda m: len(render(m, account, domain)))
        return d.addCallback(loaded)

    def listMessages(self, index=None):
        if index is None:
            return [0 if i in self.deleted else s for i, s in enumerate(self.sizes)]
        self._check(index)
        return 0 if index in self.deleted else self.sizes[index]

    def getUidl(self, index):
        self._check(index)
        return str(self.ids[index]).encode("ascii")

    def getMessage(self, index):
        """Fire with the message's bytes (CRLF line ends). L{errors.NoSuchMessage}."""
        self._check(index)
        d = self.service.message(self.account, self.ids[index])
        return d.addCallback(render, self.account, self.domain)

    def deleteMessage(self, index):
        self._check(index)
        self.deleted.add(index)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        if not self.deleted:
            return defer.succeed(0)
        return self.service.expunge(self.account, [self.ids[i] for i in sorted(self.deleted)])

    def _check(self, index):
        if not 0 <= index < len(self.ids):
            raise ValueError(index)

    # What is left after deletion marks, for STAT.
    def live(self):
        return [(i, s) for i, s in enumerate(self.sizes) if i not in self.deleted]


class POP3Protocol(Lines, pop3.POP3):
    log = Logger()
    AUTH_CMDS = [b"CAPA", b"USER", b"PASS", b"AUTH", b"QUIT", b"STLS", b"NOOP"]
    _quitting = False

    def connectionMade(self):
        self.timeOut = self.factory.idle_timeout
        if self.admitted(lambda reason: self.sendLine(b"-ERR [SYS/TEMP] " + reason.encode())):
            self.successResponse(b"mailsvc POP3 server ready")
            self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        # No QUIT, no deletions: the marks are forgotten.
        self.mbox = None
        self.setTimeout(None)
        self.released()

    def shutdown(self):
        self.sendLine(b"-ERR [SYS/TEMP] server shutting down")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.failResponse(b"line too long")

    def held(self):
        # While a read or a login is pending, later lines wait unread (in
        # order, and bounded by the socket rather than by a queue).
        return self.blocked is not None

    def _unblock(self, result):
        super()._unblock(result)
        self.resume_input()

    def state_COMMAND(self, line):
        words = line.split(b" ") if line else [b""]
        try:
            return self.processCommand(*words)
        except pop3.POP3Error as e:
            self.failResponse(e.args[0])
        except (TypeError, UnicodeError):
            self.failResponse(b"wrong arguments for " + words[0][:20].upper())

    def processCommand(self, command, *args):
        if self.blocked is not None:
            self.blocked.append((command, args))
            return
        command = command.upper()
        if self._quitting:
            return
        if self.mbox is None and command not in self.AUTH_CMDS:
            raise pop3.POP3Error(b"log in first (USER/PASS or AUTH PLAIN)")
        handler = getattr(self, "do_" + command.decode("ascii", "replace"), None)
        if handler is None or not command.isalpha():
            raise pop3.POP3Error(b"unknown command")
        return handler(*args)

    # Capabilities and TLS

    def listCapabilities(self):
        caps = [b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES", b"AUTH-RESP-CODE",
                b"IMPLEMENTATION mailsvc"]
        if self.mbox is None:
            if self.plaintext_allowed():
                caps += [b"USER", b"SASL PLAIN"]
            if self.factory.tls is not None and not self.secure():
                caps.append(b"STLS")
        return caps

    def do_STLS(self):
        if self.factory.tls is None or self.secure():
            self.failResponse(b"STLS not available")
            return
        if self.mbox is not None:
            self.failResponse(b"already logged in")
            return
        self.successResponse(b"begin TLS negotiation")
        # RFC 2595: what the client sent after STLS in the clear is not read.
        self.discard_input()
        self.transport.startTLS(self.factory.tls)

    # Logins

    def do_APOP(self, *args):
        self.failResponse(b"APOP not supported: use USER/PASS or AUTH PLAIN")

    def do_USER(self, user=None):
        if self.mbox is not None:
            self.failResponse(b"already logged in")
        elif not self.plaintext_allowed():
            self.failResponse(PLAINTEXT_REFUSED)
        elif not user:
            self.failResponse(b"usage: USER <name>")
        else:
            self._userIs = user
            self.successResponse(b"send PASS")

    def do_PASS(self, *words):
        if self.mbox is not None:
            self.failResponse(b"already logged in")
            return
        if not self.plaintext_allowed():
            self.failResponse(PLAINTEXT_REFUSED)
            return
        if self._userIs is None:
            self.failResponse(b"USER required before PASS")
            return
        user, self._userIs = self._userIs, None
        return self._login(user, b" ".join(words))

    def do_AUTH(self, mechanism=None, initial=None):
        if self.mbox is not None:
            self.failResponse(b"already logged in")
        elif mechanism is None:
            self.successResponse(b"SASL mechanisms follow")
            self.sendLine(b"PLAIN")
            self.sendLine(b".")
        elif mechanism.upper() != b"PLAIN":
            self.failResponse(b"unsupported SASL mechanism: use PLAIN")
        elif not self.plaintext_allowed():
            self.failResponse(PLAINTEXT_REFUSED)
        elif initial is None:
            self.sendLine(b"+ ")
            self.state = "AUTH"
        else:
            return self._plain(initial)

    def state_AUTH(self, line):
        self.state = "COMMAND"
        if line == b"*":
            self.failResponse(b"authentication cancelled")
            return
        self._plain(line)

    def _plain(self, response):
        try:
            identity, user, password = base64.b64decode(response, validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            self.failResponse(b"malformed AUTH PLAIN response")
            return
        if identity and identity != user:
            self.failResponse(b"[AUTH] cannot log in as another user")
            return
        return self._login(user, password)

    def _login(self, user, password):
        try:
            name, secret = user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            self.failResponse(b"[AUTH] wrong user name or password")
            return
        credentials = Credentials(name, secret, self.peerHost, "pop3 login")
        d = self.factory.service.portal.login(credentials, None, pop3.IMailbox)
        d.addCallback(lambda login: login[1].load())
        return self._longOperation(d.addCallbacks(self._loggedIn, self._loginFailed))

    def _loggedIn(self, mailbox):
        if self.transport.disconnecting:
            return
        self.mbox = mailbox
        self.successResponse(b"logged in, %d messages" % (len(mailbox.ids),))

    def _loginFailed(self, failure):
        if failure.check(errors.TooManyFailures):
            self.failResponse(b"[AUTH] too many failed attempts: try again later")
        elif failure.check(UnauthorizedLogin):
            self.failResponse(b"[AUTH] wrong user name or password")
        else:
            self._failed(failure)

    def _failed(self, failure):
        if failure.check(errors.StorageUnavailable):
            self.failResponse(b"[SYS/TEMP] storage unavailable, try again later")
        else:
            self.log.failure("POP3 request failed", failure)
            self.failResponse(b"[SYS/TEMP] internal error")

    # The transaction state

    def _index(self, number):
        try:
            index = int(number) - 1
            self.mbox._check(index)
        except ValueError:
            raise pop3.POP3Error(b"no such message")
        if index in self.mbox.deleted:
            raise pop3.POP3Error(b"message %d is deleted" % (index + 1,))
        return index

    def do_STAT(self):
        live = self.mbox.live()
        self.successResponse(b"%d %d" % (len(live), sum(s for _, s in live)))

    def do_LIST(self, number=None):
        if number is not None:
            index = self._index(number)
            self.successResponse(b"%d %d" % (index + 1, self.mbox.sizes[index]))
            return
        live = self.mbox.live()
        self.successResponse(b"%d messages" % (len(live),))
        self.transport.writeSequence([b"%d %d\r\n" % (i + 1, s) for i, s in live] + [b".\r\n"])

    def do_UIDL(self, number=None):
        if number is not None:
            index = self._index(number)
            self.successResponse(b"%d %s" % (index + 1, self.mbox.getUidl(index)))
            return
        live = self.mbox.live()
        self.successResponse()
        self.transport.writeSequence(
            [b"%d %s\r\n" % (i + 1, self.mbox.getUidl(i)) for i, _ in live] + [b".\r\n"]
        )

    def do_RETR(self, number):
        return self._send(self._index(number), None)

    def do_TOP(self, number, lines):
        index = self._index(number)
        if not lines.isdigit():
            raise pop3.POP3Error(b"usage: TOP <message> <lines>")
        return self._send(index, int(lines))

    def _send(self, index, lines):
        def got(data):
            if lines is None:
                self.successResponse(b"%d octets" % (len(data),))
            else:
                head, sep, body = data.partition(b"\r\n\r\n")
                if body.endswith(b"\r\n"):
                    body = body[:-2]
                kept = body.split(b"\r\n")[:lines] if body else []
                data = head + sep + b"".join(line + b"\r\n" for line in kept)
                self.successResponse(b"top of message follows")
            self.transport.write(stuffed(data) + b".\r\n")

        def gone(failure):
            failure.trap(errors.NoSuchMessage, errors.EmptyMailbox)
            self.failResponse(b"message %d was deleted meanwhile" % (index + 1,))

        d = self.mbox.getMessage(index).addCallbacks(got, gone).addErrback(self._failed)
        return self._longOperation(d)

    def do_DELE(self, number):
        index = self._index(number)
        self.mbox.deleteMessage(index)
        self.successResponse(b"message %d deleted" % (index + 1,))

    def do_RSET(self):
        self.mbox.undeleteMessages()
        self.successResponse(b"%d messages" % (len(self.mbox.ids),))

    def do_NOOP(self):
        self.successResponse()

    def do_QUIT(self):
        self._quitting = True
        if self.mbox is None:
            self.successResponse(b"bye")
            self.transport.loseConnection()
            return

        def synced(_):
            self.successResponse(b"bye")

        def failed(failure):
            self._failed(failure)

        d = self.mbox.sync().addCallbacks(synced, failed)
        d.addBoth(lambda _: self.transport.loseConnection())
        return self._longOperation(d)


def stuffed(data):
    """A message as POP3 sends it: CRLF-terminated, lines starting with '.' doubled."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


class POP3Factory(StandardFactory):
    protocol = POP3Protocol

    def __init__(self, service, **kwargs):
        super().__init__(service, **kwargs)
        domain = self.domain
        service.portal.realm.register(
            pop3.IMailbox, lambda account, mind: Maildrop(service, account, domain)
        )


FRONT = Front(
    name="pop3",
    default="tcp:8110",
    description="POP3 port",
    parameters=(
        ("pop3-idle-timeout", None, 600, "Seconds a POP3 connection may stay silent.", positive_int),
    ),
    build=lambda service, config, reactor: POP3Factory(
        service, idle_timeout=config["pop3-idle-timeout"], **standard_limits(config, reactor)
    ),
)
