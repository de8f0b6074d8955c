"""
The store contract (L{mailsvc.interfaces.IMailStorage}), written against the
interface alone so that it runs unchanged on every backend, chosen by URL (as
buildbot's BUILDBOT_TEST_DB_URL does): each test runs on a new SQLite file
and on a new PostgreSQL database (conftest's postgres_url), and on
MAILSVC_TEST_DB_URL too if it is set. Each test uses names of its own, so a
shared database needs no wiping between tests.
"""

import os
import secrets

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from conftest import within
from mailsvc import errors
from mailsvc.interfaces import IMailStorage
from mailsvc.store import Quotas, open_store

QUOTAS = Quotas(messages=3, bytes=100, staged=2)


BACKENDS = ["sqlite", "postgresql"] + (["url"] if os.environ.get("MAILSVC_TEST_DB_URL") else [])


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "contract.sqlite")
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return os.environ["MAILSVC_TEST_DB_URL"]


@pytest.fixture
def store(url):
    from twisted.internet import reactor

    store = open_store(url, reactor, QUOTAS)
    store.startService()
    yield store
    pytest_twisted.blockon(within(store.stopService()))


def fresh():
    """A name no other test uses."""
    return "t" + secrets.token_hex(8)


def token():
    return secrets.token_bytes(32)


def test_it_provides_the_interface(store):
    assert verifyObject(IMailStorage, store)


@pytest_twisted.ensureDeferred
async def test_accounts_are_unique_without_case(store):
    name = fresh()
    assert await within(store.add_account(name, "hash", 1.0)) == name
    with pytest.raises(errors.NameTaken):
        await within(store.add_account(name.upper(), "other", 2.0))
    assert await within(store.account(name.upper())) == (name, "hash")
    assert await within(store.account(fresh())) is None


@pytest_twisted.ensureDeferred
async def test_sessions(store):
    name, session, other = fresh(), token(), token()
    await within(store.add_account(name, "hash", 1.0))
    await within(store.add_session(session, name, 10.0))
    await within(store.add_session(other, name, 10.0))
    assert await within(store.session_account(session)) == (name, 10.0)
    await within(store.touch_session(session, 50.0))
    assert await within(store.session_account(session)) == (name, 50.0)
    assert await within(store.expire_sessions(20.0)) >= 1
    assert await within(store.session_account(other)) is None
    assert await within(store.session_account(session)) == (name, 50.0)
    assert await within(store.remove_session(session)) is True
    assert await within(store.remove_session(session)) is False
    assert await within(store.session_account(session)) is None


@pytest_twisted.ensureDeferred
async def test_staging_and_storing(store):
    sender, recipient, session = fresh(), fresh(), token()
    for name in (sender, recipient):
        await within(store.add_account(name, "hash", 1.0))
    await within(store.add_session(session, sender, 1.0))
    with pytest.raises(errors.NothingStaged):
        await within(store.deliver_staged(session, sender, recipient, 2.0))
    await within(store.stage(session, "first", 2.0))
    await within(store.stage(session, "second", 3.0))
    with pytest.raises(errors.TooManyStaged) as refused:
        await within(store.stage(session, "third", 4.0))
    assert refused.value.limit == 2
    with pytest.raises(errors.UnknownUser):
        await within(store.deliver_staged(session, sender, fresh(), 5.0))
    # The most recent first; a refused delivery leaves the text staged.
    first_id = await within(store.deliver_staged(session, sender, recipient.upper(), 6.0))
    second_id = await within(store.deliver_staged(session, sender, recipient, 7.0))
    assert second_id > first_id
    bodies = [
        (await within(store.message(recipient, m.id))).body
        for m in await within(store.headers(recipient))
    ]
    assert bodies == ["second", "first"]
    # Removing a session drops what it staged.
    await within(store.stage(session, "left", 8.0))
    await within(store.remove_session(session))
    await within(store.add_session(session, sender, 9.0))
    with pytest.raises(errors.NothingStaged):
        await within(store.deliver_staged(session, sender, recipient, 9.0))


@pytest_twisted.ensureDeferred
async def test_mailboxes(store):
    alice, bob = fresh(), fresh()
    for name in (alice, bob):
        await within(store.add_account(name, "hash", 1.0))
    with pytest.raises(errors.EmptyMailbox):
        await within(store.message(alice))
    with pytest.raises(errors.UnknownUser):
        await within(store.deliver(fresh(), bob, "s", "b", 1.0))
    one = await within(store.deliver(alice, bob, "hello", "line 1\nline 2", 2.0))
    two = await within(store.deliver(alice.upper(), "Carol", "again", "x", 3.0))
    assert await within(store.count(alice)) == 2
    headers = await within(store.headers(alice))
    assert [(m.id, m.sender, m.date, m.subject, m.body) for m in headers] == [
        (one, bob, 2.0, "hello", ""),
        (two, "Carol", 3.0, "again", ""),
    ]
    assert [m.id for m in await within(store.headers(alice, "carol"))] == [two]
    oldest = await within(store.message(alice))
    assert (oldest.id, oldest.body) == (one, "line 1\nline 2")
    with pytest.raises(errors.NoSuchMessage):
        await within(store.message(bob, one))  # not bob's
    assert await within(store.delete(alice)) == one
    with pytest.raises(errors.NoSuchMessage):
        await within(store.delete(alice, one))
    # Ids are never reused, even after a delete.
    three = await within(store.deliver(alice, bob, "again", "y", 4.0))
    assert three > two
    assert await within(store.delete_subject(alice, "again")) == 2
    assert await within(store.count(alice)) == 0


@pytest_twisted.ensureDeferred
async def test_quotas(store):
    name = fresh()
    await within(store.add_account(name, "hash", 1.0))
    with pytest.raises(errors.MailboxFull):
        await within(store.deliver(name, "x", "big", "b" * 101, 1.0))
    for i in range(3):
        await within(store.deliver(name, "x", "s", "b", 1.0))
    with pytest.raises(errors.MailboxFull):
        await within(store.deliver(name, "x", "s", "b", 1.0))
    await within(store.delete(name))
    await within(store.deliver(name, "x", "s", "b", 1.0))


@pytest_twisted.ensureDeferred
async def test_a_message_keeps_its_source(store):
    alice, bob = fresh(), fresh()
    for name in (alice, bob):
        await within(store.add_account(name, "hash", 1.0))
    raw = b"Subject: hi\r\n\r\nbody \xff bytes\r\n"
    [one] = await within(store.deliver_all([alice], bob, "hi", "body", 2.0, raw))
    plain = await within(store.deliver(alice, bob, "plain", "text", 3.0))
    assert (await within(store.message(alice, one))).raw == raw
    assert (await within(store.message(alice, plain))).raw is None
    whole = await within(store.messages(alice))
    assert [(m.id, m.subject, m.body, m.raw) for m in whole] == [
        (one, "hi", "body", raw),
        (plain, "plain", "text", None),
    ]
    # Deleting by ids skips those already gone, and touches only that mailbox.
    assert await within(store.delete_ids(bob, [one])) == 0
    assert await within(store.delete_ids(alice, [one, one + 10**6])) == 1
    assert [m.id for m in await within(store.messages(alice))] == [plain]


@pytest_twisted.ensureDeferred
async def test_one_message_to_several_mailboxes_is_all_or_none(store):
    alice, bob, full = fresh(), fresh(), fresh()
    for name in (alice, bob, full):
        await within(store.add_account(name, "hash", 1.0))
    for i in range(3):
        await within(store.deliver(full, "x", "s", "b", 1.0))
    raw = b"Subject: s\r\n\r\nb\r\n"
    with pytest.raises(errors.MailboxFull):
        await within(store.deliver_all([alice, full], bob, "s", "b", 2.0, raw))
    with pytest.raises(errors.UnknownUser):
        await within(store.deliver_all([alice, fresh()], bob, "s", "b", 2.0, raw))
    assert await within(store.count(alice)) == 0
    ids = await within(store.deliver_all([alice, bob.upper()], bob, "s", "b", 2.0, raw))
    assert len(set(ids)) == 2
    assert await within(store.count(alice)) == await within(store.count(bob)) == 1
    # The source counts for the byte quota.
    with pytest.raises(errors.MailboxFull):
        await within(store.deliver_all([alice], bob, "", "", 3.0, b"x" * 101))


@pytest_twisted.ensureDeferred
async def test_summary_counts_without_secrets(store):
    name = fresh()
    await within(store.add_account(name, "secret-hash", 1.0))
    await within(store.deliver(name, "x", "subject", "body", 1.0))
    summary = await within(store.summary())
    assert summary["accounts"] >= 1 and summary["messages"] >= 1
    assert set(summary) == {
        "accounts", "sessions", "staged", "staged_chars",
        "messages", "message_chars", "mailboxes", "largest_mailbox",
    }  # fmt: skip
    assert "secret-hash" not in repr(summary)


@pytest_twisted.ensureDeferred
async def test_headers_a_page_at_a_time(store):
    alice, bob = fresh(), fresh()
    for name in (alice, bob):
        await within(store.add_account(name, "hash", 1.0))
    assert await within(store.extent(alice)) == (0, None)
    ids = []
    for i, sender in enumerate(["Carol", bob, "carol"]):  # QUOTAS: 3 messages a mailbox
        ids.append(await within(store.deliver(alice, sender, "s%d" % i, "b", float(i))))
    await within(store.deliver(bob, alice, "not alice's", "b", 1.0))
    assert await within(store.extent(alice)) == (3, ids[-1])
    assert await within(store.extent(alice, "CAROL")) == (2, ids[2])
    assert await within(store.extent(alice, "dave")) == (0, None)
    # The old call still gives all of them.
    assert [m.id for m in await within(store.headers(alice))] == ids
    pages, after = [], None
    while True:
        page = await within(store.headers(alice, after=after, limit=2))
        if not page:
            break
        pages.append([m.id for m in page])
        after = page[-1].id
    assert pages == [ids[0:2], ids[2:3]]
    [second] = await within(store.headers(alice, after=ids[0], limit=1))
    assert (second.id, second.sender, second.date, second.subject, second.body) == (
        ids[1], bob, 1.0, "s1", "",
    )  # fmt: skip
    assert [m.id for m in await within(store.headers(alice, "CAROL", after=ids[0]))] == [ids[2]]
    assert await within(store.headers(alice, after=ids[-1])) == []


@pytest_twisted.ensureDeferred
async def test_sizes_measure_each_message_without_a_source(store):
    alice, bob = fresh(), fresh()
    for name in (alice, bob):
        await within(store.add_account(name, "hash", 1.0))
    raw = b"Subject: hi\r\n\r\nbody \xff\r\n"
    [sourced] = await within(store.deliver_all([alice], bob, "hi", "body", 2.0, raw))
    plain = await within(store.deliver(alice, bob, "plain", "text é", 3.0))
    await within(store.deliver(bob, alice, "not alice's", "b", 1.0))
    measured = []

    def measure(message):
        measured.append(message)
        return 1000 + len(message.body)

    assert await within(store.sizes(alice, measure)) == [(sourced, len(raw)), (plain, 1006)]
    # Only the message without a source is measured, whole but for a source.
    assert [(m.id, m.sender, m.date, m.subject, m.body, m.raw) for m in measured] == [
        (plain, bob, 3.0, "plain", "text é", None)
    ]
    assert await within(store.sizes(fresh(), measure)) == []


@pytest_twisted.ensureDeferred
async def test_login_failures_are_counted_per_key(store):
    name, peer = "name:" + fresh(), "peer:" + fresh()
    assert await within(store.failures([name, peer])) == {}
    assert await within(store.record_failure(name, 100.0, 900.0)) == 1
    assert await within(store.record_failure(name, 110.0, 900.0)) == 2
    assert await within(store.record_failure(peer, 120.0, 900.0)) == 1
    assert await within(store.failures([name, peer, "name:" + fresh()])) == {
        name: (2, 110.0),
        peer: (1, 120.0),
    }
    # A failure long after the last one starts the count afresh.
    assert await within(store.record_failure(name, 2000.0, 900.0)) == 1
    await within(store.forgive(name))
    assert await within(store.failures([name, peer])) == {peer: (1, 120.0)}
