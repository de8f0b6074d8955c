"""
Every login, whatever the front, goes through one twisted.cred portal.

L{Credentials} carry the peer address with the name and password; the
L{PasswordChecker} checks them against the stored argon2id hash (off the
reactor thread) and throttles failures per name and per address; the
L{Realm} hands out an avatar for each interface a front asks for. A front
registers the avatar it needs (POP3 an C{IMailbox}, say) with
L{Realm.register}.

Why a portal: twisted.mail's POP3 and SMTP and twisted.words already log in
through one, so a later front reuses them as they are, and every front gets
the same throttles and the same log lines. twisted.cred's credentials carry
no peer, so ours do: the per-address throttle needs it. The hash is checked
in the password pool (L{mailsvc.core.passwords}), never on the reactor, and
against a decoy for an unknown name, so timing does not tell which names exist.
"""

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from mailsvc import errors
from mailsvc.core.names import NAME, fold
from mailsvc.core.throttle import Throttle


@implementer(IUsernamePassword)
class Credentials:
    """
    @ivar peer: the address the attempt comes from, or None.
    @ivar purpose: what the attempt is, for the log ("login", "chat login").
    """

    def __init__(self, username, password, peer=None, purpose="login"):
        self.username = username
        self.password = password
        self.peer = peer
        self.purpose = purpose

    def checkPassword(self, password):
        return password == self.password


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Fires with the account's own spelling of its name when the password
    matches; L{errors.BadCredentials} or L{errors.TooManyFailures} otherwise.

    Attempts are throttled by name and by C{peer}, and failures logged: with
    the name only if it is an account's, since a user may type a password in
    its place.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, storage, passwords, clock):
        self.storage = storage
        self.passwords = passwords
        self.clock = clock
        self.name_throttle = Throttle(clock, free=3)
        self.peer_throttle = Throttle(clock, free=10, lenient_bursts=True)
        # Several nodes on one store count failures together, in the store:
        # an attacker gains nothing by spreading guesses over the nodes.
        self.shared = getattr(storage, "shared", False)
        # Counted for /metrics: wrong passwords, and attempts refused by a lockout.
        self.failures = 0
        self.lockouts = 0

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials):
        name, peer = credentials.username, credentials.peer
        # Only a name an account may have is keyed on (ASCII, at most 32
        # characters): any other fails, as an unknown name does, and counts
        # against the address alone. Folding stays within ASCII, so that
        # U+212A KELVIN SIGN in "\u212aate" never stands for "kate".
        valid = isinstance(name, str) and NAME.match(name) is not None
        name_key = fold(name) if valid else None
        if self.shared:
            yield self._adopt_stored(name_key, peer)
        try:
            if name_key is not None:
                self.name_throttle.begin(name_key)
            if peer is not None:
                try:
                    self.peer_throttle.begin(peer)
                except errors.TooManyFailures:
                    if name_key is not None:
                        self.name_throttle.end(name_key, True, forgive=False)
                    raise
        except errors.TooManyFailures:
            self.lockouts += 1
            raise
        matched = None  # None: the check itself failed (storage), which counts for nothing
        account = None
        try:
            row = (yield self.storage.account(name)) if valid else None
            account, password_hash = row or (None, None)
            # An invalid or unknown name is checked against a decoy hash, so
            # that it costs as long as a wrong password.
            matched = yield self.passwords.verify(password_hash, credentials.password)
        finally:
            counted = matched is not False
            lockout = 0
            if name_key is not None:
                lockout = self.name_throttle.end(name_key, counted, forgive=bool(matched))
            if peer is not None:
                # One good password says little of the other guesses made
                # from an address: its failures stay.
                lockout = max(lockout, self.peer_throttle.end(peer, counted, forgive=False))
        if self.shared:
            yield self._store_outcome(name_key, peer, matched)
        if matched:
            return account
        self.failures += 1
        self.log.warn(
            "failed {what} for {who} from {peer}{locked}",
            what=credentials.purpose,
            who=("account " + account)
            if account
            else ("an unknown name" if valid else "an invalid name"),
            peer=peer or "?",
            locked="; locked out for %g s" % lockout if lockout else "",
        )
        raise errors.BadCredentials()


    def _stored_keys(self, name_key, peer):
        """(throttle, local key, stored key) of an attempt's keys."""
        keys = []
        if name_key is not None:
            keys.append((self.name_throttle, name_key, "name:" + name_key))
        if peer is not None:
            keys.append((self.peer_throttle, peer, "peer:" + peer))
        return keys

    @defer.inlineCallbacks
    def _adopt_stored(self, name_key, peer):
        """Learn the failures every node stored for this attempt's keys."""
        keys = self._stored_keys(name_key, peer)
        stored = yield self.storage.failures([key for _, _, key in keys])
        for throttle, key, stored_key in keys:
            throttle.adopt(key, *stored.get(stored_key, (0, 0.0)))

    @defer.inlineCallbacks
    def _store_outcome(self, name_key, peer, matched):
        """Store a failure for every node to see (committed before the reply),
        or forget the name's failures after its right password."""
        if matched is None:
            return
        now = self.clock.seconds()
        for throttle, key, stored_key in self._stored_keys(name_key, peer):
            if not matched:
                failures = yield self.storage.record_failure(
                    stored_key, now, throttle.forget_after
                )
                throttle.adopt(key, failures, now)
            elif throttle is self.name_throttle:
                yield self.storage.forgive(stored_key)


class IAccount(Interface):
    """The avatar of mailsvc's own fronts: just the account's name."""


@implementer(IAccount)
class Account:
    def __init__(self, name):
        self.name = name


@implementer(IRealm)
class Realm:
    """Hands out, for an account, the avatar of whichever interface a front asks for."""

    def __init__(self):
        self._avatars = {IAccount: lambda name, mind: Account(name)}

    def register(self, interface, make):
        """A front's avatar: C{make(account name, mind)} returns it."""
        self._avatars[interface] = make

    def requestAvatar(self, avatarId, mind, *interfaces):
        for interface in interfaces:
            make = self._avatars.get(interface)
            if make is not None:
                return interface, make(avatarId, mind), lambda: None
        raise NotImplementedError("no avatar for %r" % (interfaces,))


def portal(storage, passwords, clock):
    """The portal every front logs in through."""
    return Portal(Realm(), [PasswordChecker(storage, passwords, clock)])
