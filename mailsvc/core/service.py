"""
The shared service: the one owner of mailsvc's state.

Protocols parse a line, call one method here, and turn its result or its
L{mailsvc.errors.MailsvcError} into a reply. Every method returns a Deferred; a
Deferred of a change fires only once the change is committed to storage.

Every rule lives here, so the fronts share accounts and mailboxes without
repeating a check: a reserved nickname is checked through the same portal as
LOGIN, a chat /msg into a mailbox is delivered by the same code as SEND.
Two caches keep the store off the hot path. Sessions: the SHA-256 of a
cookie to its account, the last use written at most every min(60, ttl/4)
seconds. Message counts: every change to a mailbox publishes
L{MailboxChanged} before it is acknowledged, on success or failure, which
drops the cached count; so a COUNT still sees every change acknowledged
before it, whether its read ran on the database thread or the reactor's.

A store that other nodes share (C{storage.shared}: PostgreSQL) turns both
caches off: the bus's invalidations arrive after the other node's
acknowledgement, so a cache would keep a session that node already ended,
or a count it already changed. Every command then reads its session, and
COUNT its count, from the store (the cost: docs/performance.md).
"""

import hashlib
import secrets

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsvc import errors
from mailsvc.core.auth import Credentials, IAccount, portal
from mailsvc.core.events import MailboxChanged, SessionEnded
from mailsvc.core.names import MAX_PASSWORD, MAX_SUBJECT, NAME, fold
from mailsvc.core.rfc5322 import summarize
from mailsvc.core.room import ChatRoom, check_nick

# Mailboxes whose message count is kept in memory, at most.
COUNT_CACHE = 100_000
# Headers a listing reads from storage at a time.
LIST_PAGE = 200

# Seconds DUMP's summary is reused before the store is asked again.
DUMP_INTERVAL = 1.0


def new_cookie():
    return secrets.token_urlsafe(32)


def _token_hash(cookie):
    return hashlib.sha256(cookie.encode("ascii")).digest()


class SharedService(service.Service):
    """
    Accounts, sessions, staged messages, mailboxes, and the chat room: the one
    world every front sees.

    Fronts parse a request, call one method here, and turn its result or its
    L{mailsvc.errors.MailsvcError} into a reply of their own. Every method
    returns a Deferred; a Deferred of a change fires only once the change is
    committed to storage.

    @param storage: an L{mailsvc.interfaces.IMailStorage}, started and stopped
        by its own parent (it outlives this service).
    @param passwords: a L{mailsvc.core.passwords.Passwords}.
    @param clock: an L{IReactorTime}, for message dates.
    @param room: the L{ChatRoom}; a new one, without a chat log, by default.
        Its bus also carries this service's cache invalidations.
    @param session_ttl: seconds a session may go unused before it expires;
        None: never.
    @param sends: a L{TokenBuckets} keyed by sending account (folded):
        every delivery (SEND, STORE, chat /msg, any front's) takes a token, or
        is refused with L{errors.TooManySends}; None: no limit.
    @param registrations: a L{TokenBuckets} keyed by address: each REGISTER
        from one takes a token, or is refused with
        L{errors.TooManyRegistrations}; None: no limit.
    @param disk: a L{mailsvc.core.disk.DiskGuard} asked before every new
        account and delivery (L{errors.DiskFull}); None: no guard.
    """

    log = Logger()

    def __init__(
        self,
        storage,
        passwords,
        clock,
        room=None,
        session_ttl=None,
        sends=None,
        registrations=None,
        disk=None,
    ):
        self.storage = storage
        self.passwords = passwords
        self.clock = clock
        self.room = room if room is not None else ChatRoom(clock=clock)
        if self.room.clock is None:
            self.room.clock = clock
        self.sends = sends
        self.registrations = registrations
        self.disk = disk
        self.bus = self.room.bus
        self.portal = portal(storage, passwords, clock)
        self.session_ttl = session_ttl
        # Last use is written to storage at most this often per session, so
        # a busy session does not cost a write per command.
        self._touch_interval = min(60.0, session_ttl / 4) if session_ttl else None
        # Whether what is read from the store may be kept: not when other
        # nodes change it.
        self._caching = not getattr(storage, "shared", False)
        # cookie hash -> _Session: sessions are read on every command.
        self._sessions = {}
        # account name folded to lower case -> messages in its mailbox.
        self._counts = {}
        # DUMP's summary: the Deferred of the last one, and when it was asked.
        self._dump = None
        self._dumped_at = 0.0
        # Front name -> its factory, set by assemble(): what /status counts.
        self.factories = {}
        # When startService ran (the clock's seconds): the uptime.
        self.started = None
        self._expiry = task.LoopingCall(self._expire_sessions)
        self._expiry.clock = clock
        self.bus.subscribe(self._invalidate)

    def startService(self):
        super().startService()
        self.started = self.clock.seconds()
        self.passwords.start()
        if self.session_ttl:
            self._expiry.start(min(60.0, self.session_ttl), now=False)

    def stopService(self):
        super().stopService()
        if self._expiry.running:
            self._expiry.stop()
        stop_room = getattr(self.room, "stop", None)
        if stop_room is not None:
            stop_room()
        self.passwords.stop()

    def _invalidate(self, event):
        # Whatever node made the change, what was cached of it is stale.
        if type(event) is MailboxChanged:
            self._counts.pop(fold(event.account), None)
        elif type(event) is SessionEnded:
            self._sessions.pop(event.token_hash, None)

    # Accounts and sessions

    @defer.inlineCallbacks
    def register(self, name, password, peer=None):
        """Create an account and open a session for it; fire with its cookie.
        C{peer}, the address asking, is limited by C{registrations}."""
        _check_name(name)
        _check_password(password)
        if peer is not None and self.registrations is not None:
            if not self.registrations.take(peer):
                self.log.warn("registrations from {peer} refused: over the limit", peer=peer)
                raise errors.TooManyRegistrations(self.registrations.wait(peer))
        yield self._room_on_disk()
        password_hash = yield self.passwords.hash(password)
        name = yield self.storage.add_account(name, password_hash, self.clock.seconds())
        cookie = yield self._open_session(name)
        return cookie

    def authenticate(self, name, password, peer=None, purpose="login"):
        """Fire with the account's name if C{password} is its password (the
        portal: throttled, logged). L{errors.BadCredentials},
        L{errors.TooManyFailures}."""
        d = self.portal.login(Credentials(name, password, peer, purpose), None, IAccount)
        return d.addCallback(lambda login: login[1].name)

    def login(self, name, password, peer=None):
        try:
            _check_password(password)
        except errors.MailsvcError:
            return defer.fail()
        return self.authenticate(name, password, peer).addCallback(self._open_session)

    def _open_session(self, account):
        cookie = new_cookie()
        token_hash = _token_hash(cookie)
        now = self.clock.seconds()
        d = self.storage.add_session(token_hash, account, now)

        def opened(_):
            if self._caching:
                self._sessions[token_hash] = _Session(account, now, now)
            return cookie

        return d.addCallback(opened)

    def logout(self, cookie):
        token_hash = _token_hash(cookie)
        d = self.storage.remove_session(token_hash)

        def removed(existed):
            self.bus.publish(SessionEnded(token_hash))
            if not existed:
                raise errors.NotLoggedIn("unknown or expired session")

        return d.addCallback(removed)

    def _use(self, token_hash, session):
        now = self.clock.seconds()
        # A session read from a shared store has the last use stored, which
        # lags behind the real one by up to one touch interval.
        slack = 0 if self._caching else (self._touch_interval or 0)
        if self.session_ttl and now - session.last_used > self.session_ttl + slack:
            self._sessions.pop(token_hash, None)
            self.storage.remove_session(token_hash).addErrback(self._storage_failed)
            raise errors.NotLoggedIn("session expired: log in again")
        session.last_used = now
        if self._touch_interval and now - session.stored_last_used >= self._touch_interval:
            session.stored_last_used = now
            self.storage.touch_session(token_hash, now).addErrback(self._storage_failed)
        return session.account

    def _expire_sessions(self):
        now = self.clock.seconds()
        for token_hash, session in list(self._sessions.items()):
            if now - session.last_used > self.session_ttl:
                del self._sessions[token_hash]
        # Stored last use lags behind by up to one touch interval.
        before = now - self.session_ttl - self._touch_interval
        return self.storage.expire_sessions(before).addErrback(self._storage_failed)

    def _storage_failed(self, failure):
        failure.trap(errors.StorageUnavailable)

    def _as(self, cookie, work, *args):
        """Run C{work(account, *args)} for the session of C{cookie}."""
        if cookie is None:
            return defer.fail(errors.NotLoggedIn())
        token_hash = _token_hash(cookie)
        session = self._sessions.get(token_hash)
        if session is not None:
            # Nearly every request: no Deferred to wait for the account.
            try:
                return work(self._use(token_hash, session), *args)
            except Exception:
                return defer.fail()

        def found(row):
            if row is None:
                raise errors.NotLoggedIn("unknown or expired session")
            account, last_used = row
            session = _Session(account, last_used, last_used)
            if self._caching:
                self._sessions[token_hash] = session
            return self._use(token_hash, session)

        d = self.storage.session_account(token_hash)
        return d.addCallback(found).addCallback(work, *args)

    # Staging (the Simple Mail Server Protocol)

    def stage(self, cookie, text):
        return self._as(
            cookie,
            lambda _: self._room_on_disk().addCallback(
                lambda _: self.storage.stage(_token_hash(cookie), text, self.clock.seconds())
            ),
        )

    def store(self, cookie, recipient):
        """Deliver the session's most recent staged text; fire with its id."""

        def store(account):
            d = self._may_deliver(account)
            d.addCallback(lambda _: self._store(cookie, account, recipient))
            return d

        return self._as(cookie, store)

    def _store(self, cookie, account, recipient):
        d = self.storage.deliver_staged(
            _token_hash(cookie), account, recipient, self.clock.seconds()
        )
        d.addBoth(self._mailbox_changed, recipient)
        return d.addCallback(self._delivered, recipient, account, "")

    # Mailboxes

    def send(self, cookie, recipient, subject, body):
        """Deliver a message from the session's account; fire with its id."""
        return self._as(
            cookie, lambda account: self.deliver(recipient, account, subject, body)
        )

    def deliver(self, recipient, sender, subject, body):
        """
        Put a message in a mailbox from C{sender}; fire with its id. The
        delivery path of every front: the subject's length
        (L{errors.SubjectTooLong} past L{MAX_SUBJECT} characters), the
        sender's rate (L{errors.TooManySends}) and the disk
        (L{errors.DiskFull}) are checked here.
        """
        if len(subject) > MAX_SUBJECT:
            return defer.fail(errors.SubjectTooLong(MAX_SUBJECT))
        d = self._may_deliver(sender)

        def deliver(_):
            d = self.storage.deliver(recipient, sender, subject, body, self.clock.seconds())
            d.addBoth(self._mailbox_changed, recipient)
            return d.addCallback(self._delivered, recipient, sender, subject)

        return d.addCallback(deliver)

    def _may_deliver(self, sender):
        """Fire with None if C{sender} may deliver one message now."""
        if self.sends is not None:
            key = fold(sender)
            if not self.sends.take(key):
                return defer.fail(errors.TooManySends(self.sends.wait(key)))
        return self._room_on_disk()

    def _room_on_disk(self):
        return self.disk.check() if self.disk is not None else defer.succeed(None)

    def submit(self, sender, recipients, raw):
        """
        Put the RFC 5322 message C{raw} (bytes) from account C{sender} in each
        of C{recipients}' mailboxes, all or none; fire with the new ids once
        committed. L{errors.UnknownUser}, L{errors.MailboxFull}, and the
        checks of every delivery (L{errors.TooManySends}, L{errors.DiskFull}).
        """
        subject, text = summarize(raw)
        # The source keeps the whole subject; what LIST and READ show is bounded.
        subject = subject[:MAX_SUBJECT]

        def deliver(_):
            d = self.storage.deliver_all(
                recipients, sender, subject, text, self.clock.seconds(), raw
            )
            for recipient in recipients:
                d.addBoth(self._mailbox_changed, recipient)
            return d

        d = self._may_deliver(sender).addCallback(deliver)

        def delivered(ids):
            for recipient in recipients:
                self.room.new_mail(recipient, sender, subject)
            return ids

        return d.addCallback(delivered)

    def account_name(self, name):
        """Fire with the account's own spelling of C{name}, or None."""
        if not NAME.match(name):
            return defer.succeed(None)
        d = self.storage.account(name)
        return d.addCallback(lambda row: row[0] if row else None)

    def mailbox(self, account):
        """Fire with every message of C{account}'s mailbox, oldest first, whole."""
        return self.storage.messages(account)

    def sizes(self, account, measure):
        """
        Fire with C{[(id, octets), ...]} of C{account}'s messages, oldest
        first, measuring those without a source with C{measure(message)}
        (see L{mailsvc.interfaces.IMailStorage.sizes}).
        """
        return self.storage.sizes(account, measure)

    def message(self, account, message_id):
        """Fire with one message of C{account}'s. L{errors.NoSuchMessage}."""
        return self.storage.message(account, message_id)

    def expunge(self, account, message_ids):
        """Delete those of C{message_ids} still there; fire with how many."""
        d = self.storage.delete_ids(account, message_ids)
        return d.addBoth(self._mailbox_changed, account)

    def _delivered(self, message_id, recipient, sender, subject):
        self.room.new_mail(recipient, sender, subject)
        return message_id

    def _mailbox_changed(self, result, account):
        # Before the change is acknowledged: from then on, a COUNT reads it.
        # Success or failure alike, whatever was cached is stale or uncertain.
        self.bus.publish(MailboxChanged(account))
        return result

    def count(self, cookie):
        return self._as(cookie, self._count)

    def _count(self, account):
        if not self._caching:
            return self.storage.count(account)
        key = fold(account)
        cached = self._counts.get(key)
        if cached is not None:
            return defer.succeed(cached)

        def counted(messages):
            # Every change to a mailbox drops its entry (MailboxChanged)
            # before it is acknowledged; a read fired before that change's
            # callback saw the database before it, and is dropped by it.
            if len(self._counts) >= COUNT_CACHE:
                self._counts.clear()
            self._counts[key] = messages
            return messages

        return self.storage.count(account).addCallback(counted)

    def list(self, cookie, sender=None):
        """Fire with every header of the mailbox at once (a small mailbox;
        a front streams a L{listing} instead)."""
        return self._as(cookie, self.storage.headers, sender)

    def listing(self, cookie, sender=None, page_size=LIST_PAGE):
        """
        Fire with a L{Listing} of the session's mailbox (only the messages
        from C{sender} if given): its C{count}, then its headers a page at a
        time, so that no mailbox is ever held in memory whole.
        """

        def counted(extent, account):
            count, newest = extent
            return Listing(self.storage, account, sender, count, newest, page_size)

        return self._as(
            cookie,
            lambda account: self.storage.extent(account, sender).addCallback(counted, account),
        )

    def read(self, cookie, message_id=None):
        """Fire with message C{message_id}, or the oldest."""
        return self._as(cookie, self.storage.message, message_id)

    def delete(self, cookie, message_id=None):
        """Delete message C{message_id}, or the oldest; fire with its id."""
        return self._as(
            cookie,
            lambda account: self.storage.delete(account, message_id).addBoth(
                self._mailbox_changed, account
            ),
        )

    def delete_subject(self, cookie, subject):
        """Delete every message with this subject; fire with how many."""

        def deleted(count):
            if not count:
                raise errors.NoSuchMessage("no message with that subject")
            return count

        return self._as(
            cookie,
            lambda account: self.storage.delete_subject(account, subject).addBoth(
                self._mailbox_changed, account
            ),
        ).addCallback(deleted)

    def dump(self):
        """Log a summary of the stored state (never passwords or bodies); fire
        with it.

        Anyone may ask, without a login: the summary is computed (and logged)
        at most once every L{DUMP_INTERVAL} seconds, and every DUMP meanwhile
        is given that one (the one in progress, or the last)."""
        now = self.clock.seconds()
        if self._dump is None or now - self._dumped_at >= DUMP_INTERVAL:
            self._dumped_at = now
            self._dump = self.storage.summary().addCallbacks(self._dump_logged, self._dump_failed)
        d = defer.Deferred()

        def given(summary):
            if summary is None:
                d.errback(errors.StorageUnavailable())
            else:
                d.callback(summary)  # a Failure errbacks d
            return summary if not isinstance(summary, Failure) else None

        self._dump.addBoth(given)
        return d

    def _dump_logged(self, summary):
        self.log.info(
            "DUMP: {accounts} accounts, {sessions} sessions,"
            " {staged} staged messages ({staged_chars} characters),"
            " {messages} messages ({message_chars} bytes) in {mailboxes}"
            " mailboxes, the largest holding {largest_mailbox}",
            **summary,
        )
        return summary

    def _dump_failed(self, failure):
        # Not kept: the next DUMP asks again.
        self._dump = None
        failure.trap(errors.StorageUnavailable)
        return None

    # The chat room

    def join_chat(self, participant, nick, password=None, peer=None, account=None):
        """
        Add C{participant} to the room as C{nick}; fire with the room's recent
        L{History}. The name of a mail account is reserved for its owner: it
        takes the account's password (L{errors.NickReserved},
        L{errors.BadCredentials}), checked through the portal as a LOGIN is,
        unless the participant already proved it is C{account} (IRC's SASL
        went through L{authenticate}).
        """
        d = self._claimable(nick, password, peer, account)
        return d.addCallback(lambda account: self.room.join(participant, account or nick, account))

    def rename_chat(self, participant, nick, password=None, peer=None, account=None):
        """
        Give member C{participant} the nickname C{nick}, on the terms of
        L{join_chat}; fire with None.
        """
        d = self._claimable(nick, password, peer, account, participant)
        return d.addCallback(
            lambda account: self.room.rename(participant, account or nick, account)
        )

    def _claimable(self, nick, password, peer, account, member=None):
        """Fire with the account C{nick} is the name of (its spelling), or
        None if it is nobody's, once C{nick} may be taken."""
        try:
            check_nick(nick)
        except errors.MailsvcError:
            return defer.fail()

        def free(held):
            # A member may change the case of its own nickname.
            if held and not (member is not None and member.nick.lower() == nick.lower()):
                raise errors.NickTaken()
            return self.storage.account(nick) if NAME.match(nick) else None

        def found(row):
            if row is None:
                return None
            if account is not None and account.lower() == row[0].lower():
                return row[0]
            if password is None:
                raise errors.NickReserved()
            return self.authenticate(nick, password, peer, "chat login")

        return self.room.presence.holds(nick).addCallback(free).addCallback(found)

    def leave_chat(self, participant):
        self.room.leave(participant)

    def say(self, participant, text):
        self.room.say(participant, text)

    def chat_private(self, sender, nick, text):
        """
        Send C{text} to C{nick} in the room; fire with None. If C{nick} is not
        here but has a mailbox, and C{sender} holds a reserved nickname, mail
        it there instead and fire with the message id. L{errors.NotHere},
        L{errors.NoSuchNick}.
        """

        def here(held):
            if held:
                self.room.private(sender, nick, text)
                return None
            if sender.account is None:
                raise errors.NotHere(nick)
            d = self.deliver(
                nick, sender.account, "Chat message from %s" % (sender.nick,), text
            )
            return d.addErrback(unknown)

        def unknown(failure):
            failure.trap(errors.UnknownUser)
            raise errors.NoSuchNick(nick)

        return self.room.presence.holds(nick).addCallback(here)


class Listing:
    """
    A mailbox's headers, read a page at a time.

    C{count} is how many messages there were when the listing began; the pages
    hold those messages only, never one delivered since (ids only grow). A
    message deleted before its page is read is left out, so the pages may hold
    fewer than C{count}; never more.
    """

    def __init__(self, storage, account, sender, count, newest, page_size):
        self.count = count
        self._storage = storage
        self._account = account
        self._sender = sender
        self._page_size = page_size
        self._after = None
        # Ids only grow: the messages listed are those up to this one.
        self._newest = newest
        self.done = newest is None

    def next_page(self):
        """Fire with the next page of L{mailsvc.store.Message}s; C{[]} once done."""
        if self.done:
            return defer.succeed([])
        d = self._storage.headers(
            self._account, self._sender, after=self._after, limit=self._page_size
        )
        return d.addCallback(self._read)

    def _read(self, page):
        if len(page) < self._page_size:
            self.done = True
        if page:
            self._after = page[-1].id
        if page and page[-1].id >= self._newest:
            self.done = True
            page = [m for m in page if m.id <= self._newest]
        return page


class _Session:
    __slots__ = ("account", "last_used", "stored_last_used")

    def __init__(self, account, last_used, stored_last_used):
        self.account = account
        self.last_used = last_used
        self.stored_last_used = stored_last_used


def _check_name(name):
    if not NAME.match(name):
        raise errors.InvalidName()


def _check_password(password):
    if not password or len(password) > MAX_PASSWORD:
        raise errors.InvalidPassword(
            "invalid password: 1 to %d characters" % (MAX_PASSWORD,)
        )
