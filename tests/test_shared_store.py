"""
Several nodes on one store (L{IMailStorage.shared}): two SharedService
instances, each with a bus of its own (so no invalidation crosses), over one
store that says it is shared. Nothing one node keeps in memory may hide what
the other committed. The same over PostgreSQL and real processes:
tests/test_e2e_nodes.py.
"""

import pytest

from conftest import fired
from mailsvc import errors
from mailsvc.core.passwords import Passwords
from mailsvc.core.service import SharedService
from mailsvc.store.sqlite import SQLiteStorage


@pytest.fixture
def nodes(clock, tmp_path):
    storage = SQLiteStorage.inline(str(tmp_path / "shared.sqlite"))
    storage.shared = True
    services = [SharedService(storage, Passwords.inline(), clock) for _ in range(2)]
    for service in services:
        service.startService()
    yield services
    for service in services:
        service.stopService()


def test_a_logout_on_one_node_ends_the_session_on_the_other_at_once(nodes):
    """Planted: a shared store still caching sessions (service._caching True)."""
    a, b = nodes
    cookie = fired(a.register("alice", "secret"))
    assert fired(b.count(cookie)) == 0  # B has used the session
    fired(a.logout(cookie))
    assert fired(b.count(cookie)).check(errors.NotLoggedIn)


def test_a_count_on_one_node_sees_a_delivery_through_the_other(nodes):
    a, b = nodes
    alice = fired(a.register("alice", "secret"))
    bob = fired(a.register("bob", "secret"))
    assert fired(b.count(alice)) == 0
    fired(a.send(bob, "alice", "hi", "there"))
    assert fired(b.count(alice)) == 1
    fired(a.delete(alice))
    assert fired(b.count(alice)) == 0


def test_failed_logins_on_both_nodes_count_together(nodes, clock):
    """Three wrong passwords, spread over two nodes, lock the name on both.
    Planted: PasswordChecker.shared False (each node counts its own)."""
    a, b = nodes
    fired(a.register("carol", "secret"))
    for node, peer in ((a, "10.0.0.1"), (b, "10.0.0.2"), (a, "10.0.0.3")):
        assert fired(node.login("carol", "wrong", peer)).check(errors.BadCredentials)
    for node in (a, b):
        assert fired(node.login("carol", "secret", "10.0.0.4")).check(errors.TooManyFailures)
    clock.advance(2)
    cookie = fired(b.login("carol", "secret", "10.0.0.4"))
    assert isinstance(cookie, str)
    # The right password forgave the name on every node.
    assert fired(a.login("carol", "wrong", "10.0.0.5")).check(errors.BadCredentials)
    assert isinstance(fired(a.login("carol", "secret", "10.0.0.5")), str)


def test_failures_from_one_address_count_on_every_node(nodes):
    a, b = nodes
    for i in range(10):
        node = (a, b)[i % 2]
        assert fired(node.login("user%d" % i, "wrong", "10.9.9.9")).check(errors.BadCredentials)
    for node in (a, b):
        assert fired(node.login("someone", "x", "10.9.9.9")).check(errors.TooManyFailures)
