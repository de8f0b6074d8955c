"""
The shared service: the one owner of mailsvc's state.

Protocols parse a line, call one method here, and turn its result or its
L{mailsvc.errors.MailsvcError} into a reply. Every method returns a Deferred; a
Deferred of a change fires only once the change is committed to storage.
"""

import hashlib
import re
import secrets

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mailsvc import errors
from mailsvc.room import ChatRoom

NAME = re.compile(r"[A-Za-z0-9]{1,32}\Z")

# 43 URL-safe characters (256 random bits): longer than any user name, so a
# word of this shape at the end of a request is always a cookie, never a name.
COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
MAX_PASSWORD = 1024


def new_cookie():
    return secrets.token_urlsafe(32)


def _token_hash(cookie):
    return hashlib.sha256(cookie.encode("ascii")).digest()


class SharedService(service.Service):
    """
    Accounts, sessions, staged messages, mailboxes, and the chat room: the one
    world both ports see.

    @param storage: an L{mailsvc.storage.IMailStorage}.
    @param passwords: a L{mailsvc.passwords.Passwords}.
    @param clock: an L{IReactorTime}, for message dates.
    @param room: the L{ChatRoom}; a new one, without a chat log, by default.
    """

    log = Logger()

    def __init__(self, storage, passwords, clock, room=None):
        self.storage = storage
        self.passwords = passwords
        self.clock = clock
        self.room = room if room is not None else ChatRoom()
        # cookie hash -> account: sessions are few and read on every command.
        self._sessions = {}

    def startService(self):
        super().startService()
        self.passwords.start()
        self.storage.start()

    def stopService(self):
        super().stopService()
        self.passwords.stop()
        return self.storage.stop()

    # Accounts and sessions

    @defer.inlineCallbacks
    def register(self, name, password):
        _check_name(name)
        _check_password(password)
        password_hash = yield self.passwords.hash(password)
        name = yield self.storage.add_account(name, password_hash, self.clock.seconds())
        cookie = yield self._open_session(name)
        return cookie

    @defer.inlineCallbacks
    def login(self, name, password):
        _check_password(password)
        row = (yield self.storage.account(name)) if NAME.match(name) else None
        name, password_hash = row or (name, None)
        matched = yield self.passwords.verify(password_hash, password)
        if not matched:
            raise errors.BadCredentials()
        cookie = yield self._open_session(name)
        return cookie

    def _open_session(self, account):
        cookie = new_cookie()
        token_hash = _token_hash(cookie)
        d = self.storage.add_session(token_hash, account, self.clock.seconds())

        def opened(_):
            self._sessions[token_hash] = account
            return cookie

        return d.addCallback(opened)

    def logout(self, cookie):
        token_hash = _token_hash(cookie)
        d = self.storage.remove_session(token_hash)

        def removed(existed):
            self._sessions.pop(token_hash, None)
            if not existed:
                raise errors.NotLoggedIn("unknown or expired session")

        return d.addCallback(removed)

    def account(self, cookie):
        """Fire with the account name of a session. L{errors.NotLoggedIn}."""
        if cookie is None:
            return defer.fail(errors.NotLoggedIn())
        token_hash = _token_hash(cookie)
        account = self._sessions.get(token_hash)
        if account is not None:
            return defer.succeed(account)

        def found(account):
            if account is None:
                raise errors.NotLoggedIn("unknown or expired session")
            self._sessions[token_hash] = account
            return account

        return self.storage.session_account(token_hash).addCallback(found)

    def _as(self, cookie, work, *args):
        """Run C{work(account, *args)} for the session of C{cookie}."""
        return self.account(cookie).addCallback(work, *args)

    # Staging (the Simple Mail Server Protocol)

    def stage(self, cookie, text):
        return self._as(
            cookie,
            lambda _: self.storage.stage(_token_hash(cookie), text, self.clock.seconds()),
        )

    def store(self, cookie, recipient):
        """Deliver the session's most recent staged text; fire with its id."""

        def store(account):
            d = self.storage.deliver_staged(
                _token_hash(cookie), account, recipient, self.clock.seconds()
            )
            return d.addCallback(self._delivered, recipient, account, "")

        return self._as(cookie, store)

    # Mailboxes

    def send(self, cookie, recipient, subject, body):
        """Deliver a message from the session's account; fire with its id."""
        return self._as(
            cookie, lambda account: self._deliver(recipient, account, subject, body)
        )

    def _deliver(self, recipient, sender, subject, body):
        d = self.storage.deliver(recipient, sender, subject, body, self.clock.seconds())
        return d.addCallback(self._delivered, recipient, sender, subject)

    def _delivered(self, message_id, recipient, sender, subject):
        self.room.notify_account(
            recipient, "* new mail from %s: %s" % (sender, subject)
        )
        return message_id

    def count(self, cookie):
        return self._as(cookie, self.storage.count)

    def list(self, cookie, sender=None):
        return self._as(cookie, self.storage.headers, sender)

    def read(self, cookie, message_id=None):
        """Fire with message C{message_id}, or the oldest."""
        return self._as(cookie, self.storage.message, message_id)

    def delete(self, cookie, message_id=None):
        """Delete message C{message_id}, or the oldest; fire with its id."""
        return self._as(cookie, self.storage.delete, message_id)

    def delete_subject(self, cookie, subject):
        """Delete every message with this subject; fire with how many."""

        def deleted(count):
            if not count:
                raise errors.NoSuchMessage("no message with that subject")
            return count

        return self._as(cookie, self.storage.delete_subject, subject).addCallback(
            deleted
        )

    def dump(self):
        """Log a summary of the stored state (never passwords or bodies)."""

        def logged(summary):
            self.log.info(
                "DUMP: {accounts} accounts, {sessions} sessions,"
                " {staged} staged messages ({staged_chars} characters),"
                " {messages} messages ({message_chars} characters) in {mailboxes}"
                " mailboxes, the largest holding {largest_mailbox}",
                **summary,
            )
            return summary

        return self.storage.summary().addCallback(logged)


    # The chat room

    def join_chat(self, participant, nick, password=None):
        """
        Add C{participant} to the room as C{nick}; fire with the room's recent
        history. The name of a mail account is reserved for its owner: it takes
        the account's password (L{errors.NickReserved}, L{errors.BadCredentials}).
        """
        try:
            self.room.check_nick(nick)
        except errors.MailsvcError:
            return defer.fail()
        d = self.storage.account(nick) if NAME.match(nick) else defer.succeed(None)

        def found(row):
            if row is None:
                return self.room.join(participant, nick)
            account, password_hash = row
            if password is None:
                raise errors.NickReserved()
            d = self.passwords.verify(password_hash, password)
            return d.addCallback(verified, account)

        def verified(matched, account):
            if not matched:
                raise errors.BadCredentials("wrong password for that nickname")
            return self.room.join(participant, account, account)

        return d.addCallback(found)

    def leave_chat(self, participant):
        self.room.leave(participant)

    def say(self, participant, text):
        self.room.say(participant, text)

    def chat_private(self, sender, nick, text):
        """
        Send C{text} to C{nick} in the room; fire with None. If C{nick} is not
        here but has a mailbox, and C{sender} holds a reserved nickname, mail
        it there instead and fire with the message id.
        """
        if nick in self.room:
            self.room.private(sender, nick, text)
            return defer.succeed(None)
        if sender.account is None:
            return defer.fail(
                errors.NoSuchNick(
                    "%s is not here (mail to a mailbox needs a registered nickname)"
                    % (nick,)
                )
            )
        d = self._deliver(
            nick, sender.account, "Chat message from %s" % (sender.nick,), text
        )

        def unknown(failure):
            failure.trap(errors.UnknownUser)
            raise errors.NoSuchNick("no such nickname or mailbox: %s" % (nick,))

        return d.addErrback(unknown)


def _check_name(name):
    if not NAME.match(name):
        raise errors.InvalidName()


def _check_password(password):
    if not password or len(password) > MAX_PASSWORD:
        raise errors.MailsvcError(
            "invalid password: 1 to %d characters" % (MAX_PASSWORD,)
        )
