"""One twisted.cred portal for every login."""

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from zope.interface import Interface
from zope.interface.verify import verifyObject

from conftest import fired
from mailsvc import errors
from mailsvc.core.auth import Credentials, IAccount, PasswordChecker
from test_room import Participant


class IToyAvatar(Interface):
    pass


def test_the_checker_is_a_twisted_cred_checker(service):
    [checker] = service.portal.checkers.values()
    assert isinstance(checker, PasswordChecker)
    assert verifyObject(ICredentialsChecker, checker)


def test_a_front_logs_in_for_the_avatar_it_needs(service):
    fired(service.register("Alice", "secret"))
    service.portal.realm.register(IToyAvatar, lambda name, mind: ("toy", name, mind))
    interface, avatar, logout = fired(
        service.portal.login(Credentials("alice", "secret", "10.0.0.1"), "mind", IToyAvatar)
    )
    assert interface is IToyAvatar and avatar == ("toy", "Alice", "mind")
    interface, avatar, _ = fired(service.portal.login(Credentials("ALICE", "secret"), None, IAccount))
    assert avatar.name == "Alice"


def test_a_refusal_is_twisted_cred_s_unauthorized_login(service):
    fired(service.register("bob", "secret"))
    failure = fired(service.portal.login(Credentials("bob", "wrong"), None, IAccount))
    assert failure.check(errors.BadCredentials) and failure.check(UnauthorizedLogin)
    failure = fired(service.portal.login(Credentials("nobody", "x"), None, IAccount))
    assert failure.check(errors.BadCredentials)


def test_failures_on_one_front_lock_out_the_others(service, clock):
    fired(service.register("carol", "secret"))
    for _ in range(3):
        assert fired(service.login("carol", "wrong", "10.0.0.2")).check(errors.BadCredentials)
    # The chat's reserved nickname goes through the same checker and throttle.
    refused = fired(service.join_chat(Participant(), "carol", "secret", "10.0.0.3"))
    assert refused.check(errors.TooManyFailures) and refused.check(UnauthorizedLogin)
    clock.advance(2)
    assert fired(service.join_chat(Participant(), "carol", "secret", "10.0.0.3")).events == []
