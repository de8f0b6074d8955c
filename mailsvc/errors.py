"""
The errors the service, the store and the room raise: types, not wire words.

Each carries a short, front-neutral C{reason}; a front maps the types it has
words of its own for (see each front's C{WORDS} table) and falls back on the
reason for the rest. The login refusals are also twisted.cred's
L{UnauthorizedLogin}, so Twisted's own protocols (POP3, SMTP AUTH) treat them
as a failed login.
"""

from twisted.cred.error import UnauthorizedLogin


class MailsvcError(Exception):
    """A request that the service refused, with a reason fit for a reply."""

    reason = "request refused"

    def __init__(self, reason=None):
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class InvalidName(MailsvcError):
    reason = "invalid user name: use 1 to 32 letters or digits"


class InvalidPassword(MailsvcError):
    reason = "invalid password"


class NameTaken(MailsvcError):
    reason = "user name already taken"


class UnknownUser(MailsvcError):
    reason = "no such user"


class BadCredentials(MailsvcError, UnauthorizedLogin):
    reason = "wrong user name or password"


class TooManyFailures(MailsvcError, UnauthorizedLogin):
    reason = "too many failed attempts: try again later"


class NotLoggedIn(MailsvcError):
    reason = "you should log in first"


class NothingStaged(MailsvcError):
    reason = "no staged message"


class TooManyStaged(MailsvcError):
    """@ivar limit: how many texts one session may stage."""

    reason = "too many staged messages"

    def __init__(self, limit):
        self.limit = limit
        super().__init__("too many staged messages: at most %d" % (limit,))


class EmptyMailbox(MailsvcError):
    reason = "mailbox is empty"


class NoSuchMessage(MailsvcError):
    reason = "no such message"


class TooLarge(MailsvcError):
    reason = "message too large"


class SubjectTooLong(MailsvcError):
    """@ivar limit: the longest subject, in characters."""

    reason = "subject too long"

    def __init__(self, limit):
        self.limit = limit
        super().__init__("subject too long: at most %d characters" % (limit,))


class MailboxFull(MailsvcError):
    reason = "mailbox is full"


class Conflict(MailsvcError):
    """A request that contradicts what is stored now (a session removed meanwhile)."""

    reason = "conflicting request, try again"


class InvalidText(MailsvcError):
    reason = "text may not hold the NUL character"


class StorageUnavailable(MailsvcError):
    reason = "storage unavailable"


class InvalidNick(MailsvcError):
    reason = "invalid nickname: use 1 to 32 letters, digits, _ or -"


class NickTaken(MailsvcError):
    reason = "nickname in use"


class ChatUnavailable(MailsvcError):
    """This node is cut off from the other nodes (Redis): it takes no new
    chat members until it is back, rather than split the room."""

    reason = "the chat is unavailable on this server for now: try again shortly"


class NickReserved(MailsvcError):
    reason = "nickname belongs to a mail account"


class NoSuchNick(MailsvcError):
    """@ivar nick: the nickname asked for."""

    reason = "no such nickname"

    def __init__(self, nick):
        self.nick = nick
        super().__init__("no such nickname: %s" % (nick,))


class NotHere(NoSuchNick):
    """C{nick} is not in the room, and the sender may not mail its mailbox."""

    def __init__(self, nick):
        super().__init__(nick)
        self.reason = "%s is not here" % (nick,)


class TooManySends(MailsvcError):
    """The sender has sent its share for now (L{mailsvc.core.service}'s
    per-sender token bucket, C{--max-sends} and C{--send-rate}).

    @ivar wait: seconds until it may send again."""

    def __init__(self, wait):
        self.wait = wait
        super().__init__(
            "too many messages sent: try again in %d second%s"
            % (max(1, round(wait)), "" if max(1, round(wait)) == 1 else "s")
        )


class TooManyRegistrations(MailsvcError):
    """This address has created its share of accounts for now
    (C{--max-registrations}).

    @ivar wait: seconds until it may create one again."""

    def __init__(self, wait):
        self.wait = wait
        minutes = max(1, int(-(-wait // 60)))
        super().__init__(
            "too many new accounts from your address: try again in %d minute%s"
            % (minutes, "" if minutes == 1 else "s")
        )


class DiskFull(MailsvcError):
    """Less than C{--min-free-disk} is free where the database lives: new
    accounts and deliveries are refused (deleting still works)."""

    reason = "the server is short of disk space: try again later (deleting messages still works)"
