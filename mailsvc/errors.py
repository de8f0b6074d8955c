"""
The errors the shared service raises.

Each carries the short human reason a protocol sends after C{KO}; protocols trap
L{MailsvcError} and never need to know which subclass it was, except where the
wire protocol prescribes a special reply (C{You should log in first.}).
"""


class MailsvcError(Exception):
    """A request that the service refused, with a reason fit for the wire."""

    reason = "request refused"

    def __init__(self, reason=None):
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class InvalidName(MailsvcError):
    reason = "invalid user name: use 1 to 32 letters or digits"


class NameTaken(MailsvcError):
    reason = "user name already taken"


class UnknownUser(MailsvcError):
    reason = "no such user"


class BadCredentials(MailsvcError):
    reason = "wrong user name or password"


class NotLoggedIn(MailsvcError):
    reason = "you should log in first"


class NothingStaged(MailsvcError):
    reason = "no staged message: send MESSAGE <text> first"


class EmptyMailbox(MailsvcError):
    reason = "mailbox is empty"


class NoSuchMessage(MailsvcError):
    reason = "no such message"


class TooLarge(MailsvcError):
    reason = "message too large"


class MailboxFull(MailsvcError):
    reason = "mailbox is full"


class TooManyStaged(MailsvcError):
    reason = "too many staged messages"


class TooManyFailures(MailsvcError):
    reason = "too many failed attempts: try again later"


class StorageUnavailable(MailsvcError):
    reason = "storage unavailable"


class InvalidNick(MailsvcError):
    reason = "invalid nickname: use 1 to 32 letters, digits, _ or -"


class NickTaken(MailsvcError):
    reason = "nickname in use"


class NickReserved(MailsvcError):
    reason = "nickname belongs to a mail account: NICK <name> <password>"


class NoSuchNick(MailsvcError):
    reason = "no such nickname"
