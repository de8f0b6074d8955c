"""
The SMTP submission front (C{--smtp-port}, RFC 6409) on twisted.mail's
L{smtp.ESMTP}, into the same mailboxes as the mail port.

Only an authenticated account may send (AUTH PLAIN or LOGIN, through the
shared portal), only as C{<account>@<mail-domain>} (553 otherwise), and only
to local accounts (550 5.1.1 for an unknown one, 550 5.7.1 for any other
domain: never an open relay). One message to several recipients is stored in
each mailbox in one transaction, and 250 is sent only after it is committed;
a full mailbox or a message over --max-body answers 552.

Fixed from twisted.mail's ESMTP: AUTH is offered only on TLS or from
loopback (not before STARTTLS); after STARTTLS the session starts afresh (RFC
3207: no HELO, sender, recipients or login survive, and nothing sent in the
clear after the command is read); an overlong line in DATA fails that
message (552) instead of turning the rest of the body into commands; every
reply carries an enhanced status code. PIPELINING is not advertised (Twisted
answers pipelined commands out of order when validation is a Deferred:
twisted#8126); commands are still answered in order here, since input waits
while a MAIL, RCPT or DATA is pending.
"""

import re

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from zope.interface import implementer

from mailsvc import errors
from mailsvc.core.auth import Credentials
from mailsvc.fronts.registry import Front
from mailsvc.fronts.standard import Lines, StandardFactory, standard_limits
from mailsvc.options import positive_int

# Enhanced status codes (RFC 3463) for replies that Twisted words without one.
ENHANCED = {
    221: b"2.0.0", 235: b"2.7.0", 250: b"2.0.0", 421: b"4.4.2", 451: b"4.3.0",
    454: b"4.7.0", 500: b"5.5.2", 501: b"5.5.4", 503: b"5.5.1", 504: b"5.5.4",
    530: b"5.7.0", 535: b"5.7.8", 538: b"5.7.11", 550: b"5.0.0", 552: b"5.3.4",
    553: b"5.1.3", 554: b"5.0.0",
}
HAS_ENHANCED = re.compile(rb"[245]\.\d{1,3}\.\d{1,3} ")
SIZE_PARAMETER = re.compile(rb"(?:^|\s)SIZE=(\d{1,20})(?:\s|$)", re.I)


@implementer(smtp.IMessageDelivery)
class Sender:
    """The avatar of an SMTP login: the account that may send."""

    def __init__(self, account):
        self.account = account

    # The protocol does the checks itself (it knows the domain and the store).
    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        raise smtp.SMTPBadRcpt(user)


class _PortalWithPeer:
    """Turns twisted.mail's SASL credentials into mailsvc's, with the peer address."""

    def __init__(self, portal, protocol):
        self.portal = portal
        self.protocol = protocol

    def login(self, credentials, mind, *interfaces):
        try:
            name = credentials.username.decode("utf-8")
            password = credentials.password.decode("utf-8")
        except (AttributeError, UnicodeDecodeError):
            return defer.fail(errors.BadCredentials())
        ours = Credentials(name, password, self.protocol.peerHost, "smtp login")
        return self.portal.login(ours, mind, *interfaces)


class _Submission:
    """One DATA's message: its lines, and the one delivery to every recipient."""

    def __init__(self, protocol, sender, recipients):
        self.protocol = protocol
        self.sender = sender
        self.recipients = recipients
        self.lines = []
        self.size = 0
        self.waiting = []
        self.delivering = None
        self.lost = False

    def add(self, line):
        self.size += len(line) + 2
        if self.size > self.protocol.factory.max_body:
            self.lines = []
            raise smtp.SMTPServerError(
                552, "5.3.4 message too large: at most %d bytes" % self.protocol.factory.max_body
            )
        self.lines.append(line)

    def eom(self):
        if self.delivering is None:
            raw = b"".join(line + b"\r\n" for line in self.lines)
            self.lines = []
            self.delivering = self.protocol.factory.service.submit(
                self.sender, self.recipients, raw
            )
            self.delivering.addBoth(self._fire)
        if self.result is not None:
            return defer.fail(self.result) if isinstance(self.result, defer.Failure) \
                else defer.succeed(self.result)
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    result = None

    def _fire(self, result):
        self.result = result
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if isinstance(result, defer.Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None if isinstance(result, defer.Failure) else result


@implementer(smtp.IMessage)
class _Part:
    """What Twisted calls a message: one per recipient; the first carries the lines."""

    def __init__(self, submission, first):
        self.submission = submission
        self.first = first

    def lineReceived(self, line):
        if self.first:
            self.submission.add(line)

    def eomReceived(self):
        return self.submission.eom()

    def connectionLost(self):
        # A client that vanished mid-DATA: nothing is stored, nothing lost
        # of what was accepted before.
        self.submission.lines = []
        self.submission.lost = True


class SMTPProtocol(Lines, smtp.ESMTP):
    log = Logger()
    _pending = None
    _ehlo = False

    def __init__(self):
        smtp.ESMTP.__init__(self, {b"PLAIN": PLAINCredentials, b"LOGIN": LOGINCredentials})
        self._recipients = []

    def connectionMade(self):
        self.host = self.factory.domain.encode("idna")
        self.timeout = self.factory.idle_timeout
        self.ctx = self.factory.tls
        self.portal = _PortalWithPeer(self.factory.service.portal, self)
        if self.admitted(lambda reason: self.sendCode(421, b"4.7.0 " + reason.encode())):
            smtp.ESMTP.connectionMade(self)

    def connectionLost(self, reason):
        smtp.ESMTP.connectionLost(self, reason)
        self.released()

    def shutdown(self):
        if self.mode == smtp.DATA or self._pending is not None:
            # Let the message in progress finish; then close.
            self._closing = True
            return
        self.sendCode(421, b"4.3.2 server shutting down")
        self.transport.loseConnection()

    _closing = False

    def greeting(self):
        return self.host + b" ESMTP mailsvc submission"

    def sendCode(self, code, message=b""):
        if not isinstance(message, bytes):
            message = message.encode("utf-8")
        if (
            code in ENHANCED
            and not HAS_ENHANCED.match(message + b" ")
            and not (code == 250 and self._ehlo)
        ):
            message = ENHANCED[code] + b" " + message
        smtp.ESMTP.sendCode(self, code, message)

    def lineLengthExceeded(self, line):
        if self.mode == smtp.DATA:
            # The message fails at its end; its remaining lines are still body.
            self.datafailed = smtp.SMTPServerError(552, "5.5.6 line too long in message")
        else:
            self.sendCode(500, b"5.5.6 line too long")

    # Replies stay in order: input waits while a command's answer is pending.

    def held(self):
        return self._pending is not None

    def _hold(self, d):
        self._pending = d

        def done(result):
            self._pending = None
            if self._closing:
                self.shutdown()
            else:
                self.callLater(0, self.resume_input)
            return result

        return d.addBoth(done)

    # Extensions and the session

    def auth_allowed(self):
        return self.plaintext_allowed()

    def extensions(self):
        ext = {}
        if self.canStartTLS and not self.startedTLS and not self.secure():
            ext[b"STARTTLS"] = None
        if self.auth_allowed() and not self.authenticated:
            ext[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        ext[b"SIZE"] = [str(self.factory.max_body).encode()]
        ext[b"ENHANCEDSTATUSCODES"] = None
        ext[b"8BITMIME"] = None
        return ext

    def do_EHLO(self, rest):
        self._ehlo = True
        try:
            smtp.ESMTP.do_EHLO(self, rest)
        finally:
            self._ehlo = False
        self._recipients = []

    def do_HELO(self, rest):
        smtp.ESMTP.do_HELO(self, rest)
        self._recipients = []

    def _greeted(self):
        return self._helo is not None and self._helo[0] is not None

    def ext_STARTTLS(self, rest):
        if self.startedTLS or self.secure():
            self.sendCode(503, b"5.5.1 TLS already active")
        elif self.ctx and self.canStartTLS:
            self.sendCode(220, b"2.0.0 ready to start TLS")
            # RFC 3207: nothing sent in the clear after STARTTLS is read, and
            # the session starts again from nothing.
            self.discard_input()
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            self._helo = (None, self._helo[1])
            self._from = None
            self._to = []
            self._recipients = []
            self.authenticated = False
            self.delivery = self.deliveryFactory = None
        else:
            self.sendCode(454, b"4.7.0 TLS not available")

    def ext_AUTH(self, rest):
        if not self._greeted():
            self.sendCode(503, b"5.5.1 say EHLO first")
        elif not self.auth_allowed():
            self.sendCode(538, b"5.7.11 encryption required: use STARTTLS first")
        elif self._from is not None or self.mode == smtp.DATA:
            self.sendCode(503, b"5.5.1 AUTH not allowed during a mail transaction")
        else:
            smtp.ESMTP.ext_AUTH(self, rest)

    def state_AUTH(self, response):
        try:
            result = smtp.ESMTP.state_AUTH(self, response)
        except Exception:
            # A malformed SASL response (PLAIN without its two NULs, say).
            self.challenger = None
            self.mode = smtp.COMMAND
            self.sendCode(501, b"5.5.2 malformed authentication response")
            return
        return result

    def _ebAuthenticated(self, reason):
        self.challenger = None
        if reason.check(errors.TooManyFailures):
            self.sendCode(454, b"4.7.0 too many failed attempts: try again later")
        elif reason.check(UnauthorizedLogin):
            self.sendCode(535, b"5.7.8 wrong user name or password")
        elif reason.check(errors.StorageUnavailable):
            self.sendCode(454, b"4.3.0 storage unavailable, try again later")
        else:
            self.log.failure("SMTP login failed", reason)
            self.sendCode(454, b"4.3.0 internal error")

    def do_MAIL(self, rest):
        if not self._greeted():
            self.sendCode(503, b"5.5.1 say EHLO first")
            return
        if not self.authenticated:
            self.sendCode(530, b"5.7.0 authentication required")
            return
        m = self.mail_re.match(rest)
        size = SIZE_PARAMETER.search(m.group("opts") or b"") if m else None
        if size and int(size.group(1)) > self.factory.max_body:
            self.sendCode(552, b"5.3.4 message too large: at most %d bytes" % self.factory.max_body)
            return
        self._recipients = []
        smtp.ESMTP.do_MAIL(self, rest)

    def validateFrom(self, helo, origin):
        account = self.delivery.account
        if origin.local.lower() != account.lower().encode() or origin.domain.lower() != self.host:
            raise smtp.SMTPServerError(
                553, "5.7.1 you may send only as %s@%s" % (account, self.factory.domain)
            )
        return origin

    def validateTo(self, user):
        domain = (user.dest.domain or b"").decode("ascii", "replace").lower()
        if domain != self.factory.domain:
            raise smtp.SMTPServerError(550, "5.7.1 relaying denied: only @%s" % (self.factory.domain,))
        try:
            local = user.dest.local.decode("utf-8")
        except UnicodeDecodeError:
            raise smtp.SMTPServerError(550, "5.1.1 no such user")

        def found(name):
            if name is None:
                raise smtp.SMTPServerError(550, "5.1.1 no such user: %s" % (local[:64],))
            if name.lower() in (r.lower() for r in self._recipients):
                raise smtp.SMTPServerError(250, "2.1.5 recipient already given")
            self._recipients.append(name)
            return lambda: self._part(name)

        return self._hold(self.factory.service.account_name(local).addCallback(found))

    def _ebToValidate(self, failure):
        if failure.check(smtp.SMTPServerError) and failure.value.code == 250:
            self.sendCode(250, failure.value.resp)
        elif failure.check(errors.StorageUnavailable):
            self.sendCode(451, b"4.3.0 storage unavailable, try again later")
        else:
            smtp.ESMTP._ebToValidate(self, failure)

    def _part(self, name):
        return _Part(self._submission, name == self._submission.recipients[0])

    _submission = None

    def do_DATA(self, rest):
        if not self._greeted():
            self.sendCode(503, b"5.5.1 say EHLO first")
            return
        if self._from is None:
            self.sendCode(503, b"5.5.1 MAIL FROM first")
            return
        if not self._to:
            self.sendCode(554, b"5.5.1 no valid recipients")
            return
        self._submission = _Submission(self, self.delivery.account, list(self._recipients))
        smtp.ESMTP.do_DATA(self, rest)
        self._recipients = []

    def dataLineReceived(self, line):
        ending = line == b"."
        smtp.ESMTP.dataLineReceived(self, line)
        if ending and self.mode == smtp.COMMAND and self._submission is not None:
            submission, self._submission = self._submission, None
            if submission.delivering is not None:
                self._hold(submission.delivering.addErrback(lambda f: None))

    state_DATA = dataLineReceived

    def _messageHandled(self, results):
        failures = [r for ok, r in results if not ok]
        if not failures:
            ids = results[0][1] if results else []
            self.sendCode(250, b"2.0.0 delivered to %d mailbox%s (%s)" % (
                len(ids), b"" if len(ids) == 1 else b"es",
                b" ".join(b"%d" % i for i in ids)))
            return
        failure = failures[0]
        if failure.check(errors.MailboxFull):
            self.sendCode(552, b"5.2.2 " + failure.value.reason.encode("utf-8"))
        elif failure.check(errors.UnknownUser):
            self.sendCode(550, b"5.1.1 " + failure.value.reason.encode("utf-8"))
        elif failure.check(errors.StorageUnavailable):
            self.sendCode(451, b"4.3.0 storage unavailable, try again later")
        elif failure.check(errors.TooManySends):
            # RFC 3463 X.7.0: a policy of the site; temporary, so clients retry.
            self.sendCode(451, b"4.7.0 " + failure.value.reason.encode("utf-8"))
        elif failure.check(errors.DiskFull):
            self.sendCode(452, b"4.3.1 " + failure.value.reason.encode("utf-8"))
        else:
            self.log.failure("SMTP delivery failed", failure)
            self.sendCode(451, b"4.3.0 internal error")

    def do_RSET(self, rest):
        self._recipients = []
        smtp.ESMTP.do_RSET(self, rest)

    def do_VRFY(self, rest):
        self.sendCode(252, b"2.5.0 cannot VRFY, but will accept the message")

    def do_NOOP(self, rest):
        self.sendCode(250, b"2.0.0 OK")


class SMTPFactory(StandardFactory):
    protocol = SMTPProtocol

    def __init__(self, service, max_body=1024 * 1024, **kwargs):
        super().__init__(service, **kwargs)
        self.max_body = max_body
        service.portal.realm.register(smtp.IMessageDelivery, lambda account, mind: Sender(account))


FRONT = Front(
    name="smtp",
    default="tcp:8587",
    description="SMTP submission port",
    parameters=(
        ("smtp-idle-timeout", None, 300, "Seconds an SMTP connection may stay silent.", positive_int),
    ),
    build=lambda service, config, reactor: SMTPFactory(
        service,
        max_body=config["max-body"],
        idle_timeout=config["smtp-idle-timeout"],
        **standard_limits(config, reactor),
    ),
)
